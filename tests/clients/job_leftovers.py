"""A function job that leaves processes running when it returns: a `sleep MARK` started with
subprocess.Popen and a forked copy of itself sleeping. Both are in the job's process group;
once the job's result is in, the node must have ended them (they used to run on, past the
close, without a cgroup per job).

argv: PORT MARK
"""
import os
import time

import common
import dispy


def compute(mark):
    import os
    import subprocess
    import time
    sleeper = subprocess.Popen(['sleep', mark])
    forked = os.fork()
    if forked == 0:
        time.sleep(float(mark))
        os._exit(0)
    return [sleeper.pid, forked]


def alive(pid):
    """Whether `pid` still runs (a zombie has ended)."""
    try:
        with open('/proc/%d/stat' % pid) as fd:
            return fd.read().rsplit(')', 1)[1].split()[0] != 'Z'
    except OSError:
        return False


if __name__ == '__main__':
    mark = common.arg(2, '41.5')
    c = common.cluster(compute)
    job = common.submit(c, mark)
    ok = common.wait_job(job, 30)
    pids = job.result if ok and isinstance(job.result, list) else []
    common.check_eq('job', (common.status_name(job.status), len(pids)),
                    (common.status_name(dispy.DispyJob.Finished), 2))
    gone = common.wait_until(lambda: not any(alive(p) for p in pids), 10, step=0.1)
    common.check('leftovers_gone', gone, [(p, alive(p)) for p in pids])
    common.check('closed', common.close(c), 'close reported pending jobs')
    common.finish()
