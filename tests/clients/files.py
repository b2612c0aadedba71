"""A computation that leaves files in its directory: a depends file and a
file the job writes.  The script reports the directory (INFO dest_dir) and
exits after close; the harness then checks from outside whether the
directory was removed (default cleanup=True) or kept (cleanup=False).

argv: PORT DEST_PATH|- clean|keep
"""
import os

import common
import dispy


def compute(n):
    import os
    with open('job_output_%s.txt' % n, 'w') as fd:
        fd.write('output of job %s\n' % n)
    with open('data.txt') as fd:
        data = fd.read()
    return (os.getcwd(), data)


if __name__ == '__main__':
    dest = common.arg(2, '-')
    keep = common.arg(3, 'clean') == 'keep'
    with open('data.txt', 'w') as fd:
        fd.write('some data\n')
    kw = {}
    if dest != '-':
        kw['dest_path'] = dest
    if keep:
        kw['cleanup'] = False
    c = common.cluster(compute, depends=['data.txt'], **kw)
    jobs = [common.submit(c, 1), common.submit(c, 2)]
    ok = all(common.wait_job(j, 60) for j in jobs)
    common.check('replied', ok, [common.status_name(j.status) for j in jobs])
    fin = common.status_name(dispy.DispyJob.Finished)
    common.check_eq('status', [(common.status_name(j.status), j.exception) for j in jobs], [(fin, None)] * 2)
    cwd = jobs[0].result[0] if isinstance(jobs[0].result, tuple) else ''
    common.check_eq('same_dir', jobs[1].result[0] if isinstance(jobs[1].result, tuple) else None, cwd)
    common.check_eq('data', [j.result[1] if isinstance(j.result, tuple) else None for j in jobs],
                    ['some data\n'] * 2)
    common.info('dest_dir', cwd)
    # The node may keep a private TMPDIR of the jobs ('.tmp') in the computation directory.
    listing = sorted(f for f in os.listdir(cwd) if f != '.tmp') if os.path.isdir(cwd) else None
    common.check_eq('files_before_close', listing, ['data.txt', 'job_output_1.txt', 'job_output_2.txt'])
    common.check('closed', common.close(c), 'close reported pending jobs')
    common.finish()
