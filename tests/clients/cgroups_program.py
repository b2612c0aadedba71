"""Program jobs on a node with delegated cgroups: each in a job cgroup of its own (j<id>),
below the computation's, back to back and one at a time (tests/delegation.rs).

argv: PORT [NJOBS] [NSPORADIC]
"""
import os
import time

import common
import dispy

PROG = r'''#!/bin/sh
sed -n 's/^0:://p' /proc/self/cgroup
'''


if __name__ == '__main__':
    njobs = int(common.arg(2, '20'))
    nsporadic = int(common.arg(3, '3'))
    with open('where.sh', 'w') as fd:
        fd.write(PROG)
    os.chmod('where.sh', 0o755)
    c = common.cluster(os.path.abspath('where.sh'))
    jobs = [common.submit(c, i) for i in range(njobs)]
    done = [common.wait_job(j, 60) for j in jobs]
    for i in range(nsporadic):
        time.sleep(0.1)
        j = common.submit(c, njobs + i)
        done.append(common.wait_job(j, 60))
        jobs.append(j)
    common.check('all_replied', all(done), '%d of %d' % (sum(done), len(done)))
    bad = [(common.status_name(j.status), j.result, j.stderr) for j in jobs
           if j.status != dispy.DispyJob.Finished or j.result != 0]
    common.check('all_exited_0', not bad, 'not finished or failed: %r' % bad[:3])
    paths = [(j.stdout or b'').decode().strip() for j in jobs]
    common.check_eq('distinct_cgroups', len(set(p for p in paths if p)), len(jobs))
    parents = sorted(set(p.rsplit('/', 1)[0] for p in paths))
    common.check('one_computation', len(parents) == 1 and '/jobs/' in parents[0], repr(parents))
    leaves = [p.rsplit('/', 1)[-1] for p in paths]
    common.check('job_leaves', all(x.startswith('j') for x in leaves), repr(leaves[:5]))
    common.info('computation', parents[0] if parents else '')
    common.check('closed', common.close(c), 'close reported pending jobs')
    common.finish()
