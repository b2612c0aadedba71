"""JOBS, PENDING_JOBS and RETRIEVE_JOB, sent with the real client's own
auth and computation (as the protocol study's sessF.py did), while its
result port rejects every connection (life_common.ResultProxy) so the
node has to keep the result:

  * JOBS (cluster.node_jobs(from_node=True), and raw) lists the running job;
  * once the node failed to push the result, JOBS no longer lists it and
    PENDING_JOBS lists its uid in 'done';
  * RETRIEVE_JOB with a wrong hash does not hand it out;
  * RETRIEVE_JOB returns the _JobReply (status Finished, right result); if
    the client does not ACK it, it stays saved; once ACKed, PENDING_JOBS no
    longer lists it and RETRIEVE_JOB has nothing;
  * once the client is reachable again, the acknowledged result is not
    pushed again (another job's successful reply, which makes the node
    resend what it still has, comes and goes without it).

argv: PORT [--reference]
  --reference  for the reference node: leave out the checks of PENDING_JOBS's
               'done' list (it always answers done=[], protocol G13/G17) and
               the second job (after the ACK it forgets the computation:
               "Invalid job", its pending-results double decrement, G17)
"""
import pickle
import sys
import time

import common
import dispy
import life_common as lc


def compute(n, delay):
    import time
    time.sleep(delay)
    return ('answer', n * 10)


def is_reply(obj):
    return isinstance(obj, dispy._JobReply)


def pending(c):
    return lc.raw_request(c, b'PENDING_JOBS:', lc.compute_req(c))


def pending_done(c):
    r = pending(c)
    return r.get('done') if isinstance(r, dict) else None


if __name__ == '__main__':
    port = common.port()
    check_pending = '--reference' not in sys.argv
    proxy = lc.ResultProxy(port - 1, mode='reject')
    lc.use_result_port(proxy.port)
    c = lc.cluster_at(compute, port, port - 1, depends=[])
    job = common.submit(c, 7, 4)
    _job = job._dispy_job_
    uid, jhash = _job.uid, _job.hash
    running = common.wait_until(lambda: job.status == dispy.DispyJob.Running, 30)
    time.sleep(0.5)
    listed = c.node_jobs(lc.HOST, from_node=True) if running else []
    common.check('jobs_lists_running', job in listed,
                 'job %s (%s): node_jobs(from_node=True) gave %r' %
                 (uid, common.status_name(job.status), [j.id for j in listed]))
    raw = lc.raw_request(c, b'JOBS:', lc.compute_req(c))
    common.check('jobs_raw_uid', isinstance(raw, list) and uid in raw,
                 'JOBS reply %r, want a list with %r' % (raw, uid))

    forged = lc.raw_request(c, b'JOBS:', lc.compute_req(c, auth='0' * len(c._compute.auth)))
    common.check('jobs_wrong_auth_empty', forged == [],
                 'JOBS with a wrong computation auth gave %r, want []' % (forged,))

    attempted = proxy.wait_rejected(1, 40)
    common.check('delivery_attempted', attempted, 'the node never tried to push the result')
    gone = common.wait_until(lambda: uid not in (lc.raw_request(c, b'JOBS:', lc.compute_req(c)) or []), 5, step=0.3)
    common.check('jobs_empty_after_finish', gone,
                 'JOBS still lists the finished job: %r' % (lc.raw_request(c, b'JOBS:', lc.compute_req(c)),))

    if check_pending:
        listed = common.wait_until(lambda: uid in (pending_done(c) or []), 5, step=0.3)
        r = pending(c)
        common.check('pending_lists_saved', listed and isinstance(r.get('pending'), int),
                     'PENDING_JOBS reply %r, want {"done": [.. %r ..], "pending": int}' % (r, uid))
    else:
        time.sleep(1)

    bad = lc.raw_request(c, b'RETRIEVE_JOB:', lc.compute_req(c, uid=uid, hash='0' * len(jhash)))
    common.check('retrieve_wrong_hash_refused', not is_reply(bad),
                 'RETRIEVE_JOB with a wrong hash returned %r' % (getattr(bad, '__dict__', bad),))

    # retrieve without acknowledging: the node must keep it
    reply, sock = lc.raw_request(c, b'RETRIEVE_JOB:', lc.compute_req(c, uid=uid, hash=jhash), keep=True)
    sock.close()
    common.check('retrieve_reply', is_reply(reply) and reply.uid == uid and reply.hash == jhash,
                 'RETRIEVE_JOB returned %r' % (getattr(reply, '__dict__', reply),))
    time.sleep(1)
    if check_pending:
        common.check('kept_without_ack', uid in (pending_done(c) or []),
                     'after a RETRIEVE_JOB that was not ACKed, PENDING_JOBS says %r' % (pending(c),))

    # retrieve again (it was kept) and acknowledge
    reply, sock = lc.raw_request(c, b'RETRIEVE_JOB:', lc.compute_req(c, uid=uid, hash=jhash), keep=True)
    common.check('retrieve_again_before_ack', is_reply(reply) and reply.uid == uid,
                 'a RETRIEVE_JOB after one that was not ACKed returned %r' % (getattr(reply, '__dict__', reply),))
    try:
        sock.send_msg(b'ACK')
    except Exception as exc:
        common.info('ack_error', repr(exc))
    sock.close()
    ok = is_reply(reply)
    common.check_eq('retrieve_status', common.status_name(reply.status) if ok else repr(reply),
                    common.status_name(dispy.DispyJob.Finished))
    try:
        value = pickle.loads(reply.result) if ok else None
    except Exception as exc:
        value = 'unpickling failed: %r' % exc
    common.check_eq('retrieve_result', value, ('answer', 70))
    common.check_eq('retrieve_ip_addr', reply.ip_addr if ok else None, lc.HOST)
    if check_pending:
        def cleared_now():
            done = pending_done(c)
            return done is not None and uid not in done
        cleared = common.wait_until(cleared_now, 5, step=0.3)
        common.check('pending_cleared_after_ack', cleared,
                     'PENDING_JOBS after the ACK: %r' % (pending(c),))
    else:
        time.sleep(1)
    again = lc.raw_request(c, b'RETRIEVE_JOB:', lc.compute_req(c, uid=uid, hash=jhash))
    common.check('retrieve_again_nothing', not is_reply(again),
                 'a second RETRIEVE_JOB after the ACK returned %r' % (getattr(again, '__dict__', again),))

    # reachable again: another job's reply goes through; the acknowledged
    # result must not be pushed again
    if check_pending:
        proxy.set_mode('forward')
        job2 = common.submit(c, 8, 0)
        ok2 = common.wait_job(job2, 30)
        common.check('second_job', ok2 and job2.result == ('answer', 80),
                     '%s %r' % (common.status_name(job2.status), job2.result))
        time.sleep(3)
        common.check('not_resent_after_ack', not job.finish.is_set(),
                     'the acknowledged result was pushed again: %s %r' %
                     (common.status_name(job.status), job.result))
    # job 1 stays pending in this client (it never saw the reply): close
    # with terminate and a short wait
    common.check('closed', c.close(timeout=2, terminate=True), 'close failed')
    common.finish()
