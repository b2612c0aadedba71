"""A stalled client: its job-result port accepts connections and then
neither reads nor writes (life_common.ResultProxy 'stall' mode; its receive
buffer is small, so a big reply blocks the node's writes too).  With
--msg_timeout 2 the node must give up on each delivery within a few
seconds (reading the ACK of a small reply; writing a 2 MB reply), keep the
results, and deliver both once the client is reachable again.

argv: PORT
"""
import time

import common
import life_common as lc


def compute(n, size):
    return ('answer', n, 'x' * size)


if __name__ == '__main__':
    port = common.port()
    proxy = lc.ResultProxy(port - 1, mode='stall')
    lc.use_result_port(proxy.port)
    c = lc.cluster_at(compute, port, port - 1, depends=[])
    small = common.submit(c, 1, 10)
    big = common.submit(c, 2, 2 * 1024 * 1024)
    durations = proxy.wait_stalled(2, 40)
    common.info('stalled_seconds', ['%.1f' % d if d is not None else None for d in durations])
    common.check('deliveries_attempted', len(durations) >= 2,
                 'the node opened %d connection(s) to deliver 2 results' % len(durations))
    common.check('stalled_deliveries_dropped',
                 len(durations) >= 2 and all(d is not None and d <= 6 for d in durations[:2]),
                 'seconds until the node gave up on each stalled delivery: %r (want <= 6 with '
                 '--msg_timeout 2)' % (durations,))
    common.check('not_delivered_while_stalled', not small.finish.is_set() and not big.finish.is_set(),
                 '%s %s' % (common.status_name(small.status), common.status_name(big.status)))
    proxy.set_mode('forward')
    back = time.time()
    arrived = common.wait_job(small, 45) and common.wait_job(big, 45)
    common.info('seconds_after_return', '%.1f' % (time.time() - back))
    common.check('delivered_after_return', arrived,
                 'results %.0f s after the client became reachable: %s %s' %
                 (time.time() - back, common.status_name(small.status), common.status_name(big.status)))
    common.check_eq('small_result', small.result, ('answer', 1, 'x' * 10))
    common.check('big_result',
                 isinstance(big.result, tuple) and big.result[:2] == ('answer', 2) and
                 big.result[2] == 'x' * (2 * 1024 * 1024),
                 'got %r' % (big.result[:2] if isinstance(big.result, tuple) else big.result,))
    common.check('closed', common.close(c), 'close reported pending jobs')
    common.finish()
