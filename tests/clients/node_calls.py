"""The client's calls on one node: submit_node, node_jobs(from_node=True) (a JOBS request to
the node), resetup_node (CLOSE with close=False, then SETUP again) and close_node with
terminate_pending (CLOSE while a job runs); a raw CLOSE for another node address changes
nothing.

setup() records when it ran in a global; each job returns it, so a job after resetup_node
shows that setup ran again. cleanup() logs "INTEROP_NODE_CALLS_CLEANUP <token>" (the
harness counts it: once for resetup_node, once for close_node).

argv: PORT TOKEN
"""
import time

import common
import dispy
import life_common as lc


def setup(token):
    global setup_time, setup_token
    import time
    setup_time = time.time()
    setup_token = token
    return 0


def cleanup(token):
    msg = 'INTEROP_NODE_CALLS_CLEANUP %s' % token
    try:
        dispynode_logger.info(msg)
    except NameError:
        import sys
        sys.stderr.write(msg + '\n')
        sys.stderr.flush()


def compute(n, secs=0):
    import time
    time.sleep(secs)
    return (n * 2, setup_token, setup_time)


def set_up_on(c, node):
    """Whether the client has the node set up for this cluster: the cluster shows the node
    (wait_node) before the SETUP reply, and submit_node() refuses a node it is not yet on."""
    state = c._cluster._nodes.get(node)
    return state is not None and c in state.clusters


def result_of(job):
    return job.result if isinstance(job.result, tuple) else (None, None, None)


if __name__ == '__main__':
    token = common.arg(2, 'tok')
    node = common.NODE_HOST
    c = common.cluster(compute, nodes=[common.node_alloc(setup_args=(token,))],
                       setup=setup, cleanup=cleanup)
    common.check('node', common.wait_until(lambda: set_up_on(c, node), 30),
                 'the client never set the node up')

    first = common.submit_node(c, node, 3)
    ok = first is not None and common.wait_job(first, 30)
    common.check_eq('submit_node', ok and result_of(first)[:2], (6, token))

    running = common.submit(c, 5, 2)
    common.wait_until(lambda: common.client_has_it_running(running), 20)
    listed = c.node_jobs(node, from_node=True)
    common.check('node_jobs_from_node', isinstance(listed, list) and listed == [running],
                 (listed, running))
    common.check_eq('running_job', common.wait_job(running, 30) and result_of(running)[0], 10)

    # resetup_node() returns at once and the client redoes the node in the background: jobs
    # submitted meanwhile may still run on the old setup, so submit until one shows the new.
    before = result_of(first)[2]
    common.check_eq('resetup_node', c.resetup_node(node), 0)
    seen = []

    def setup_ran_again():
        job = common.submit(c, 4)
        ok = job is not None and common.wait_job(job, 10)
        seen.append((job and common.status_name(job.status), job and job.result,
                     job and job.exception))
        after = result_of(job)[2] if ok else None
        return (ok and result_of(job)[:2] == (8, token) and isinstance(before, float) and
                isinstance(after, float) and after > before)

    common.check('setup_ran_again', common.wait_until(setup_ran_again, 30, step=0.2),
                 (before, seen[-3:]))

    # A CLOSE with the computation's auth but for another node address is refused (as the
    # reference): the computation goes on.
    req = lc.compute_req(c, node_ip_addr='127.0.0.2', terminate_pending=True, close=True)
    common.info('close_elsewhere', lc.raw_request(c, b'CLOSE:', req))
    still = common.submit(c, 6)
    common.check_eq('close_elsewhere_ignored', common.wait_job(still, 30) and
                    result_of(still)[:2], (12, token))

    long = common.submit(c, 9, 60)
    common.wait_until(lambda: common.client_has_it_running(long), 20)
    common.check_eq('close_node', c.close_node(node, terminate_pending=True), 0)
    ended = common.wait_job(long, 30)
    common.check_eq('close_node_terminates', ended and long.status, dispy.DispyJob.Terminated)
    common.close(c)
    common.finish()
