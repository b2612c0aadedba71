"""SIGINT to the node while a computation is active (the harness sends it
when this client prints "INFO phase=running", then writes "signalled").

MODE wait: the node must go on serving the computation: the running job's
  result arrives; the node exits only once the client closes (the harness
  checks it still runs after "INFO phase=jobs_done", then writes "close").
MODE twice: the harness sends a second SIGINT: the node exits at once,
  terminating the job (which started `sleep 100.DIGITS`); the client sees
  the job end (Terminated, or Abandoned after TERMINATED).

argv: PORT MODE [DIGITS]
"""

import common
import dispy
import life_common as lc


def compute(n, delay, token):
    import subprocess
    import time
    if token:
        subprocess.Popen(['sleep', token])
    dispy_provisional_result('started')
    time.sleep(delay)
    return n * 10


if __name__ == '__main__':
    port = common.port()
    mode = common.arg(2, 'wait')
    token = '100.%s' % common.arg(3) if common.arg(3) else ''
    c = lc.cluster_at(compute, port, port - 1, depends=[])
    job = common.submit(c, 5, 4 if mode == 'wait' else 100, token)
    running = common.wait_until(lambda: job.status == dispy.DispyJob.ProvisionalResult, 40)
    common.check('job_running', running, common.status_name(job.status))
    common.info('phase', 'running')
    common.check_eq('harness_signalled', lc.read_stdin_line(60), 'signalled')
    if mode == 'wait':
        done = common.wait_job(job, 30)
        common.check('job_finished_after_sigint', done and job.status == dispy.DispyJob.Finished,
                     '%s %r' % (common.status_name(job.status), job.result))
        common.check_eq('result', job.result, 50)
        common.info('phase', 'jobs_done')
        common.check_eq('harness_says_close', lc.read_stdin_line(60), 'close')
        common.check('closed', common.close(c), 'close reported pending jobs')
    else:
        ended = set((dispy.DispyJob.Terminated, dispy.DispyJob.Abandoned))
        seen = common.wait_until(lambda: job.status in ended, 20, step=0.1)
        common.info('job_status', common.status_name(job.status))
        common.check('job_ended', seen, common.status_name(job.status))
        c.close(timeout=1, terminate=True)
    common.finish()
