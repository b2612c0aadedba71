"""SharedJobCluster through the stock dispyscheduler (started by the
harness with -p P-1 -n 127.0.0.1, so it listens for nodes on P-1, pings
the node on P and serves clients on P+1).  Provisional results and the
job's files go from the node straight to the client (client_reply_addr);
final results go through the scheduler.  One job runs 7 s, longer than
5 x the scheduler's --pulse_interval 1: without the node's PULSEs the
scheduler would drop the node and that job.

argv: PORT CLIENT_PORT
"""
import common
import dispy
import life_common as lc


def compute(n):
    import time
    time.sleep(0.2 * n)
    if n == 2:
        dispy_provisional_result(('provisional', n))
        time.sleep(1)
    if n == 4:
        # longer than 5 x the scheduler's pulse_interval (1 s): the node
        # must send PULSE meanwhile or the scheduler drops it
        time.sleep(7)
    print('shared job %d' % n)
    return n * 3


if __name__ == '__main__':
    port = common.port()
    client_port = int(common.arg(2))
    # ip_addr is needed too: 4.15.2 computes its address family from it
    c = dispy.SharedJobCluster(compute, nodes=[lc.HOST], host=lc.HOST, ip_addr=lc.HOST,
                               scheduler_host=lc.HOST,
                               dispy_port=port - 1, client_port=client_port, depends=[],
                               loglevel=common.loglevel())
    jobs = [common.submit(c, i) for i in (1, 2, 3, 4)]
    replied = all(common.wait_job(j, 60) for j in jobs)
    common.check('replied', replied, [common.status_name(j.status) for j in jobs])
    fin = common.status_name(dispy.DispyJob.Finished)
    common.check_eq('statuses', [common.status_name(j.status) for j in jobs], [fin] * 4)
    common.check_eq('results', [j.result for j in jobs], [3, 6, 9, 12])
    common.check_eq('stdout', [j.stdout for j in jobs], ['shared job %d\n' % i for i in (1, 2, 3, 4)])
    common.check_eq('ip_addr', sorted(set(j.ip_addr for j in jobs)), [lc.HOST])
    common.check('closed', common.close(c), 'close reported pending jobs')
    common.finish()
