"""dispy_provisional_result from a running job, and cluster.send_file to a
running computation.

Without job_status callbacks (broken on 3.11), the provisional reply is
observed through the DispyJob itself: the client sets job.status to
ProvisionalResult (7) and job.result to the provisional value, without
setting job.finish.  The job then waits for a file "go.txt" that the client
pushes with cluster.send_file (a FILEXFER while the job runs), and returns.

argv: PORT
"""
import common
import dispy


def compute(n):
    import os
    import time
    rc = dispy_provisional_result(('provisional', n))
    go = None
    deadline = time.time() + 40
    while time.time() < deadline:
        if os.path.exists('go.txt'):
            time.sleep(0.2)
            with open('go.txt') as fd:
                go = fd.read()
            break
        time.sleep(0.05)
    return ('final', n, rc, go)


if __name__ == '__main__':
    c = common.cluster(compute, depends=[])
    job = common.submit(c, 7)
    seen = common.wait_until(lambda: job.status == dispy.DispyJob.ProvisionalResult, 40)
    common.check('provisional_status', seen, 'status %s' % common.status_name(job.status))
    common.check_eq('provisional_result', job.result, ('provisional', 7))
    common.check('not_finished_yet', not job.finish.is_set(), 'job.finish set after a provisional reply')
    with open('go.txt', 'w') as fd:
        fd.write('go ahead\n')
    rc = c.send_file('go.txt', common.NODE_HOST)
    common.check_eq('send_file_to_node', rc, 0)
    common.check('final_replied', common.wait_job(job, 60), common.status_name(job.status))
    common.check_eq('final_status', common.status_name(job.status), common.status_name(dispy.DispyJob.Finished))
    common.check_eq('final_result', job.result, ('final', 7, 0, 'go ahead\n'))
    common.check('closed', common.close(c), 'close reported pending jobs')
    common.finish()
