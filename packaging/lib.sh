# Shared by packaging/build-*.sh (sourced, not run): paths, versions, tool installation.
# shellcheck shell=bash
# shellcheck disable=SC2034  # BIN, CRATE_VERSION, OUT: used by the scripts that source this file

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# Cargo's target directory, absolute (debian/rules and the rpm build both read the binary there).
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
case $TARGET_DIR in /*) ;; *) TARGET_DIR=$ROOT/$TARGET_DIR ;; esac
export CARGO_TARGET_DIR=$TARGET_DIR
# Where the packages (and the linters' reports) go.
OUT=${DISPYNODE_PKG_OUT:-$TARGET_DIR/packages}
mkdir -p "$OUT"
# The packages ship a static binary (musl): a third of the idle memory of a glibc build, since
# no shared libraries are mapped, and a cheaper exec of the jail helper for every program job
# (bench/README.md). DISPYNODE_PKG_TARGET overrides the target triple.
PKG_TARGET=${DISPYNODE_PKG_TARGET:-$(uname -m)-unknown-linux-musl}
export DISPYNODE_PKG_TARGET=$PKG_TARGET
BIN=$TARGET_DIR/$PKG_TARGET/release/dispynode

# The version in Cargo.toml; the package changelogs must start with it, so that a release is
# never packaged under the previous version's name.
CRATE_VERSION=$(sed -n 's/^version = "\(.*\)"$/\1/p' "$ROOT/Cargo.toml" | head -n1)

die() { echo "packaging: $*" >&2; exit 1; }

# Variables cargo sets for the processes it runs (a test that calls these scripts, a build
# script): left in place they reach our `cargo build`, and ring's build script declares
# rerun-if-env-changed on several (CARGO_PKG_NAME, CARGO_MANIFEST_DIR, ...), so ring would be
# rebuilt and the binary relinked on every switch between `cargo test` and a plain build.
for v in $(compgen -e); do
	case $v in
	CARGO_PKG_* | CARGO_MANIFEST_* | CARGO_CRATE_* | CARGO_BIN_* | CARGO_PRIMARY_PACKAGE | \
		CARGO_TARGET_TMPDIR | CARGO_CFG_* | CARGO_RUSTC_CURRENT_DIR | OUT_DIR)
		unset "$v" ;;
	esac
done

# ensure_debs PKG... installs the Debian packages that are missing, with apt-get (CI is a fresh
# Debian 12 machine where we are root); a no-op, without apt-get update, once they are there.
ensure_debs() {
	local missing=() p
	for p in "$@"; do
		dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed$' ||
			missing+=("$p")
	done
	[ ${#missing[@]} -eq 0 ] && return 0
	if [ "$(id -u)" -ne 0 ]; then
		die "missing Debian packages: ${missing[*]} (as root: apt-get install ${missing[*]})"
	fi
	echo "packaging: installing ${missing[*]}" >&2
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# The Rust standard library for the package target (rustup) and musl-gcc for ring's C code
# (musl-tools). Without rustup the target must already be installed.
ensure_pkg_target() {
	case $PKG_TARGET in *-musl) ensure_debs musl-tools ;; esac
	if command -v rustup >/dev/null 2>&1; then
		rustup target list --installed | grep -qx "$PKG_TARGET" || rustup target add "$PKG_TARGET"
	fi
}

# The release binary for the package target, without the variables a package build environment
# exports that the cc crate tracks (it would rebuild ring and relink; see debian/rules).
build_release() {
	ensure_pkg_target
	(cd "$ROOT" && env -u CFLAGS -u CPPFLAGS -u CXXFLAGS -u LDFLAGS -u ASFLAGS -u SOURCE_DATE_EPOCH \
		cargo build --release --locked --target "$PKG_TARGET")
}

# One package build at a time per output directory (tests and a developer may overlap; the
# debhelper build tree debian/dispynode/ is shared).
lock_out() {
	exec 9>"$OUT/.lock"
	flock 9
}

# rpmlint_checked RPM: rpmlint with the project's configuration (rpm/rpmlint.toml: settings and
# filters, each with its reason); prints its report and fails on any error or warning line.
# (rpmlint's own exit status ignores warnings; --strict would also fail on informational lines.)
rpmlint_checked() {
	local report
	report=$(rpmlint -c "$ROOT/rpm/rpmlint.toml" "$1" 2>&1) || true
	printf '%s\n' "$report"
	if printf '%s\n' "$report" | grep -Eq '^[^ ]+: [EW]: '; then
		die "rpmlint reported errors or warnings for $1"
	fi
	printf '%s\n' "$report" | grep -Eq 'packages? and [0-9]+ specfiles? checked' ||
		die "rpmlint did not run on $1"
}
