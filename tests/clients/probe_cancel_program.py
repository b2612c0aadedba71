"""A cancelled program job leaves none of its background processes (issue 4).

The program is a shell script that starts `sleep MARK` three ways: two
plain background jobs and one in a subshell that exits at once (so that
sleep is orphaned and reparented, but stays in the job's process group and
cgroup), then waits.  MARK is unique per run (e.g. 300.777123456), so the
sleeps are recognised in /proc/*/cmdline.

argv: PORT MARK [--setsid [--escaped-may-survive]]
  --setsid   a fourth `sleep MARK` is started with setsid(1): it leaves the
             job's process group and session (keeping the job's stdout and
             stderr open), so only the job's cgroup can take it down.
  --escaped-may-survive
             for nodes without cgroup v2 (process-group fallback): the
             setsid'ed sleep is not required to die (sleeps_gone checks the
             others); it is killed by this script after the checks.  The
             cancel must still be answered promptly and the node must serve
             the next job.

CHECKs: sleeps_started (3, or 4, `sleep MARK` seen), cancel_rc, cancel_replied
(within 20 s), cancel_status (Terminated), sleeps_gone (within 15 s),
normal_job, closed.  INFO sleep_pids, sleep_uids, sleep_cgroups,
escaped_survivors.
"""
import os
import signal
import sys

import common
import dispy

PROG = r'''#!/bin/sh
if [ "$1" = normal ]; then echo normal; exit 0; fi
sleep "$1" &
sleep "$1" &
( sleep "$1" & )
if [ "$2" = --setsid ]; then setsid sleep "$1" & fi
echo started
wait
'''


def sleeps(mark):
    """pid -> (uid, escaped) of every live `sleep MARK` process; escaped: it leads a
    session of its own (setsid)."""
    found = {}
    for entry in os.listdir('/proc'):
        if not entry.isdigit():
            continue
        try:
            with open('/proc/%s/cmdline' % entry, 'rb') as fd:
                argv = fd.read().split(b'\0')
            with open('/proc/%s/status' % entry) as fd:
                status = fd.read()
            with open('/proc/%s/stat' % entry) as fd:
                stat = fd.read().rsplit(')', 1)[1].split()
        except (OSError, IndexError):
            continue
        if argv[:2] != [b'sleep', mark.encode()]:
            continue
        fields = dict(line.split(':', 1) for line in status.splitlines() if ':' in line)
        if fields.get('State', '').strip().startswith('Z'):
            continue
        session = int(stat[3])  # fields after the command: state ppid pgrp session ...
        found[int(entry)] = (int(fields.get('Uid', '-1').split()[0]), session == int(entry))
    return found


def cgroup_of(pid):
    try:
        with open('/proc/%d/cgroup' % pid) as fd:
            return fd.read().strip()
    except OSError:
        return '?'


def main():
    mark = common.arg(2)
    use_setsid = '--setsid' in sys.argv[3:]
    may_survive = '--escaped-may-survive' in sys.argv[3:]
    want = 4 if use_setsid else 3
    with open('bg_sleeps.sh', 'w') as fd:
        fd.write(PROG)
    os.chmod('bg_sleeps.sh', 0o755)
    c = common.cluster(os.path.abspath('bg_sleeps.sh'))
    job = common.submit(c, mark, '--setsid') if use_setsid else common.submit(c, mark)
    started = common.wait_until(
        lambda: len(sleeps(mark)) >= want and common.client_has_it_running(job), 60, step=0.1)
    found = sleeps(mark)
    common.info('sleep_pids', sorted(found))
    common.info('sleep_uids', sorted(set(uid for uid, _ in found.values())))
    common.info('sleep_cgroups', sorted(set(cgroup_of(p) for p in found)))
    escaped = sum(1 for _, esc in found.values() if esc)
    common.check('sleeps_started', started and len(found) == want and
                 escaped == (1 if use_setsid else 0),
                 'found %r; job %s' % (found, common.status_name(job.status)))
    common.check_eq('cancel_rc', c.cancel(job), 0)
    replied = common.wait_job(job, 20)
    common.check('cancel_replied', replied, 'no reply within 20 s: %s' %
                 common.status_name(job.status))
    common.check_eq('cancel_status', common.status_name(job.status),
                    common.status_name(dispy.DispyJob.Terminated))

    def left():
        return {p: v for p, v in sleeps(mark).items() if not (may_survive and v[1])}

    gone = common.wait_until(lambda: not left(), 15, step=0.1)
    common.check('sleeps_gone', gone, 'still alive: %r' % left())
    survivors = sorted(sleeps(mark))
    common.info('escaped_survivors', survivors)
    for pid in survivors:  # never leave this test's processes behind
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    common.check_normal_program_job(c, 'normal', b'normal\n')
    common.check('closed', common.close(c), 'close reported pending jobs')
    common.finish()


if __name__ == '__main__':
    main()
