#!/usr/bin/env bash
# Builds the .deb with debhelper and checks it with lintian:
#   packaging/build-deb.sh            -> $CARGO_TARGET_DIR/packages/dispynode_<version>-<rev>_<arch>.deb
#                                        (CARGO_TARGET_DIR defaults to target/; DISPYNODE_PKG_OUT overrides)
# Installs debhelper and lintian when missing (apt-get, as root). Fails on any lintian error or
# warning (overrides, each with its reason: debian/dispynode.lintian-overrides).
# Set DISPYNODE_PKG_LINT=0 to skip lintian (tests/packaging.rs runs it itself).
set -euo pipefail
# shellcheck source=packaging/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# Logs to stderr; stdout carries only the package path (for build-all.sh and tests).
exec 3>&1 1>&2

# debhelper brings dpkg-dev (dpkg-buildpackage); flock is util-linux (essential).
ensure_debs debhelper lintian
ensure_pkg_target
DEB_VERSION=$(cd "$ROOT" && dpkg-parsechangelog -S Version)
[ "${DEB_VERSION%-*}" = "$CRATE_VERSION" ] ||
	die "debian/changelog is at $DEB_VERSION but Cargo.toml at $CRATE_VERSION: add a changelog entry (dch -v $CRATE_VERSION-1)"

lock_out
ARCH=$(dpkg --print-architecture)
DEB=$OUT/dispynode_${DEB_VERSION}_${ARCH}.deb
rm -f "$DEB"
# -b: binary package only (the source is this git tree); --post-clean: leave no debhelper build
# tree behind. The .changes/.buildinfo (unsigned) go to $OUT too, not to the parent directory.
(cd "$ROOT" && DISPYNODE_DEB_DIR=$OUT dpkg-buildpackage -b --no-sign --post-clean \
	--buildinfo-option="-u$OUT" --buildinfo-file="$OUT/dispynode_${DEB_VERSION}_${ARCH}.buildinfo" \
	--changes-option="-u$OUT" --changes-file="$OUT/dispynode_${DEB_VERSION}_${ARCH}.changes")
[ -f "$DEB" ] || die "dpkg-buildpackage made no $DEB"

if [ "${DISPYNODE_PKG_LINT:-1}" != 0 ]; then
	# --fail-on error,warning: the exit status reflects errors and warnings (not info/pedantic).
	lintian --fail-on error,warning --display-info "$DEB" | tee "$OUT/lintian.txt"
fi
echo "$DEB" >&3
