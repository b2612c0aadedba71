#!/bin/bash
# Runs inside a fresh Debian 12 VM (systemd 252 as PID 1, cgroup v2; no network), put there by
# tests/vm/package/run.sh with /root/payload: the .deb (and an -2 copy of it, to upgrade to),
# the stock dispy client (dispy + pycos) and its scripts. Follows the README from
# `apt install` on: the package installs without starting anything, the socket serves a real
# client's function and program jobs under the configured cgroup limits, the journal shows
# them, an upgrade restarts the running node and keeps the edited configuration, `systemctl
# stop` leaves no process, remove stops everything and purge leaves nothing behind.
# Prints PASS/FAIL lines and "N passed, N failed"; exits non-zero on any failure.
# shellcheck disable=SC2016  # the single-quoted bash -c scripts expand in the inner shell
set -u
P=/root/payload
PORT=51348
pass=0
fail=0
ok() { echo "PASS $*"; pass=$((pass + 1)); }
bad() { echo "FAIL $*"; fail=$((fail + 1)); }
check() { local what=$1; shift; if "$@"; then ok "$what"; else bad "$what"; fi; }
listening() { ss -Hlntu "sport = :$PORT" | grep -q .; }
no_node_process() { ! pgrep -u dispynode >/dev/null; }

export DEBIAN_FRONTEND=noninteractive PYTHONPATH=/opt/dispyclient:$P PYTHONDONTWRITEBYTECODE=1
# The client's own watchdog (tests/clients/common.py): TCG runs ~10x slower than the host.
export INTEROP_CLIENT_WATCHDOG=280
mkdir -p /opt/dispyclient && tar -C /opt/dispyclient -xzf $P/dispyclient.tgz
DEB=$(ls $P/dispynode_*-1_*.deb)
DEB2=$(ls $P/dispynode_*-2_*.deb)
echo "guest: $(systemctl --version | head -1); kernel $(uname -r); $(python3 -V)"

echo "--- apt install $(basename "$DEB")"
check "apt install of the .deb (offline: every dependency is in a minimal Debian 12)" \
	apt-get install -y "$DEB"
check "binary runs" dispynode --version
check "user dispynode created (sysusers)" getent passwd dispynode
getent passwd dispynode
check "state directory /var/lib/dispynode 0700 dispynode (tmpfiles)" \
	test "$(stat -c '%a %U %G' /var/lib/dispynode 2>&1)" = "700 dispynode dispynode"
check "configuration is a conffile" bash -c 'dpkg-query -W -f="\${Conffiles}" dispynode | grep -q /etc/dispynode/dispynode.toml'
check "socket not enabled by the installation" test "$(systemctl is-enabled dispynode.socket)" = disabled
check "nothing started by the installation" bash -c \
	'[ "$(systemctl is-active dispynode.socket)" = inactive ] && [ "$(systemctl is-active dispynode.service)" = inactive ]'
check "nothing listens on $PORT after the installation" bash -c "! ss -Hlntu 'sport = :$PORT' | grep -q ."
for f in /usr/lib/systemd/system/dispynode.service /usr/lib/systemd/system/dispynode.socket \
	/usr/lib/sysusers.d/dispynode.conf /usr/lib/tmpfiles.d/dispynode.conf \
	/usr/share/bash-completion/completions/dispynode; do
	check "installed: $f" test -f $f
done

echo "--- configure and enable (README)"
UID_D=$(id -u dispynode)
# The client runs in the VM on 127.0.0.1: announce that address; and per-job limits.
cat >> /etc/dispynode/dispynode.toml <<'CONF'

# added by the package test
ip_addr = ["127.0.0.1"]
job_memory_max = "256m"
job_pids_max = 64
CONF
check "dispynode --config accepts the edited file" \
	bash -c 'dispynode --config /etc/dispynode/dispynode.toml --save_config >/dev/null'
check "systemctl enable --now dispynode.socket" systemctl enable --now dispynode.socket
check "socket listens on $PORT (TCP and UDP)" bash -c \
	"ss -Hlnt 'sport = :$PORT' | grep -q . && ss -Hlnu 'sport = :$PORT' | grep -q ."
check "service waits for the first client" test "$(systemctl is-active dispynode.service)" = inactive

echo "--- a real dispy client: a function job and a program job"
cd /tmp || exit 1
timeout 300 python3 $P/client.py $PORT jobs "$UID_D" $((256 * 1024 * 1024)) 64 >/tmp/client.out 2>&1
grep -E "^(CHECK|INFO|RESULT)|Error|Traceback" /tmp/client.out | head -30
check "client: every check passed" bash -c 'grep -q "^RESULT ok" /tmp/client.out && ! grep -q "^CHECK .* FAIL" /tmp/client.out'
check "service started by the socket (Type=notify ready)" test "$(systemctl is-active dispynode.service)" = active
systemctl status dispynode.service --no-pager | head -8

echo "--- journal"
journalctl -u dispynode --no-pager -o cat | tail -12
# Without -d (as shipped) jobs are not logged one by one (journald's rate limit); each
# computation's close says how its jobs ended. The client has closed both: retry while the node
# finishes the second close.
check "journalctl -u dispynode shows the function and the program computation closed, one job each" \
	bash -c 'for i in $(seq 1 20); do journalctl -u dispynode -o json --no-pager | python3 -c "
import json, sys
entries = [json.loads(l) for l in sys.stdin]
comps = {e[\"COMPUTATION\"] for e in entries if e.get(\"MESSAGE\") == \"computation closed\"
         and e.get(\"JOBS\") == \"1\" and e.get(\"FINISHED\") == \"1\" and e.get(\"PRIORITY\") == \"6\"}
per_job = [e for e in entries if e.get(\"MESSAGE\") in (\"job started\", \"job done\")]
print(\"computations closed with one finished job:\", sorted(comps), \"per-job lines:\", len(per_job))
sys.exit(0 if len(comps) >= 2 and not per_job else 1)" && exit 0; sleep 0.5; done; exit 1'

echo "--- upgrade (to $(basename "$DEB2")) while the node runs"
PID1=$(systemctl show -p MainPID --value dispynode.service)
check "apt install of the newer .deb" apt-get install -y "$DEB2"
PID2=$(systemctl show -p MainPID --value dispynode.service)
echo "MainPID before $PID1, after $PID2"
check "upgrade restarted the running node" bash -c \
	"[ '$(systemctl is-active dispynode.service)' = active ] && [ '$PID2' != 0 ] && [ '$PID2' != '$PID1' ]"
check "upgrade kept the socket enabled" test "$(systemctl is-enabled dispynode.socket)" = enabled
check "upgrade kept the edited configuration" grep -q '^job_memory_max = "256m"' /etc/dispynode/dispynode.toml
timeout 300 python3 $P/client.py $PORT jobs "$UID_D" $((256 * 1024 * 1024)) 64 >/tmp/client2.out 2>&1
check "client served after the upgrade" bash -c 'grep -q "^RESULT ok" /tmp/client2.out && ! grep -q "^CHECK .* FAIL" /tmp/client2.out'

echo "--- systemctl stop with a job running (and a setsid'd child of it)"
timeout 600 python3 $P/client.py $PORT long >/tmp/client3.out 2>&1 &
CLIENT=$!
# Both sleeps (`-f 'sleep 600'` would already match `setsid sleep 600` before its exec).
for _ in $(seq 1 120); do [ "$(pgrep -u dispynode -c -x sleep)" -ge 2 ] && break; sleep 1; done
# The client goes first: its discovery datagrams to the node port would start the service
# again through the socket right after the stop. The job keeps running without it.
kill $CLIENT 2>/dev/null  # timeout(1) passes SIGTERM on to the client
wait $CLIENT 2>/dev/null
pgrep -u dispynode -a
check "the long job runs (two sleeps)" test "$(pgrep -u dispynode -c -x sleep)" -ge 2
check "systemctl stop dispynode" systemctl stop dispynode.service
check "no process of dispynode left after stop" no_node_process
pgrep -u dispynode -a
# A datagram that arrived after the service had read its last one starts it again: stop it
# again so that the reinstall below starts from a stopped service.
sleep 2
systemctl stop dispynode.service

echo "--- reinstall while the service is stopped"
check "service stopped before the reinstall" test "$(systemctl is-active dispynode.service)" = inactive
check "apt reinstall" apt-get install -y --reinstall "$DEB2"
check "a stopped service stays stopped" test "$(systemctl is-active dispynode.service)" = inactive
systemctl status dispynode.service --no-pager 2>&1 | sed -n '1,4p'
check "the enabled socket still listens" listening

echo "--- apt remove"
dpkg -L dispynode >/tmp/files.txt
check "apt remove" apt-get remove -y dispynode
check "remove stopped the socket and the service" bash -c \
	'[ "$(systemctl is-active dispynode.socket)" != active ] && [ "$(systemctl is-active dispynode.service)" != active ]'
check "nothing listens on $PORT after remove" bash -c "! ss -Hlntu 'sport = :$PORT' | grep -q ."
check "no process of dispynode left after remove" no_node_process
check "remove keeps the configuration (conffile)" test -f /etc/dispynode/dispynode.toml
check "remove keeps the state" test -d /var/lib/dispynode

echo "--- apt purge"
check "apt purge" apt-get purge -y dispynode
check "package gone from dpkg" bash -c '! dpkg-query -W -f="\${Status}" dispynode 2>/dev/null | grep -q installed'
check "purge removed /etc/dispynode" test ! -e /etc/dispynode
check "purge removed /var/lib/dispynode" test ! -e /var/lib/dispynode
left=$(while read -r f; do [ -e "$f" ] && [ ! -d "$f" ] && echo "$f"; done </tmp/files.txt)
check "no file of the package left" test -z "$left"
echo "$left"
check "no unit symlink or helper state left" bash -c \
	'! find /etc/systemd /var/lib/systemd/deb-systemd-helper-enabled /var/lib/systemd/deb-systemd-helper-masked -name "dispynode*" 2>/dev/null | grep -q .'
find /etc/systemd /var/lib/systemd -name 'dispynode*' 2>/dev/null
# Debian keeps system accounts on purge (files owned by the uid may remain elsewhere, e.g. in
# backups, and must not be given to a later account that reuses the id).
echo "INFO user after purge: $(getent passwd dispynode || echo none)"
echo "--- journal (last lines)"
journalctl -u dispynode --no-pager | tail -8
echo "$pass passed, $fail failed"
[ "$fail" = 0 ]
