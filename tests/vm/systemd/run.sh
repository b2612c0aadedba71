#!/bin/bash
# The systemd end-to-end check of issue 5, in the real Debian 12 VM of ../shared/vm
# (systemd 252 as PID 1, cgroup v2): socket activation on first contact, Type=notify,
# STATUS=, a real client job under the shipped unit's hardening, journal fields, reload,
# watchdog restart of a frozen daemon, and `systemctl stop` leaving no process.
# Usage: tests/vm/systemd/run.sh [DISPYNODE_BINARY]   (default: target/release/dispynode)
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../../.." && pwd)
H=${VM_HARNESS:-$ROOT/../shared/vm}
if [ ! -x "$H/run-in-vm.sh" ]; then echo "SKIP: VM harness $H not present"; exit 0; fi
BIN=${1:-$ROOT/target/release/dispynode}
W=${VMLAB:-/tmp/vmlab-systemd}
export VMTEST_IMAGE=$W/img
[ -f $W/img/root.img ] || { APTDIR=$W/apt "$H/install-host-deps.sh"; OUT=$W/img "$H/build-image.sh"; }
rm -rf $W/payload && mkdir -p $W/payload
cp "$BIN" $W/payload/dispynode && strip $W/payload/dispynode
cp "$ROOT"/systemd/* "$ROOT/tests/clients/common.py" "$ROOT/tests/clients/many_jobs.py" "$ROOT/tests/clients/program.py" "$HERE/guest-test.sh" $W/payload/
tar -C "${DISPY_VENV:-$ROOT/target/dispy-venv}/lib/python3.11/site-packages" -czf $W/payload/dispyclient.tgz dispy pycos
tar -C $W -czf $W/payload.tgz payload
V="python3 $H/vmctl.py -w $W/run"
$V start
trap '$V stop || $V kill' EXIT
$V put $W/payload.tgz /root/payload.tgz
$V exec -- 'cd /root && tar xzf payload.tgz'
$V exec --timeout 800 -- "EXTRA_DIRECTIVES='${EXTRA_DIRECTIVES:-}' bash /root/payload/guest-test.sh"
