#!/usr/bin/env bash
# Builds the .rpm with rpmbuild (rpm/dispynode.spec) and checks it with rpmlint:
#   packaging/build-rpm.sh            -> $CARGO_TARGET_DIR/packages/dispynode-<version>-<rel>.<arch>.rpm
#                                        (CARGO_TARGET_DIR defaults to target/; DISPYNODE_PKG_OUT overrides)
# Installs rpm (rpmbuild) and rpmlint when missing (apt-get, as root). Fails on any rpmlint error
# or warning (configuration and filters, each with its reason: rpm/rpmlint.toml).
# Set DISPYNODE_PKG_LINT=0 to skip rpmlint (tests/packaging.rs runs it itself).
set -euo pipefail
# shellcheck source=packaging/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# Logs to stderr; stdout carries only the package path (for build-all.sh and tests).
exec 3>&1 1>&2

ensure_debs rpm rpmlint
SPEC=$ROOT/rpm/dispynode.spec
RPM_VERSION=$(rpmspec -q --srpm --qf '%{version}' "$SPEC")
[ "$RPM_VERSION" = "$CRATE_VERSION" ] ||
	die "rpm/dispynode.spec is at $RPM_VERSION but Cargo.toml at $CRATE_VERSION: update Version, Release and %changelog"

lock_out
build_release
# rpmbuild's sources: the binary, what it generates from its CLI definition, and the files of
# the tree, under the names the spec's Source lines use.
WORK=$OUT/rpmbuild
rm -rf "$WORK"
mkdir -p "$WORK/SOURCES"
S=$WORK/SOURCES
# Stripped exactly as dh_strip strips executables for the .deb, so that both packages ship the
# same bytes (the release profile has no debug info: only the symbol table goes). rpmbuild's
# brp-strip only strips debug info and leaves the symbol table, which rpmlint reports as
# unstripped-binary-or-object.
strip --remove-section=.comment --remove-section=.note -o "$S/dispynode" "$BIN"
"$BIN" __generate-assets "$S"
cp "$ROOT"/systemd/dispynode.{service,socket,sysusers,toml} "$ROOT/packaging/dispynode.tmpfiles" \
	"$ROOT/LICENSE" "$ROOT/README.md" "$S/"
# The changelog's last date, as dpkg does for the .deb: same sources, same package.
SOURCE_DATE_EPOCH=$(rpmspec -q --srpm --qf '%{changelogtime}' "$SPEC")
export SOURCE_DATE_EPOCH
# __brp_compress: Debian's rpm ships brp-compress (which gzips the man page) with a #!/bin/sh
# line, but it is a bash script (`read -d`) and fails under dash; run it with bash, as /bin/sh is on
# RPM distributions. packager: set by the build system, not the spec (Fedora's guidelines).
rpmbuild -bb --quiet \
	--define "__brp_compress /bin/bash %{_rpmconfigdir}/brp-compress %{?_prefix}" \
	--define "packager The dispynode authors <dispynode@example.invalid>" \
	--define "_topdir $WORK" \
	--define "_sourcedir $S" \
	--define "_rpmdir $OUT" \
	--define "_build_name_fmt %%{NAME}-%%{VERSION}-%%{RELEASE}.%%{ARCH}.rpm" \
	--define "use_source_date_epoch_as_buildtime 1" \
	--define "clamp_mtime_to_source_date_epoch 1" \
	"$SPEC"
RPM=$OUT/$(rpmspec -q --qf '%{name}-%{version}-%{release}.%{arch}.rpm\n' "$SPEC" | head -n1)
[ -f "$RPM" ] || die "rpmbuild made no $RPM"

if [ "${DISPYNODE_PKG_LINT:-1}" != 0 ]; then
	rpmlint_checked "$RPM" | tee "$OUT/rpmlint.txt"
fi
echo "$RPM" >&3
