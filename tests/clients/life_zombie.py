"""A client that runs one job and then "crashes": after its result came
back it prints "INFO phase=idle" and waits; the harness then SIGKILLs it
(never closing its computation).  The node must detect the zombie
computation (--zombie_interval 1) and free itself.

argv: PORT
"""
import time

import common
import dispy
import life_common as lc


def compute(n):
    import os
    return (n + 1, os.getcwd())


if __name__ == '__main__':
    port = common.port()
    c = lc.cluster_at(compute, port, port - 1, depends=[])
    job = common.submit(c, 1)
    ok = common.wait_job(job, 60)
    common.check('replied', ok and job.status == dispy.DispyJob.Finished,
                 '%s %r' % (common.status_name(job.status), job.result))
    if isinstance(job.result, tuple):
        common.info('dest_dir', job.result[1])
    # job.finish is set before the client ACKs the reply: let the ACK go out
    # (else the node saves the reply, and the reference then keeps the
    # directory, protocol §4.1)
    time.sleep(1.5)
    # for life_keeper.py, which the harness starts once we are gone
    common.info('node_auth', lc.node_of(c).auth.decode())
    common.info('compute_id', c._compute.id)
    common.info('phase', 'idle')
    # the harness kills us here; never close
    time.sleep(common.budget(600))
    common.finish()
