#!/bin/sh
# Build the rmobike Debian source and binary packages into dist/, then run
# lintian on them. Installs its build dependencies with apt when run as root.
#
#   packaging/build-deb.sh
#   RMOBIKE_SOURCE=worktree packaging/build-deb.sh   # uncommitted files too
#
# The source tree comes from git (see export_source in lib.sh); the debian/
# directory is packaging/debian. Lintian's report goes to dist/lintian.txt,
# and any error or warning fails the build.
set -eu
. "$(dirname "$0")/lib.sh"

ensure_apt_packages debhelper dh-python pybuild-plugin-pyproject python3-all \
    python3-setuptools python3-build python3-installer dpkg-dev lintian git xz-utils

version=$(upstream_version)
debian_version=$(dpkg-parsechangelog -l packaging/debian/changelog -S Version)
[ "${debian_version%-*}" = "$version" ] ||
    die "packaging/debian/changelog is at $debian_version but pyproject.toml at $version: add a changelog entry (dch -c packaging/debian/changelog -v $version-1)"

work="$CHECKOUT/build/deb"
rm -rf "$work"
mkdir -p "$work" "$DIST"

# The upstream tarball, then the tree with packaging/debian as debian/.
export_source "rmobike-$version" "$work/rmobike_$version.orig.tar"
xz -T1 "$work/rmobike_$version.orig.tar"
tar -C "$work" -xf "$work/rmobike_$version.orig.tar.xz"
cp -a packaging/debian "$work/rmobike-$version/debian"

(cd "$work/rmobike-$version" && timeout "$BUILD_TIMEOUT" dpkg-buildpackage -us -uc)

changes="$work/rmobike_${debian_version}_amd64.changes"
[ -f "$changes" ] || changes=$(ls "$work"/rmobike_"${debian_version}"_*.changes)
for file in $(awk '/^Files:/ {in_files = 1; next} /^[^ ]/ {in_files = 0} in_files {print $5}' "$changes"); do
    cp "$work/$file" "$DIST/"
done
cp "$changes" "$DIST/"

# --fail-on: any error or warning stops `make deb`; overrides with their
# reasons are in packaging/debian/*lintian-overrides.
status=0
timeout 900 lintian --info --display-experimental --fail-on error,warning \
    "$changes" > "$DIST/lintian.txt" 2>&1 || status=$?
cat "$DIST/lintian.txt"
[ "$status" -eq 0 ] || die "lintian reported errors or warnings (exit status $status), see dist/lintian.txt"

echo "built: $(cd "$DIST" && ls rmobike_"${debian_version}"_*.deb)"
