"""Jobs on a node with delegated cgroups: each in a job cgroup of its own, below the
computation's, both when jobs come back to back and when they come one at a time (then every
job should find a spare that was placed ahead: tests/delegation.rs).

argv: PORT [NJOBS] [NSPORADIC]
"""
import time

import common
import dispy


def where(n):
    import time
    time.sleep((n % 3) * 0.01)
    with open('/proc/self/cgroup') as fd:
        return [line[3:].strip() for line in fd if line.startswith('0::')][0]


if __name__ == '__main__':
    njobs = int(common.arg(2, '30'))
    nsporadic = int(common.arg(3, '5'))
    c = common.cluster(where)
    jobs = [common.submit(c, i) for i in range(njobs)]
    done = [common.wait_job(j, 60) for j in jobs]
    for i in range(nsporadic):
        time.sleep(0.2)  # the spares are placed meanwhile
        j = common.submit(c, njobs + i)
        done.append(common.wait_job(j, 60))
        jobs.append(j)
    common.check('all_replied', all(done), '%d of %d' % (sum(done), len(done)))
    bad = [(common.status_name(j.status), j.exception) for j in jobs if j.status != dispy.DispyJob.Finished]
    common.check('all_finished', not bad, 'not finished: %r' % bad[:3])
    paths = [j.result for j in jobs if isinstance(j.result, str)]
    common.check_eq('distinct_cgroups', len(set(paths)), len(jobs))
    parents = sorted(set(p.rsplit('/', 1)[0] for p in paths))
    common.check('one_computation', len(parents) == 1 and '/jobs/' in parents[0], repr(parents))
    # s<n>: a spare moved into its cgroup before its job came; f<id>: a child held until the
    # daemon had moved it (jobs that came faster than spares were placed)
    leaves = [p.rsplit('/', 1)[1] for p in paths]
    late = [x for x in leaves[njobs:] if not x.startswith('s')]
    common.check('one_at_a_time_placed_ahead', not late, 'leaves %r' % leaves[njobs:])
    common.info('leaves', ' '.join(leaves))
    common.info('computation', parents[0] if parents else '')
    common.check('closed', common.close(c), 'close reported pending jobs')
    common.finish()
