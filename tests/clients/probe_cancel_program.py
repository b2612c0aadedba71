"""A cancelled program job leaves none of its background processes (issue 4).

The program is a shell script that starts `sleep MARK` three ways: two
plain background jobs and one in a subshell that exits at once (so that
sleep is orphaned and reparented, but stays in the job's process group and
cgroup), then waits.  MARK is unique per run (e.g. 300.777123456), so the
sleeps are recognised in /proc/*/cmdline.

argv: PORT MARK [--setsid]
  --setsid  a fourth `sleep MARK` is started with setsid(1): it leaves the
            job's process group and session, so only the job's cgroup (or
            nothing, without cgroup v2) takes it down.  For nodes with a
            delegated cgroup v2 tree (tests/vm/).

CHECKs: sleeps_started (3, or 4, `sleep MARK` seen), cancel_rc, cancel_replied,
cancel_status (Terminated), sleeps_gone (none left within 15 s),
normal_job, closed.  INFO sleep_pids, sleep_uids, sleep_cgroups.
"""
import os

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
    """pid -> uid of every live `sleep MARK` process."""
    found = {}
    for entry in os.listdir('/proc'):
        if not entry.isdigit():
            continue
        try:
            with open('/proc/%s/cmdline' % entry, 'rb') as fd:
                argv = fd.read().split(b'\0')
            with open('/proc/%s/status' % entry) as fd:
                status = fd.read()
        except OSError:
            continue
        if argv[:2] != [b'sleep', mark.encode()]:
            continue
        fields = dict(line.split(':', 1) for line in status.splitlines() if ':' in line)
        if fields.get('State', '').strip().startswith('Z'):
            continue
        found[int(entry)] = int(fields.get('Uid', '-1').split()[0])
    return found


def cgroup_of(pid):
    try:
        with open('/proc/%d/cgroup' % pid) as fd:
            return fd.read().strip()
    except OSError:
        return '?'


def main():
    mark = common.arg(2)
    use_setsid = common.arg(3) == '--setsid'
    want = 4 if use_setsid else 3
    with open('bg_sleeps.sh', 'w') as fd:
        fd.write(PROG)
    os.chmod('bg_sleeps.sh', 0o755)
    c = common.cluster(os.path.abspath('bg_sleeps.sh'))
    job = c.submit(mark, '--setsid') if use_setsid else c.submit(mark)
    started = common.wait_until(lambda: len(sleeps(mark)) >= want, 60, step=0.1)
    found = sleeps(mark)
    common.info('sleep_pids', sorted(found))
    common.info('sleep_uids', sorted(set(found.values())))
    common.info('sleep_cgroups', sorted(set(cgroup_of(p) for p in found)))
    common.check('sleeps_started', started and len(found) == want, 'found %r; job %s' % (
        found, common.status_name(job.status)))
    common.check_eq('cancel_rc', c.cancel(job), 0)
    replied = common.wait_job(job, 20)
    common.check('cancel_replied', replied, common.status_name(job.status))
    common.check_eq('cancel_status', common.status_name(job.status),
                    common.status_name(dispy.DispyJob.Terminated))
    gone = common.wait_until(lambda: not sleeps(mark), 15, step=0.1)
    common.check('sleeps_gone', gone, 'still alive: %r' % sleeps(mark))
    again = c.submit('normal')
    ok = common.wait_job(again, 60)
    common.check('normal_job', ok and again.result == 0 and again.stdout == b'normal\n',
                 (common.status_name(again.status), again.result, again.stdout, again.stderr))
    common.check('closed', common.close(c), 'close reported pending jobs')
    common.finish()


if __name__ == '__main__':
    main()
