# Shell functions shared by build-deb.sh and build-rpm.sh. Source it after
# `set -eu`; it changes to the checkout's top directory.

CHECKOUT=$(cd "$(dirname "$0")/.." && pwd)
cd "$CHECKOUT"

# Debian's own python3 and tools, not a venv or pyenv shim that happens to
# come first on PATH: the packages are built for /usr/bin/python3.
PATH=/usr/sbin:/usr/bin:/sbin:/bin
export PATH

DIST="$CHECKOUT/dist"
APT_TIMEOUT=900        # seconds for apt-get update + install
BUILD_TIMEOUT=1800     # seconds for one package build

die() {
    echo "$(basename "$0"): $*" >&2
    exit 1
}

# Install the Debian packages given as arguments that are not installed yet.
ensure_apt_packages() {
    missing=""
    for package in "$@"; do
        if ! dpkg-query -W -f='${Status}\n' "$package" 2>/dev/null | grep -q '^install ok installed'; then
            missing="$missing $package"
        fi
    done
    [ -z "$missing" ] && return 0

    [ "$(id -u)" -eq 0 ] || die "missing build dependencies:$missing (run as root, or apt-get install them)"
    echo "apt: installing$missing"
    export DEBIAN_FRONTEND=noninteractive
    timeout "$APT_TIMEOUT" apt-get update -q
    # shellcheck disable=SC2086 # the list is split on purpose
    timeout "$APT_TIMEOUT" apt-get install -y -q --no-install-recommends $missing
}

# Print the version in pyproject.toml.
upstream_version() {
    python3 -c 'import sys, tomllib; print(tomllib.load(open(sys.argv[1], "rb"))["project"]["version"])' \
        pyproject.toml
}

# Write the source tree as a tar file to $2, every path under the prefix $1/.
# RMOBIKE_SOURCE=head (the default) takes the last commit, so that files
# other people are still writing stay out; RMOBIKE_SOURCE=worktree takes the
# working tree: tracked files and untracked ones that .gitignore lets through.
export_source() {
    prefix=$1
    output=$2
    case "${RMOBIKE_SOURCE:-head}" in
    head)
        [ -d .git ] || die "not a git checkout: set RMOBIKE_SOURCE=worktree to build from the files"
        git archive --format=tar --prefix="$prefix/" -o "$output" HEAD
        ;;
    worktree)
        if [ -d .git ]; then
            git ls-files -z --cached --others --exclude-standard \
                | xargs -0 sh -c 'for f; do [ -e "$f" ] && printf "%s\0" "$f"; done' sh \
                | tar --null -T - --transform "s,^,$prefix/," -cf "$output"
        else
            tar --exclude=./.venv --exclude=./build --exclude=./dist --exclude=./lab-out \
                --transform "s,^\./,$prefix/," -cf "$output" .
        fi
        ;;
    *)
        die "RMOBIKE_SOURCE must be head or worktree, not '${RMOBIKE_SOURCE}'"
        ;;
    esac
}
