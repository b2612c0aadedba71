#!/bin/bash
# Real per-job cgroup limits, end to end, in the systemd VM of ../shared/vm (issue 4).
#
# This host has no usable cgroup v2; the VM (Debian 12, systemd 252 as PID 1, cgroup v2,
# QEMU TCG) does. The script
#   1. builds the VM image once (cached in $VMTEST_IMAGE, default /tmp/vmlab/img-confine:
#      ../shared/vm/build-image.sh --extra "python3"), rebuilt when the harness changes;
#   2. stages our binary ($DISPYNODE_BIN, else `cargo build --release`; stripped, gzipped),
#      the stock client (dispy + pycos are pure Python: copied from the dispy venv,
#      $DISPY_VENV or target/dispy-venv, and used with PYTHONPATH: the VM has no network)
#      and the client scripts;
#   3. boots the VM with ../shared/vm/run-in-vm.sh --put ..., and runs tests/vm/guest-limits.sh
#      inside: the node under `systemd-run --unit=dispynode-test -p Delegate=yes -p Type=exec`
#      (once as nobody through User=, once as root dropping privileges itself) with
#      --job_pids_max 64 --job_memory_max 64m, driven by the real client: a fork bomb stopped
#      by pids.max and a memory hog killed by memory.max (both Terminated with the reason in
#      job.exception), a cancelled program whose setsid'ed sleep only the cgroup can reach, the
#      job's identity, and the node still serving afterwards.
# Prints the guest's CHECK lines and a final "SANDBOX-LIMITS: PASS" or "SANDBOX-LIMITS: FAIL";
# exit status 0 on PASS, 1 on FAIL, 77 when the VM harness or QEMU is missing (SKIP).
#
# Usage: tests/vm/sandbox-limits.sh        (root; run ../shared/vm/install-host-deps.sh first)
# Env:   VM_HARNESS (default ../shared/vm), VMTEST_IMAGE, DISPYNODE_BIN, DISPY_VENV,
#        MODES="user root" (the guest's modes), KEEP=1 (keep the work dir)
set -uo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
HARNESS=${VM_HARNESS:-$ROOT/../shared/vm}
export VMTEST_IMAGE=${VMTEST_IMAGE:-/tmp/vmlab/img-confine}
VENV=${DISPY_VENV:-$ROOT/target/dispy-venv}
WORK=/tmp/vmlab/sandbox-limits-$$
STAGE=$WORK/stage
IMAGE_PKGS="python3"
T0=$SECONDS

say() { echo "sandbox-limits: $*"; }
verdict() { # PASS|FAIL|SKIP reason
    say "total $((SECONDS - T0)) s"
    echo "SANDBOX-LIMITS: $1${2:+ ($2)}"
    [ "${KEEP:-0}" = 1 ] || rm -rf "$WORK"
    case "$1" in PASS) exit 0 ;; SKIP) exit 77 ;; *) exit 1 ;; esac
}

[ -x "$HARNESS/run-in-vm.sh" ] || verdict SKIP "no VM harness at $HARNESS"
command -v qemu-system-x86_64 >/dev/null || verdict SKIP "qemu-system-x86_64 missing: run $HARNESS/install-host-deps.sh"
[ "$(id -u)" = 0 ] || verdict SKIP "the VM harness needs root"
mkdir -p "$STAGE" "$(dirname "$VMTEST_IMAGE")"

# 1. The image, built once per harness version (flock: parallel runs build it once).
stamp="pkgs=$IMAGE_PKGS $(cat "$HARNESS/build-image.sh" "$HARNESS"/guest/* 2>/dev/null | sha256sum | cut -c1-16)"
(
    flock 9
    if [ -f "$VMTEST_IMAGE/root.img" ] && [ "$(cat "$VMTEST_IMAGE/.sandbox-limits-stamp" 2>/dev/null)" = "$stamp" ]; then
        say "image: cached $VMTEST_IMAGE"
    else
        command -v mmdebstrap >/dev/null || { say "mmdebstrap missing: run $HARNESS/install-host-deps.sh"; exit 1; }
        say "image: building $VMTEST_IMAGE (a few minutes)"
        OUT=$VMTEST_IMAGE "$HARNESS/build-image.sh" --extra "$IMAGE_PKGS" >"$WORK/build-image.log" 2>&1 ||
            { tail -30 "$WORK/build-image.log"; exit 1; }
        tail -3 "$WORK/build-image.log"
        echo "$stamp" >"$VMTEST_IMAGE/.sandbox-limits-stamp"
    fi
) 9>"$VMTEST_IMAGE.lock" || verdict FAIL "cannot build the VM image"

# 2. What goes into the VM.
BIN=${DISPYNODE_BIN:-}
if [ -z "$BIN" ]; then
    say "building the release binary"
    (cd "$ROOT" && cargo build --release --quiet --bin dispynode) || verdict FAIL "cargo build"
    BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/dispynode
fi
[ -x "$BIN" ] || verdict FAIL "no binary $BIN"
if command -v strip >/dev/null; then strip -o "$STAGE/dispynode" "$BIN"; else cp "$BIN" "$STAGE/dispynode"; fi
gzip -1 "$STAGE/dispynode" || verdict FAIL "gzip"
say "binary: $BIN ($(du -h "$STAGE/dispynode.gz" | cut -f1) gzipped)"
PY=$VENV/bin/python
SITE=$("$PY" -c 'import dispy, os; print(os.path.dirname(os.path.dirname(dispy.__file__)))') ||
    verdict FAIL "no dispy in $VENV (set DISPY_VENV)"
tar czf "$STAGE/client.tgz" -C "$SITE" dispy pycos || verdict FAIL "cannot pack dispy and pycos from $SITE"
say "client: dispy $("$PY" -c 'import dispy; print(dispy.__version__)') from $SITE"
PUTS=(--put "$STAGE/dispynode.gz:/root/t/dispynode.gz" --put "$STAGE/client.tgz:/root/t/client.tgz"
      --put "$ROOT/tests/vm/guest-limits.sh:/root/t/guest-limits.sh")
for f in common probe_limits probe_cancel_program probe_identity; do
    PUTS+=(--put "$ROOT/tests/clients/$f.py:/root/t/$f.py")
done

# 3. Boot, run, power off (run-in-vm.sh bounds the command to vmctl's 600 s).
say "booting the VM ($VMTEST_IMAGE)"
OUTPUT=$WORK/guest.txt
timeout -s TERM 900 "$HARNESS/run-in-vm.sh" -w "$WORK/vm" "${PUTS[@]}" -- \
    "MODES='${MODES:-user root}' bash /root/t/guest-limits.sh" 2>&1 | tee "$OUTPUT"
rc=${PIPESTATUS[0]}
if [ "$rc" = 0 ] && grep -qx 'GUEST: PASS' "$OUTPUT"; then
    verdict PASS
fi
if [ -f "$WORK/vm/console.log" ] && ! grep -q '^GUEST: ' "$OUTPUT"; then
    say "VM console (last 40 lines):"
    tail -40 "$WORK/vm/console.log"
fi
verdict FAIL "run-in-vm rc $rc; $(grep '^GUEST: ' "$OUTPUT" || echo 'the guest script did not finish')"
