"""A program job that exits normally leaves none of its background
processes (issue 4: "whatever the program left running in its process group
goes with it").

The shell script starts `sleep MARK` in the background twice (once
orphaned through a subshell), with its output sent to /dev/null so that it
does not hold the job's stdout, prints a line and exits 0.

argv: PORT MARK

CHECKs: replied, status (Finished), exit_code (0), stdout, sleeps_gone
(within 15 s of the reply), closed.  INFO sleep_pids_at_reply.
"""
import os
import signal

import common
import dispy
from probe_cancel_program import sleeps

PROG = r'''#!/bin/sh
sleep "$1" </dev/null >/dev/null 2>&1 &
( sleep "$1" </dev/null >/dev/null 2>&1 & )
echo main done
exit 0
'''


def main():
    mark = common.arg(2)
    with open('exit_bg.sh', 'w') as fd:
        fd.write(PROG)
    os.chmod('exit_bg.sh', 0o755)
    c = common.cluster(os.path.abspath('exit_bg.sh'))
    job = common.submit(c, mark)
    replied = common.wait_job(job, 60)
    common.info('sleep_pids_at_reply', sorted(sleeps(mark)))
    common.check('replied', replied, common.status_name(job.status))
    common.check_eq('status', common.status_name(job.status),
                    common.status_name(dispy.DispyJob.Finished))
    common.check_eq('exit_code', job.result, 0)
    common.check_eq('stdout', job.stdout, b'main done\n')
    gone = common.wait_until(lambda: not sleeps(mark), 15, step=0.1)
    common.check('sleeps_gone', gone, 'still alive: %r' % sleeps(mark))
    for pid in sleeps(mark):  # never leave this test's processes behind
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    common.check('closed', common.close(c), 'close reported pending jobs')
    common.finish()


if __name__ == '__main__':
    main()
