"""A result produced while the client is unreachable reaches it once it is
back.  The real client, with its job-result port behind a ResultProxy (see
life_common.py): the node's push of the JOB_REPLY fails while the proxy
rejects connections or has no listener, then the proxy forwards again and
the result must arrive, by the mechanism MODE selects:

  timer       nothing else happens: the node's own resend timer delivers it
  next_reply  a second job is submitted: after its successful reply the node
              resends the saved one
  resend      the client sends RESEND_JOB_RESULTS (what a recovering client
              does; dispy.recover_jobs is broken in 4.15.2, G26)
  poll        the node can never reach the client (no listener at all); the
              client polls with JobCluster(poll_interval=5): PENDING_JOBS must
              list the saved uid and RETRIEVE_JOB fetches it (the reference
              always answers done=[], G13)

argv: PORT MODE
"""
import time

import common
import dispy
import life_common as lc


def compute(n, delay):
    import time
    time.sleep(delay)
    return ('answer', n * 10)


if __name__ == '__main__':
    port = common.port()
    mode = common.arg(2, 'timer')
    proxy = lc.ResultProxy(port - 1, mode='closed' if mode == 'poll' else 'reject')
    lc.use_result_port(proxy.port)
    kw = {'poll_interval': 5} if mode == 'poll' else {}
    c = lc.cluster_at(compute, port, port - 1, depends=[], **kw)
    job = common.submit(c, 4, 2)
    if mode != 'poll':
        attempted = proxy.wait_rejected(1, 40)
        common.check('delivery_attempted', attempted,
                     'the node never tried to push the result (job %s)' % common.status_name(job.status))
        # the node has now failed to deliver; keep it unreachable a little
        # longer (refused connections: no listener at all)
        time.sleep(1)
        proxy.set_mode('closed')
        time.sleep(3)
        common.check('not_delivered_while_unreachable', not job.finish.is_set(),
                     'job finished although its result could not be pushed: %s' % common.status_name(job.status))
        proxy.set_mode('forward')
        back = time.time()
        if mode == 'timer':
            arrived = common.wait_job(job, 45)
        elif mode == 'next_reply':
            job2 = common.submit(c, 5, 0)
            ok2 = common.wait_job(job2, 30)
            common.check('second_job', ok2 and job2.result == ('answer', 50),
                         '%s %r' % (common.status_name(job2.status), job2.result))
            arrived = common.wait_job(job, 5)
        elif mode == 'resend':
            reply = lc.raw_request(c, b'RESEND_JOB_RESULTS:', lc.compute_req(c))
            common.check('resend_reply', isinstance(reply, int) and reply >= 1,
                         'RESEND_JOB_RESULTS reply %r, want an int >= 1 (saved results + running jobs)' % (reply,))
            arrived = common.wait_job(job, 10)
        else:
            raise SystemExit('unknown mode %r' % mode)
        common.info('seconds_after_return', '%.1f' % (time.time() - back))
        common.check('delivered_after_return', arrived,
                     'no result %.0f s after the client became reachable again (mode %s); job %s' %
                     (time.time() - back, mode, common.status_name(job.status)))
    else:
        arrived = common.wait_job(job, 40)
        common.check('polled_result', arrived,
                     'the result never came through PENDING_JOBS/RETRIEVE_JOB polling; job %s' %
                     common.status_name(job.status))
    common.check_eq('status', common.status_name(job.status), common.status_name(dispy.DispyJob.Finished))
    common.check_eq('result', job.result, ('answer', 40))
    common.check('closed', common.close(c), 'close reported pending jobs')
    common.finish()
