"""Where a job runs among the node's sessions and terminals: the job reads its
own /proc/self/stat and reports its pid, process group, session and
controlling terminal (tty_nr; 0 is none).

argv: PORT function|program

CHECKs: replied, status (Finished), stat (the four fields were read), closed.
INFO job_pid, job_pgrp, job_session, job_tty_nr (the Rust test asserts on them).
"""
import os

import common
import dispy

# The shell's own stat (`$$`), not that of a command it would start.
PROG = r'''#!/bin/sh
read -r stat < /proc/$$/stat
echo "STAT $stat"
'''


def own_stat():
    with open('/proc/self/stat') as fd:
        return fd.read()


def fields(stat):
    """pid, pgrp, session, tty_nr of a /proc/PID/stat line (the command may hold spaces)."""
    pid = stat.split(' ', 1)[0]
    after = stat[stat.rindex(')') + 2:].split()  # state ppid pgrp session tty_nr ...
    return {'pid': pid, 'pgrp': after[2], 'session': after[3], 'tty_nr': after[4]}


def main():
    kind = common.arg(2)
    computation = own_stat
    if kind == 'program':
        with open('probe_session.sh', 'w') as fd:
            fd.write(PROG)
        os.chmod('probe_session.sh', 0o755)
        computation = os.path.abspath('probe_session.sh')
    c = common.cluster(computation)
    job = common.submit(c)
    replied = common.wait_job(job, 60)
    common.check('replied', replied, common.status_name(job.status))
    common.check_eq('status', common.status_name(job.status),
                    common.status_name(dispy.DispyJob.Finished))
    if kind == 'program':
        out = (job.stdout or b'').decode(errors='replace')
        stat = out.partition('STAT ')[2].strip()
    else:
        stat = job.result if isinstance(job.result, str) else ''
    try:
        got = fields(stat)
    except (ValueError, IndexError):
        got = None
    common.check('stat', got is not None, 'no stat line: %r %r' % (stat, job.exception))
    for key, value in sorted((got or {}).items()):
        common.info('job_%s' % key, value)
    common.check('closed', common.close(c), 'close reported pending jobs')
    common.finish()


if __name__ == '__main__':
    main()
