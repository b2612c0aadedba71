"""A plain client that runs a few jobs, or checks that it gets no node.

argv: PORT [--client-port N] [--secret S] [--certfile F --keyfile K]
           [--jobs N] [--cpus N] [--expect ok|none] [--wait SECS]
  PORT           the node's port
  --client-port  the client's own port (default PORT-1): another port is
                 another scheduler for the node
  --cpus N       also check the node offers exactly N CPUs
  --expect none  the client must not get the node within --wait seconds
                 (default 15) and no job may run
Checks (ok): replied, results, [node_cpus], closed
Checks (none): no_reply, not_run, no_node
"""
import os

import common
import dispy
import life_common as lc


def compute(n):
    import os
    return (n * n, os.getcwd())


if __name__ == '__main__':
    port = common.port()
    client_port = int(common.opt('--client-port', port - 1))
    expect = common.opt('--expect', 'ok')
    kw = {}
    if common.opt('--secret') is not None:
        kw['secret'] = common.opt('--secret')
    if common.opt('--certfile'):
        kw['certfile'] = os.path.abspath(common.opt('--certfile'))
    if common.opt('--keyfile'):
        kw['keyfile'] = os.path.abspath(common.opt('--keyfile'))
    njobs = int(common.opt('--jobs', '2'))
    c = lc.cluster_at(compute, port, client_port, depends=[], **kw)
    if expect == 'ok':
        jobs = [common.submit(c, i) for i in range(1, njobs + 1)]
        replied = all(common.wait_job(j, 60) for j in jobs)
        common.check('replied', replied, [common.status_name(j.status) for j in jobs])
        got = [(common.status_name(j.status), j.result[0] if isinstance(j.result, tuple) else j.result)
               for j in jobs]
        want = [(common.status_name(dispy.DispyJob.Finished), i * i) for i in range(1, njobs + 1)]
        common.check_eq('results', got, want)
        for j in jobs:
            if isinstance(j.result, tuple):
                common.info('dest_dir', j.result[1])
                break
        if common.opt('--cpus') is not None:
            nodes = [(n.ip_addr, n.cpus) for n in c.status().nodes]
            common.check_eq('node_cpus', nodes, [(lc.HOST, int(common.opt('--cpus')))])
        common.check('closed', common.close(c), 'close reported pending jobs')
    else:
        job = common.submit(c, 3)
        finished = common.wait_job(job, float(common.opt('--wait', '15')))
        common.check('no_reply', not finished,
                     'job finished: %s %r' % (common.status_name(job.status), job.result))
        common.check_eq('not_run', (common.status_name(job.status), job.result),
                        (common.status_name(dispy.DispyJob.Created), None))
        nodes = [n.ip_addr for n in c.status().nodes]
        common.check_eq('no_node', nodes, [])
        c.close(timeout=2, terminate=True)
    common.finish()
