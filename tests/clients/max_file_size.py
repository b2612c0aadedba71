"""Node started with --max_file_size 10k (10240 bytes).

mode too_big:   a depends file of 20000 bytes: the node refuses the
                computation, so the client gets no node and no job runs.
mode send_back: a 5000-byte depends file is accepted; dispy_send_file of a
                20000-byte file returns -1 (not sent), of 5000 bytes 0.

argv: PORT too_big|send_back
"""
import os

import common
import dispy


def compute(size):
    import os
    name = 'made_%s.bin' % size
    with open(name, 'wb') as fd:
        fd.write(os.urandom(size))
    return (dispy_send_file(name), os.path.getsize('dep.bin'))


if __name__ == '__main__':
    mode = common.arg(2)
    if mode == 'too_big':
        with open('dep.bin', 'wb') as fd:
            fd.write(os.urandom(20000))
        c = common.cluster(compute, depends=['dep.bin'])
        job = common.submit(c, 10)
        finished = common.wait_job(job, 10)
        common.check('no_reply', not finished, 'job finished: %s %r' % (common.status_name(job.status), job.result))
        common.check_eq('not_run', common.status_name(job.status), common.status_name(dispy.DispyJob.Created))
        common.close(c, timeout=2)
    else:
        with open('dep.bin', 'wb') as fd:
            fd.write(os.urandom(5000))
        c = common.cluster(compute, depends=['dep.bin'])
        big, small = common.submit(c, 20000), common.submit(c, 5000)
        ok = all(common.wait_job(j, 60) for j in (big, small))
        common.check('replied', ok, [common.status_name(j.status) for j in (big, small)])
        fin = common.status_name(dispy.DispyJob.Finished)
        common.check_eq('status', [common.status_name(j.status) for j in (big, small)], [fin, fin])
        common.check_eq('big_refused', big.result, (-1, 5000))
        common.check_eq('small_sent', small.result, (0, 5000))
        common.check_eq('client_files', (os.path.exists('made_20000.bin'), os.path.getsize('made_5000.bin')
                                         if os.path.exists('made_5000.bin') else None), (False, 5000))
        common.check('closed', common.close(c), 'close reported pending jobs')
    common.finish()
