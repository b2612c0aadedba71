"""TLS: the node started with --certfile/--keyfile, the real client with the
same self-signed certificate (pycos: the server side presents it, the
client side requires the peer's certificate to chain to it, no host name
check).  Every connection is TLS in both directions: the job's provisional
result and its dispy_send_file go from the node to the client too.

argv: PORT CERTFILE KEYFILE
"""
import os

import common
import dispy
import life_common as lc


def compute(n):
    import os
    import time
    rc = dispy_provisional_result(('provisional', n))
    name = 'tls_out_%d.txt' % n
    with open(name, 'w') as fd:
        fd.write('sent over TLS by job %d\n' % n)
    src = dispy_send_file(name)
    time.sleep(0.5)
    return ('final', n, rc, src)


if __name__ == '__main__':
    port = common.port()
    certfile = os.path.abspath(common.arg(2))
    keyfile = os.path.abspath(common.arg(3))
    c = lc.cluster_at(compute, port, port - 1, depends=[], certfile=certfile, keyfile=keyfile)
    jobs = [common.submit(c, i) for i in (1, 2, 3)]
    replied = all(common.wait_job(j, 60) for j in jobs)
    common.check('replied', replied, [common.status_name(j.status) for j in jobs])
    fin = common.status_name(dispy.DispyJob.Finished)
    common.check_eq('statuses', [common.status_name(j.status) for j in jobs], [fin] * 3)
    common.check_eq('results', [j.result for j in jobs],
                    [('final', i, 0, 0) for i in (1, 2, 3)])
    got = {}
    for i in (1, 2, 3):
        try:
            with open('tls_out_%d.txt' % i) as fd:
                got[i] = fd.read()
        except OSError as exc:
            got[i] = repr(exc)
    common.check_eq('files_received', got, {i: 'sent over TLS by job %d\n' % i for i in (1, 2, 3)})
    common.check('closed', common.close(c), 'close reported pending jobs')
    common.finish()
