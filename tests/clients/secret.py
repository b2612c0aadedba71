"""Client with a secret.  With the node's secret everything works; with
another secret the client must not get the node (the PONG's auth does not
match), so no job runs (bounded wait).

argv: PORT SECRET ok|refused
"""
import common
import dispy


def compute(n):
    return n + 1


if __name__ == '__main__':
    secret = common.arg(2)
    expect = common.arg(3, 'ok')
    c = common.cluster(compute, depends=[], secret=secret)
    job = common.submit(c, 41)
    if expect == 'ok':
        common.check('replied', common.wait_job(job, 60), common.status_name(job.status))
        common.check_eq('result', (common.status_name(job.status), job.result, job.exception),
                        (common.status_name(dispy.DispyJob.Finished), 42, None))
        common.check('closed', common.close(c), 'close reported pending jobs')
    else:
        finished = common.wait_job(job, 12)
        common.check('no_reply', not finished, 'job finished: %s %r' % (common.status_name(job.status), job.result))
        common.check_eq('not_run', (common.status_name(job.status), job.result),
                        (common.status_name(dispy.DispyJob.Created), None))
        nodes = [n.ip_addr for n in c.status().nodes]
        common.check_eq('no_node', nodes, [])
        common.close(c, timeout=2)
    common.finish()
