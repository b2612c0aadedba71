"""A result the node could not deliver survives a restart of the node.

The real client, its job-result port behind a ResultProxy (life_common.py)
that rejects connections: a job finishes, the node fails to push its
result and saves it.  Once the node lists it as done (PENDING_JOBS, check
result_saved), the client prints "INFO phase=saved" and waits
for a line on stdin: meanwhile the harness stops the node (SIGKILL or
SIGTERM) and starts it again on the same port, prefix and state dir, then
writes "restarted".  The proxy then forwards again.

MODE deliver: the restarted node must push the saved result (the client
  keeps its computation; it never resends anything).  The real client
  accepts it even if it meanwhile rediscovered the restarted node (the job
  is then Abandoned and the late reply still finishes it).
MODE clean: a second job (a `sleep TOKEN` child, then sleeping) is still
  running when the node is killed; the node is restarted with --clean: the
  leftover job processes must be gone, and the saved result must NOT be
  delivered (--clean removes what the earlier run left behind).

argv: PORT MODE [DIGITS]   (the sleep's argument is 100.DIGITS)
"""
import os
import time

import common
import dispy
import life_common as lc


def compute(n, delay, token):
    import subprocess
    import time
    if token:
        subprocess.Popen(['sleep', token])
    time.sleep(delay)
    return ('answer', n * 10)


if __name__ == '__main__':
    port = common.port()
    mode = common.arg(2, 'deliver')
    token = '100.%s' % common.arg(3) if common.arg(3) else ''
    proxy = lc.ResultProxy(port - 1, mode='reject')
    lc.use_result_port(proxy.port)
    c = lc.cluster_at(compute, port, port - 1, depends=[])
    job = common.submit(c, 3, 1, '')
    uid = job._dispy_job_.uid if job._dispy_job_ is not None else None
    if mode == 'clean':
        long_job = common.submit(c, 4, 100, token)
        running = common.wait_until(lambda: lc.with_token(token), 30, step=0.2)
        common.check('long_job_running', running, 'no process with %s' % token)
    attempted = proxy.wait_rejected(1, 40)
    common.check('delivery_attempted', attempted,
                 'the node never tried to push the result (job %s)' % common.status_name(job.status))
    # The harness kills the node next: wait until the result is saved on its side (PENDING_JOBS
    # lists what is in its results store), not for a fixed time after the failed push (a slow
    # fsync on a busy machine would lose it).
    def saved():
        r = lc.raw_request(c, b'PENDING_JOBS:', lc.compute_req(c))
        return isinstance(r, dict) and uid in (r.get('done') or [])

    common.check('result_saved', uid is not None and common.wait_until(saved, 30, step=0.2),
                 'PENDING_JOBS never listed job %s as done' % uid)
    time.sleep(0.5)
    proxy.set_mode('closed')
    common.info('phase', 'saved')
    line = lc.read_stdin_line(120)
    common.check_eq('harness_restarted_node', line, 'restarted')
    back = time.time()
    proxy.set_mode('forward')
    if mode == 'deliver':
        arrived = common.wait_job(job, 60)
        common.info('seconds_after_restart', '%.1f' % (time.time() - back))
        common.check('delivered_after_restart', arrived,
                     'no result %.0f s after the node restarted; job %s' %
                     (time.time() - back, common.status_name(job.status)))
        common.check_eq('status', common.status_name(job.status), common.status_name(dispy.DispyJob.Finished))
        common.check_eq('result', job.result, ('answer', 30))
    else:
        gone = common.wait_until(lambda: not lc.with_token(token), 15, step=0.2)
        common.check('leftovers_killed', gone,
                     'processes of the killed node still run: %r' % (lc.with_token(token),))
        arrived = common.wait_job(job, 25)
        common.check('saved_result_removed', not arrived,
                     'the result saved before the --clean restart was delivered: %s %r' %
                     (common.status_name(job.status), job.result))
    common.check('closed', c.close(timeout=2, terminate=True), 'close failed')
    for p in lc.with_token(token) if token else []:
        try:
            os.kill(p[0], 9)
        except OSError:
            pass
    common.finish()
