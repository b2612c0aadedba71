"""dispy_send_file from a job: files larger than one 1 024 000-byte chunk
arrive in the client's cwd (including a file in a subdirectory of the job's
cwd), with the content the job computed.

argv: PORT
"""
import hashlib
import os

import common
import dispy


def compute(size, name):
    import hashlib
    import os
    d = os.path.dirname(name)
    if d and not os.path.isdir(d):
        os.makedirs(d)
    data = (hashlib.sha256(name.encode()).digest() * (size // 32 + 1))[:size - 17] + os.urandom(17)
    with open(name, 'wb') as fd:
        fd.write(data)
    rc = dispy_send_file(name)
    return (rc, len(data), hashlib.sha256(data).hexdigest())


if __name__ == '__main__':
    c = common.cluster(compute, depends=[])
    specs = [(2500000, 'big.bin'), (1024000, 'exact_chunk.bin'), (3000, os.path.join('outdir', 'small.bin'))]
    jobs = [common.submit(c, size, name) for size, name in specs]
    ok = all(common.wait_job(j, 60) for j in jobs)
    common.check('replied', ok, [common.status_name(j.status) for j in jobs])
    fin = common.status_name(dispy.DispyJob.Finished)
    common.check_eq('status', [(common.status_name(j.status), j.exception) for j in jobs], [(fin, None)] * 3)
    for (size, name), j, check in zip(specs, jobs, ('big', 'exact_chunk', 'subdir')):
        r = j.result if isinstance(j.result, tuple) else (None, None, None)
        common.check_eq('%s_send_rc' % check, r[0], 0)
        got = None
        if os.path.isfile(name):
            with open(name, 'rb') as fd:
                data = fd.read()
            got = (len(data), hashlib.sha256(data).hexdigest())
        common.check_eq('%s_received' % check, got, (size, r[2]))
    common.check('closed', common.close(c), 'close reported pending jobs')
    common.finish()
