"""cluster.cancel() of running jobs (each sleeping 100 s): the node must
reply with status Terminated promptly, the job's process must be gone, and
the node's CPU slots must be usable again.

The job reports its pid (and the pid of a `sleep 100` child when asked)
through dispy_provisional_result, which also tells the client it is running.

argv: PORT [--setup] [--grandchild]
  --setup       use a setup function (jobs fork from the setup process in the
                reference; its cancel never replies there without psutil)
  --grandchild  the job starts `sleep 100` and we require it to be killed too
                (the reference only signals the direct child)

Against the reference, the cancelled jobs' internal objects are kept alive so
that the client cannot reuse their uids (Python id()) for the jobs submitted
after the cancel: the reference sometimes sends the stale Terminated reply of
a killed job for a new job with the same uid (reference bug, protocol G11).
"""
import os
import sys
import time

import common
import dispy


def setup():
    global setup_done
    setup_done = True
    return 0


def compute(n, grandchild):
    import os
    import subprocess
    import time
    child = None
    if grandchild:
        child = subprocess.Popen(['sleep', '100']).pid
    dispy_provisional_result((os.getpid(), child))
    if n > 10:
        time.sleep(n)
    return ('done', n)


def alive(pid):
    """True while the process exists and is not a zombie."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open('/proc/%d/stat' % pid) as fd:
            state = fd.read().rsplit(')', 1)[1].split()[0]
        return state != 'Z'
    except (OSError, IndexError):
        return False


if __name__ == '__main__':
    use_setup = '--setup' in sys.argv
    grandchild = '--grandchild' in sys.argv
    kw = {'setup': setup} if use_setup else {}
    c = common.cluster(compute, depends=[], **kw)
    jobs = [common.submit(c, 100, grandchild), common.submit(c, 101, grandchild)]
    held = []
    if common.REFERENCE:
        common.workaround('keeping cancelled jobs uids from being reused')
        held = [j._dispy_job_ for j in jobs]
    running = all(common.wait_until(lambda: j.status == dispy.DispyJob.ProvisionalResult, 40)
                  for j in jobs)
    common.check('jobs_running', running, [common.status_name(j.status) for j in jobs])
    pids = [j.result if isinstance(j.result, tuple) else (None, None) for j in jobs]
    common.check('job_pids_alive', all(alive(p[0]) for p in pids), 'pids %r' % (pids,))
    time.sleep(0.5)
    t0 = time.time()
    rcs = [c.cancel(j) for j in jobs]
    common.check_eq('cancel_rc', rcs, [0, 0])
    replied = all(common.wait_job(j, 20) for j in jobs)
    elapsed = time.time() - t0
    common.info('cancel_reply_seconds', '%.2f' % elapsed)
    common.check('cancel_replied', replied, 'no reply within 20 s; statuses %s' %
                 [common.status_name(j.status) for j in jobs])
    term = common.status_name(dispy.DispyJob.Terminated)
    common.check_eq('cancel_status', [common.status_name(j.status) for j in jobs], [term, term])
    common.check_eq('cancel_result', [j.result for j in jobs], [None, None])
    common.check('job_processes_gone',
                 common.wait_until(lambda: not any(alive(p[0]) for p in pids), 15),
                 'still alive: %r' % [p[0] for p in pids if alive(p[0])])
    if grandchild:
        gone = common.wait_until(lambda: not any(alive(p[1]) for p in pids), 15)
        common.check('grandchildren_gone', gone,
                     'still alive: %r' % [p[1] for p in pids if alive(p[1])])
    # CPU slots are free again: two more jobs run at once
    more = [common.submit(c, 1, False), common.submit(c, 2, False)]
    ok = all(common.wait_job(j, 60) for j in more)
    common.check('slots_freed', ok, [common.status_name(j.status) for j in more])
    common.check_eq('after_cancel_results', [j.result for j in more], [('done', 1), ('done', 2)])
    common.check('closed', common.close(c), 'close reported pending jobs')
    # never leave our own test processes behind (the reference orphans them)
    for p in pids:
        for pid in p:
            if alive(pid):
                try:
                    os.kill(pid, 9)
                except OSError:
                    pass
    common.finish()
