"""depends = a class, a function, a data file, a file in a subdirectory and a file of
several 1 024 000-byte transfer chunks (its last one short),
plus dest_path and per-job depends.  The job reads the files from its cwd
(the computation's directory on the node); the client (same machine) also
looks at that directory while the computation is still open.

argv: PORT DEST_PATH
prints INFO dest_dir=<the job's cwd>
"""
import hashlib
import os
import time

import common
import dispy


class Helper(object):
    def __init__(self, k):
        self.k = k

    def mul(self, x):
        return self.k * x


def helper_func(x):
    return x + 1000


def compute(n):
    import hashlib
    import os
    import stat
    import time
    with open('data.txt') as fd:
        data = fd.read()
    with open(os.path.join('sub', 'subdata.txt')) as fd:
        sub = fd.read()
    jobdep = None
    if n == 2:
        # per-job depends of job 1 must be removed after job 1's reply; the
        # reference removes it just after sending the reply, so allow a moment
        for _ in range(100):
            if not os.path.exists('jobdep.txt'):
                break
            time.sleep(0.05)
    if os.path.exists('jobdep.txt'):
        with open('jobdep.txt') as fd:
            jobdep = fd.read()
    with open('big.bin', 'rb') as fd:
        big = hashlib.sha256(fd.read()).hexdigest()
    st = os.stat('data.txt')
    return {'n': n, 'mul': Helper(3).mul(n), 'func': helper_func(n), 'data': data, 'sub': sub,
            'jobdep': jobdep, 'big': big, 'cwd': os.getcwd(), 'job_path': dispy_job_path,
            'node_ip': dispy_node_ip_addr, 'has_name': isinstance(dispy_node_name, str),
            'mode': stat.S_IMODE(st.st_mode), 'mtime': st.st_mtime,
            'listing': sorted(os.listdir('.'))}


if __name__ == '__main__':
    dest = common.arg(2)
    with open('data.txt', 'w') as fd:
        fd.write('line1\nline2\n')
    os.chmod('data.txt', 0o640)
    mtime = time.time() - 3600
    os.utime('data.txt', (mtime, mtime))
    os.mkdir('sub')
    with open(os.path.join('sub', 'subdata.txt'), 'w') as fd:
        fd.write('subfile\n')
    with open('jobdep.txt', 'w') as fd:
        fd.write('per-job dependency\n')
    big = os.urandom(3 * 1024000 + 12345)
    with open('big.bin', 'wb') as fd:
        fd.write(big)

    c = common.cluster(compute, depends=[Helper, helper_func, 'data.txt', 'sub/subdata.txt', 'big.bin'],
                       dest_path=dest)
    j1 = common.submit(c, 1, dispy_job_depends=['jobdep.txt'])
    common.check('replied', common.wait_job(j1, 60), common.status_name(j1.status))
    j2 = common.submit(c, 2)
    common.check('replied2', common.wait_job(j2, 60), common.status_name(j2.status))
    fin = common.status_name(dispy.DispyJob.Finished)
    common.check_eq('status', (common.status_name(j1.status), common.status_name(j2.status), j1.exception),
                    (fin, fin, None))
    r = j1.result if isinstance(j1.result, dict) else {}
    common.check_eq('class_dep', r.get('mul'), 3)
    common.check_eq('func_dep', r.get('func'), 1001)
    common.check_eq('file_dep', r.get('data'), 'line1\nline2\n')
    common.check_eq('subdir_file_dep', r.get('sub'), 'subfile\n')
    common.check_eq('job_dep', r.get('jobdep'), 'per-job dependency\n')
    common.check_eq('multi_chunk_dep', r.get('big'), hashlib.sha256(big).hexdigest())
    common.check_eq('file_mode_kept', oct(r.get('mode') or 0), oct(0o640))
    common.check('file_mtime_kept', abs((r.get('mtime') or 0) - mtime) <= 1,
                 'got %r want %r' % (r.get('mtime'), mtime))
    cwd = r.get('cwd') or ''
    info_dest = cwd
    common.info('dest_dir', info_dest)
    common.check_eq('dest_path_name', os.path.basename(cwd), dest)
    common.check_eq('job_path_is_cwd', r.get('job_path'), cwd)
    common.check_eq('node_globals', (r.get('node_ip'), r.get('has_name')), ('127.0.0.1', True))
    common.check('listing', {'data.txt', 'sub'} <= set(r.get('listing') or []), r.get('listing'))
    # the client runs on the node's machine: look at the directory while the
    # computation is still registered
    common.check('files_on_node_disk',
                 os.path.isfile(os.path.join(cwd, 'data.txt')) and
                 os.path.isfile(os.path.join(cwd, 'sub', 'subdata.txt')),
                 'listing %r' % (os.listdir(cwd) if os.path.isdir(cwd) else 'no dir'))
    # per-job depends are removed after the job that needed them
    r2 = j2.result if isinstance(j2.result, dict) else {}
    common.check_eq('job_dep_removed_after_job', r2.get('jobdep'), None)
    common.check_eq('second_job_same_dir', r2.get('cwd'), cwd)
    common.check('closed', common.close(c), 'close reported pending jobs')
    common.finish()
