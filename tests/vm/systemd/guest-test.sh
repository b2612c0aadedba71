#!/bin/bash
# Runs inside the VM (systemd 252 as PID 1, cgroup v2): installs the prototype node with the
# shipped units and checks socket activation, READY/STATUS, a real client job under the
# hardened unit, journal fields, reload, watchdog restart, stop.
set -u
P=/root/payload
pass=0; fail=0
ok()  { echo "PASS $*"; pass=$((pass+1)); }
bad() { echo "FAIL $*"; fail=$((fail+1)); }
check() { local what=$1; shift; if "$@"; then ok "$what"; else bad "$what"; fi; }

install -m 755 $P/dispynode /usr/bin/dispynode
install -m 644 $P/dispynode.service $P/dispynode.socket /usr/lib/systemd/system/
install -D -m 644 $P/dispynode.sysusers /usr/lib/sysusers.d/dispynode.conf
install -D -m 644 $P/dispynode.toml /etc/dispynode/dispynode.toml
# The client runs in the VM on 127.0.0.1: announce that address.
echo 'ip_addr = ["127.0.0.1"]' >> /etc/dispynode/dispynode.toml
mkdir -p /opt/dispyclient && tar -C /opt/dispyclient -xzf $P/dispyclient.tgz
# The client scripts' own watchdog (tests/clients/common.py, 80 s by default): TCG runs ~10x
# slower than the host, and each script below is bounded by `timeout 300` anyway.
export INTEROP_CLIENT_WATCHDOG=280
systemd-sysusers /usr/lib/sysusers.d/dispynode.conf
# Watchdog test speed: 6 s instead of 30 s (TCG is slow, but 3 s pings are plenty).
mkdir -p /etc/systemd/system/dispynode.service.d
printf "[Service]\nWatchdogSec=6s\n${EXTRA_DIRECTIVES:-}\n" > /etc/systemd/system/dispynode.service.d/test.conf
systemctl daemon-reload
echo "--- security"
systemd-analyze security dispynode.service --no-pager | tail -1
check "socket unit starts" systemctl enable --now dispynode.socket
ss -lntu | grep 51348
check "service not started before first contact" test "$(systemctl is-active dispynode.service)" = inactive

echo "--- client job"
cd /tmp && PYTHONPATH=/opt/dispyclient timeout 300 python3 $P/many_jobs.py 51348 6 > /tmp/client.out 2>&1
cat /tmp/client.out | grep -E "CHECK|RESULT|Error|Traceback" | head -20
check "client job passed" bash -c "grep -q \"^RESULT ok\" /tmp/client.out && ! grep -q FAIL /tmp/client.out"
check "no failed client checks" bash -c '! grep -q "CHECK .* FAIL" /tmp/client.out'
echo "--- program jobs (started by the node's spawner, under the unit's hardening)"
mkdir -p /tmp/progclient && cd /tmp/progclient && PYTHONPATH=/opt/dispyclient timeout 300 python3 $P/program.py 51348 > /tmp/prog.out 2>&1
cat /tmp/prog.out | grep -E "CHECK|Error|Traceback" | head -20
check "program jobs passed" bash -c 'test "$(grep -c "^CHECK .* ok" /tmp/prog.out)" -ge 9 && ! grep -q "CHECK .* FAIL" /tmp/prog.out'
check "the node started them through its spawner" bash -c 'pgrep -f -- "dispynode __spawne[r]" >/dev/null'
cd /tmp
check "service active (Type=notify READY=1 accepted)" test "$(systemctl is-active dispynode.service)" = active
echo "--- status"
systemctl status dispynode.service --no-pager | head -12
check "STATUS= shown" bash -c 'systemctl show dispynode -p StatusText | grep -q "CPUs free"'
# Jobs are logged one by one only at debug level; STATUS= (updated every few seconds) counts them.
check "STATUS= counts the jobs done" bash -c 'for i in $(seq 1 20); do
  systemctl show dispynode -p StatusText | grep -q "jobs done since start" && exit 0; sleep 0.5; done; exit 1'
systemctl show dispynode -p MainPID -p StatusText -p NRestarts -p ControlGroup -p WatchdogUSec
echo "--- journal fields"
journalctl -u dispynode --no-pager -o cat | tail -15
check "journal has CLIENT/COMPUTATION fields and each close its JOBS/FINISHED tally" bash -c 'journalctl -u dispynode -o json --no-pager | python3 -c "
import json,sys
e=[json.loads(l) for l in sys.stdin]
ok=any(all(k in x for k in (\"COMPUTATION\",\"JOBS\",\"FINISHED\",\"TERMINATED\")) and x.get(\"SYSLOG_IDENTIFIER\")==\"dispynode\" for x in e)
ok2=any(all(k in x for k in (\"CLIENT\",\"COMPUTATION\")) for x in e)
sys.exit(0 if ok and ok2 else 1)"'
C=$(journalctl -u dispynode -o json --no-pager | python3 -c "
import json,sys
for l in sys.stdin:
    x=json.loads(l)
    if 'COMPUTATION' in x: print(x['COMPUTATION']); break")
echo "journalctl -u dispynode COMPUTATION=$C:"; journalctl -u dispynode COMPUTATION=$C --no-pager -o short | head -5
echo "--- reload"
PID=$(systemctl show -p MainPID --value dispynode)
check "systemctl reload succeeds" timeout 60 systemctl reload dispynode
check "same main pid after reload" test "$(systemctl show -p MainPID --value dispynode)" = "$PID"
journalctl -u dispynode --no-pager -o cat | grep -i -E "sighup|reload" | tail -3
echo "--- watchdog"
kill -STOP "$PID"
for i in $(seq 1 60); do
  NEW=$(systemctl show -p MainPID --value dispynode); [ "$NEW" != "$PID" ] && [ "$NEW" != 0 ] && break
  R=$(systemctl show -p NRestarts --value dispynode); [ "$R" != 0 ] && break
  sleep 1
done
journalctl -u dispynode --no-pager | grep -i -E "watchdog" | tail -3
check "watchdog killed the stopped daemon" bash -c 'journalctl -u dispynode --no-pager | grep -q -i "watchdog timeout"'
sleep 3
echo "state: $(systemctl is-active dispynode.service) NRestarts=$(systemctl show -p NRestarts --value dispynode)"
cd /tmp && PYTHONPATH=/opt/dispyclient timeout 300 python3 $P/many_jobs.py 51348 3 > /tmp/client2.out 2>&1
check "a client is served again after the watchdog restart" bash -c "grep -q \"^RESULT ok\" /tmp/client2.out && ! grep -q FAIL /tmp/client2.out"
echo "--- stop"
check "systemctl stop" systemctl stop dispynode.service dispynode.socket
sleep 1
check "no process of dispynode left" bash -c '! pgrep -u dispynode -a'
pgrep -u dispynode -a
echo "--- a configuration error is not retried (exit 2, RestartPreventExitStatus=2)"
cp /etc/dispynode/dispynode.toml /tmp/good.toml
echo 'no_such_option = 1' >> /etc/dispynode/dispynode.toml
T0=$(date +%s)
systemctl reset-failed dispynode.service 2>/dev/null
systemctl start dispynode.service
sleep 15   # three times RestartSec: a retried start would have come by now
systemctl show dispynode -p ActiveState -p ExecMainStatus -p NRestarts
check "the bad configuration is reported once, not every RestartSec" bash -c \
  "test \"\$(journalctl -u dispynode --since @$T0 --no-pager -o cat | grep -c 'unknown field .no_such_option.')\" = 1"
check "the unit failed with exit status 2" bash -c \
  'test "$(systemctl show -p ExecMainStatus --value dispynode)" = 2 && test "$(systemctl is-active dispynode.service)" = failed'
cp /tmp/good.toml /etc/dispynode/dispynode.toml
systemctl stop dispynode.socket
echo "--- journal (last lines)"
journalctl -u dispynode --no-pager | tail -25
echo "$pass passed, $fail failed"
[ $fail = 0 ]
