#!/bin/bash
# Runs INSIDE the test VM (root; systemd 252 as PID 1; cgroup v2), put there by
# tests/vm/sandbox-limits.sh with the files it needs in /root/t:
#   dispynode.gz                 our binary (stripped, gzipped)
#   client.tgz                   dispy + pycos (pure Python) from the host's venv
#   common.py probe_*.py         the client scripts of tests/clients/
#
# For each way of starting the node under systemd with a delegated cgroup
# (Delegate=yes, Type=exec):
#   user   systemd-run -p User=nobody -p Group=nogroup (as the shipped unit, which uses
#          User=dispynode): systemd hands the delegated subtree to that account;
#   root   systemd-run as root: the daemon sets up its cgroups, then drops to
#          nobody/nogroup itself (--user/--group default, no dispynode account here);
# it starts the node with --job_pids_max 64 --job_memory_max 64m and runs, with the stock
# client:
#   probe_limits.py           job in its own cgroup; fork bomb stopped by pids.max and
#                             memory hog killed by memory.max, both Terminated with the
#                             reason in job.exception; normal jobs afterwards;
#   probe_cancel_program.py   a cancelled shell program's background sleeps, one of them
#   --setsid                  escaped with setsid(1): all gone (cgroup.kill);
#   probe_identity.py         a job runs as nobody with no capability;
# then checks that no job cgroup is left and the node is still active.
#
# Prints "[mode] CHECK <name> ok|FAIL ..." lines, per-mode verdicts and a final
# "GUEST: PASS" or "GUEST: FAIL <checks>"; exits 0 only on PASS.
set -u
T=/root/t
PORT=51348
UNIT=dispynode-test
MODES=${MODES:-user root}
CLIENT_TIMEOUT=300
FAILED=()

export PYTHONPATH=$T/py PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
# The client scripts' own watchdog (tests/clients/common.py): TCG is ~10x slower than the host.
export INTEROP_CLIENT_WATCHDOG=$((CLIENT_TIMEOUT - 20))

gunzip -c $T/dispynode.gz > /usr/local/bin/dispynode && chmod 0755 /usr/local/bin/dispynode
mkdir -p $T/py && tar xzf $T/client.tgz -C $T/py
echo "guest: kernel $(uname -r); $(systemctl --version | head -1); /sys/fs/cgroup is" \
     "$(stat -fc %T /sys/fs/cgroup) with controllers: $(cat /sys/fs/cgroup/cgroup.controllers)"
echo "guest: lsm $(cat /sys/kernel/security/lsm); python $(python3 -V 2>&1)"

check() { # mode name ok(0/1) detail
    if [ "$3" = 0 ]; then
        echo "[$1] CHECK $2 ok"
    else
        echo "[$1] CHECK $2 FAIL $4"
        FAILED+=("$1:$2")
    fi
}

# Runs a client script; prints its CHECK lines with the mode; every FAIL, a missing
# RESULT line or a timeout counts as a failure. Its output stays in $OUT.
client() { # mode script args...
    local mode=$1 script=$2
    shift 2
    local dir
    dir=$(mktemp -d)
    OUT=$dir/out.txt
    (cd "$dir" && timeout -s KILL $CLIENT_TIMEOUT python3 "$T/$script.py" "$PORT" "$@" >"$OUT" 2>"$dir/err.txt")
    local rc=$?
    grep -E '^(CHECK|INFO)' "$OUT" | sed "s/^/[$mode] $script: /"
    # Each failed check by name, so that the final GUEST line alone says what failed.
    local name
    for name in $(sed -n 's/^CHECK \([^ ]*\) FAIL.*/\1/p' "$OUT"); do
        FAILED+=("$mode:$script:$name")
    done
    if ! grep -qx 'RESULT ok' "$OUT"; then
        echo "[$mode] $script: no RESULT line (rc $rc); stderr tail:"
        tail -20 "$dir/err.txt" | sed "s/^/[$mode]   /"
        FAILED+=("$mode:$script:unfinished")
    fi
}

info() { # the value of an INFO line in $OUT
    sed -n "s/^INFO $1=//p" "$OUT" | tail -1
}

wait_port() {
    python3 - "$PORT" <<'EOF'
import socket, sys, time
deadline = time.time() + 90
while time.time() < deadline:
    try:
        socket.create_connection(('127.0.0.1', int(sys.argv[1])), 2).close()
        sys.exit(0)
    except OSError:
        time.sleep(0.3)
sys.exit(1)
EOF
}

run_mode() {
    local mode=$1 t0=$SECONDS
    local props=(-p Delegate=yes -p Type=exec)
    [ "$mode" = user ] && props+=(-p User=nobody -p Group=nogroup)
    local prefix=/var/tmp/dispynode-$mode
    mkdir -p "$prefix"
    [ "$mode" = user ] && chown nobody:nogroup "$prefix"
    local since
    since=$(date +%s)
    echo "=== mode $mode: systemd-run ${props[*]} dispynode ..."
    systemd-run --quiet --unit=$UNIT "${props[@]}" /usr/local/bin/dispynode -i 127.0.0.1 \
        --node_port $PORT --scheduler_port $((PORT - 1)) --dest_path_prefix "$prefix" \
        --cpus 2 --job_pids_max 64 --job_memory_max 64m -d
    wait_port
    check "$mode" node_started $? "not accepting on port $PORT"
    local cg
    cg=/sys/fs/cgroup$(systemctl show -P ControlGroup $UNIT)
    echo "[$mode] unit cgroup $cg: $(cd "$cg" && find . -mindepth 1 -maxdepth 1 -type d | tr '\n' ' ')"
    echo "[$mode] $(journalctl -u $UNIT --no-pager -o cat | grep -E 'cgroup|landlock|dropped' | tr '\n' ';')"

    client "$mode" probe_limits
    # The journal: jobs one by one only at debug (the node runs with -d here), except the two
    # the node killed (info), and the computation's close with its tally (info): what an
    # operator sees without -d. 5 jobs: cgroup, bomb and hog (killed), two squares.
    local tally  # this mode's run only: the unit name is the same for both
    for _ in $(seq 1 20); do
        tally=$(journalctl -u $UNIT --since "@$since" -o json --no-pager | python3 -c '
import json, sys
e = [json.loads(l) for l in sys.stdin]
killed = [x for x in e if x.get("MESSAGE", "").startswith("job done: killed") and x.get("PRIORITY") == "6"]
done = [x for x in e if x.get("MESSAGE") == "job done"]
closed = [x for x in e if x.get("MESSAGE") == "computation closed" and x.get("PRIORITY") == "6"]
t = closed[-1] if closed else {}
print("killed-lines=%d debug-done-priorities=%s closed=%s" % (len(killed), sorted({x.get("PRIORITY") for x in done}),
      " ".join("%s=%s" % (k, t.get(k)) for k in ("JOBS", "FINISHED", "TERMINATED", "KILLED"))))')
        case "$tally" in *"closed=JOBS="[0-9]*) break ;; esac
        sleep 0.5
    done
    case "$tally" in
        "killed-lines=2 debug-done-priorities=['7'] closed=JOBS=5 FINISHED=3 TERMINATED=2 KILLED=2") check "$mode" journal_tally 0 ;;
        *) check "$mode" journal_tally 1 "$tally" ;;
    esac
    local mark
    mark=300.777$(printf '%06d' $((RANDOM * 32768 + RANDOM)) | cut -c1-6)
    client "$mode" probe_cancel_program "$mark" --setsid
    local cgs
    cgs=$(info sleep_cgroups)
    case "$cgs" in
        *"$UNIT.service/jobs/"*) check "$mode" program_in_job_cgroup 0 ;;
        *) check "$mode" program_in_job_cgroup 1 "the program's sleeps ran in $cgs" ;;
    esac
    # ... born there: the spawner starts it with clone3(CLONE_INTO_CGROUP) (Linux >= 5.7)
    ! journalctl -u $UNIT --no-pager -o cat | grep -q 'CLONE_INTO_CGROUP) unavailable'
    check "$mode" program_born_in_cgroup $? "the spawner fell back to joining after the fork"
    client "$mode" probe_identity
    local uid capeff nnp
    uid=$(info job_Uid) capeff=$(info job_CapEff) nnp=$(info job_NoNewPrivs)
    [ "$uid" = "65534 65534 65534 65534" ] && [ "$capeff" = 0000000000000000 ] && [ "$nnp" = 1 ]
    check "$mode" job_identity $? "Uid '$uid' CapEff '$capeff' NoNewPrivs '$nnp'"

    # After every client closed: the node still runs, no job cgroup or job process is left.
    systemctl is-active --quiet $UNIT
    check "$mode" node_still_active $? "$(systemctl is-active $UNIT)"
    local left=""
    for _ in $(seq 1 40); do
        left=$(cd "$cg/jobs" 2>/dev/null && find . -mindepth 1 -type d | tr '\n' ' ')
        [ -z "$left" ] && break
        sleep 0.5
    done
    [ -z "$left" ]
    check "$mode" job_cgroups_removed $? "left in $cg/jobs: $left"
    local sleeps
    sleeps=$(pgrep -f "^sleep $mark" | tr '\n' ' ')
    [ -z "$sleeps" ]
    check "$mode" no_leftover_sleeps $? "still running: $sleeps"
    [ -n "$sleeps" ] && kill -9 $sleeps 2>/dev/null
    echo "[$mode] tasks in the unit now: $(systemctl show -P TasksCurrent $UNIT)"
    echo "[$mode] journal (last 25 lines):"
    journalctl -u $UNIT --no-pager -o cat | tail -25 | sed "s/^/[$mode]   /"
    systemctl stop $UNIT
    systemctl reset-failed $UNIT 2>/dev/null
    echo "=== mode $mode done in $((SECONDS - t0)) s"
}

for mode in $MODES; do
    run_mode "$mode"
done

echo
echo "=== summary"
for mode in $MODES; do
    bad=$(printf '%s\n' "${FAILED[@]}" | grep -c "^$mode:")
    if [ "$bad" = 0 ]; then echo "mode $mode: PASS"; else echo "mode $mode: FAIL"; fi
done
if [ ${#FAILED[@]} -eq 0 ]; then
    echo "GUEST: PASS"
    exit 0
fi
echo "GUEST: FAIL ${FAILED[*]}"
exit 1
