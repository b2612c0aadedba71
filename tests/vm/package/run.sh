#!/bin/bash
# End-to-end check of the packages (issue 6).
#   .deb: on a fresh Debian 12 VM (../shared/vm: systemd 252 as PID 1, cgroup v2, no network),
#         tests/vm/package/guest-test.sh installs it with apt, enables the socket, runs a real
#         dispy client's function and program jobs, reads the journal and the jobs' cgroup
#         limits, upgrades, stops, removes and purges (see that script).
#   .rpm: installed with rpm --root into a copy of the VM's root file system (a real Debian 12
#         tree with systemd's tools, so the scriptlets run for real in the chroot), verified
#         and erased. There is no RPM distribution to boot here (only Debian's registry).
# Usage: tests/vm/package/run.sh [DEB RPM]    (default: build them with packaging/build-all.sh)
# Env:   PARTS ("deb rpm": which parts to run), VMLAB (work dir, default /tmp/vmlab-package; the VM image is built there once and
#        reused), VM_HARNESS (default ../shared/vm), DISPY_VENV (default target/dispy-venv).
# Prints PASS/FAIL lines and "N passed, N failed"; exits non-zero on any failure.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../../.." && pwd)
H=${VM_HARNESS:-$ROOT/../shared/vm}
if [ ! -x "$H/run-in-vm.sh" ]; then echo "SKIP: VM harness $H not present"; exit 0; fi
W=${VMLAB:-/tmp/vmlab-package}
VENV=${DISPY_VENV:-$ROOT/target/dispy-venv}
mkdir -p "$W"

if [ $# -ge 2 ]; then
	DEB=$1 RPM=$2
else
	{ read -r DEB; read -r RPM; } < <("$ROOT/packaging/build-all.sh")
fi
echo "packages: $DEB $RPM"

# The image: a minimal Debian 12 with systemd and python3, which is all the .deb needs (no
# --extra: apt must resolve its dependencies offline from what is installed).
if [ ! -f "$W/img/root.img" ]; then
	APTDIR=$W/apt "$H/install-host-deps.sh"
	OUT=$W/img "$H/build-image.sh"
fi
export VMTEST_IMAGE=$W/img

# The payload: the .deb, the same package as version -2 (to upgrade to), the stock client.
rm -rf "$W/payload" && mkdir -p "$W/payload"
cp "$DEB" "$W/payload/"
V2=$W/v2
rm -rf "$V2" && dpkg-deb -R "$DEB" "$V2"
sed -i 's/^\(Version: .*\)-1$/\1-2/' "$V2/DEBIAN/control"
dpkg-deb -b "$V2" "$W/payload/$(basename "${DEB/-1_/-2_}")" >/dev/null
cp "$HERE/guest-test.sh" "$HERE/client.py" "$ROOT/tests/clients/common.py" "$W/payload/"
tar -C "$VENV/lib/python3.11/site-packages" -czf "$W/payload/dispyclient.tgz" dispy pycos
tar -C "$W" -czf "$W/payload.tgz" payload

status=0
: >"$W/guest.out"
if [[ " ${PARTS:-deb rpm} " == *" deb "* ]]; then
	VM="python3 $H/vmctl.py -w $W/run"
	$VM start
	trap '$VM stop || $VM kill' EXIT
	$VM put "$W/payload.tgz" /root/payload.tgz
	$VM exec -- 'cd /root && tar xzf payload.tgz'
	$VM exec --timeout 1500 -- 'bash /root/payload/guest-test.sh' | tee "$W/guest.out" || status=1
	$VM stop || $VM kill
	trap - EXIT
fi

pass=0 fail=0
if [[ " ${PARTS:-deb rpm} " == *" rpm "* ]]; then
echo "=== .rpm in a scratch root ($W/rpmroot, a copy of the VM's root file system)"
ok() { echo "PASS $*"; pass=$((pass + 1)); }
bad() { echo "FAIL $*"; fail=$((fail + 1)); }
check() { local what=$1; shift; if "$@"; then ok "$what"; else bad "$what"; fi; }
R=$W/rpmroot
# --one-file-system: never descend into a /proc left mounted by an interrupted run.
umount "$R/proc" 2>/dev/null || true
rm -rf --one-file-system "$R" && cp -a "$W/img/rootfs" "$R"
# systemd-tmpfiles needs /proc, which a real installation (or mock, anaconda) has.
mount -t proc proc "$R/proc"
trap 'umount "$R/proc" 2>/dev/null || true' EXIT
# RPM distributions ship a preset that leaves every unit they do not name disabled (Fedora's
# 99-default-disable.preset); Debian has none, so `systemctl preset` (in %post) would enable
# everything in this Debian tree. Give the root the RPM distributions' policy.
mkdir -p "$R/usr/lib/systemd/system-preset"
echo 'disable *' >"$R/usr/lib/systemd/system-preset/99-default-disable.preset"
WANTS=$R/etc/systemd/system/sockets.target.wants/dispynode.socket
rpm --root "$R" --initdb
# --nodeps: the root's packages are dpkg's, unknown to its rpm database (python3, libc, systemd).
check "rpm -ivh into the scratch root (scriptlets run in the chroot)" \
	rpm --root "$R" -ivh --nodeps "$RPM"
check "rpm -V: every file as packaged" rpm --root "$R" -V --nodeps dispynode
check "user dispynode created (%post: systemd-sysusers)" grep -q '^dispynode:' "$R/etc/passwd"
grep '^dispynode:' "$R/etc/passwd" || true
UID_R=$(awk -F: '$1 == "dispynode" {print $3}' "$R/etc/passwd")
check "state directory 0700 dispynode (%post: systemd-tmpfiles)" \
	test "$(stat -c '%a %u' "$R/var/lib/dispynode" 2>&1)" = "700 $UID_R"
check "configuration is %config(noreplace)" bash -c \
	"rpm --root '$R' -qc dispynode | grep -qx /etc/dispynode/dispynode.toml"
check "socket not enabled by the installation (%post: systemctl preset)" test ! -L "$WANTS"
# What an administrator does; then erasing must disable it again (%preun).
chroot "$R" systemctl enable dispynode.socket
check "socket enabled by the administrator" test -L "$WANTS"
echo "# edited" >>"$R/etc/dispynode/dispynode.toml"
check "rpm -e (scriptlets run in the chroot)" rpm --root "$R" -e dispynode
check "erase disabled the socket (%preun: systemctl disable --now)" test ! -L "$WANTS"
check "no file of the package left but the edited configuration (saved as .rpmsave)" bash -c \
	"[ ! -e '$R/usr/bin/dispynode' ] && [ ! -e '$R/usr/lib/systemd/system/dispynode.socket' ] && [ -f '$R/etc/dispynode/dispynode.toml.rpmsave' ]"
umount "$R/proc"
trap - EXIT
echo "rpm: $pass passed, $fail failed"
rm -rf --one-file-system "$R"
[ "$fail" = 0 ] || status=1
fi
# One closing line for both parts (the guest's own counts are above).
pass=$((pass + $(grep -c '^PASS ' "$W/guest.out" || true)))
fail=$((fail + $(grep -c '^FAIL ' "$W/guest.out" || true)))
[ "$status" = 0 ] || [ "$fail" != 0 ] || fail=1  # the VM part failed without a FAIL line
echo "$pass passed, $fail failed"
exit $status
