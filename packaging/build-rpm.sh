#!/bin/sh
# Build the rmobike RPM (binary and source) into dist/ with rpmbuild.
# Installs its build dependencies with apt when run as root on Debian.
#
#   packaging/build-rpm.sh
#   RMOBIKE_SOURCE=worktree packaging/build-rpm.sh   # uncommitted files too
#
# On Debian, rpmbuild has no RPM database of build dependencies, so they are
# checked with dpkg here and rpmbuild runs with --nodeps; Fedora's systemd
# and Python macros come from packaging/rpm/macros.systemd-fallback.
set -eu
. "$(dirname "$0")/lib.sh"

ensure_apt_packages rpm python3-pip python3-setuptools python3-wheel git

spec=packaging/rpm/rmobike.spec
version=$(upstream_version)
spec_version=$(rpmspec -q --srpm --qf '%{version}\n' "$spec" 2>/dev/null || true)
[ "$spec_version" = "$version" ] ||
    die "$spec has Version: $spec_version but pyproject.toml $version: update Version and %changelog"

top="$CHECKOUT/build/rpm"
rm -rf "$top"
mkdir -p "$top/SOURCES" "$DIST"
export_source "rmobike-$version" "$top/SOURCES/rmobike-$version.tar"
gzip -n "$top/SOURCES/rmobike-$version.tar"

set -- --define "_topdir $top" --nodeps
if [ -z "$(rpm --eval '%{?systemd_post:defined}')" ]; then
    set -- "$@" --load "$CHECKOUT/packaging/rpm/macros.systemd-fallback"
fi
timeout "$BUILD_TIMEOUT" rpmbuild "$@" -ba "$spec"

cp "$top"/RPMS/noarch/rmobike-"$version"-*.noarch.rpm "$top"/SRPMS/rmobike-"$version"-*.src.rpm "$DIST/"
echo "built: $(cd "$DIST" && ls rmobike-"$version"-*.noarch.rpm)"
