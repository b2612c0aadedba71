"""Many short function jobs on a node with 2 CPUs: results right and in order.
(Also used by tests/systemd.rs, which lists its CHECK names: keep them.)

argv: PORT [NJOBS] [TAG]
"""
import common
import dispy


def compute(n, k=1):
    import os
    import time
    time.sleep((n % 5) * 0.02)
    return (n * n * k, 'job-%s' % n, os.getcwd())


if __name__ == '__main__':
    njobs = int(common.arg(2, '40'))
    tag = common.arg(3, 'run')
    c = common.cluster(compute)
    jobs = []
    for i in range(njobs):
        job = common.submit(c, i, k=3)
        job.id = i
        jobs.append(job)
    done = [common.wait_job(j, 60) for j in jobs]
    common.check('all_replied', all(done), 'unfinished ids %s' % [j.id for j, d in zip(jobs, done) if not d])
    bad = [(j.id, common.status_name(j.status), j.exception) for j in jobs if j.status != dispy.DispyJob.Finished]
    common.check('all_finished', not bad, 'not finished: %r' % bad[:5])
    wrong = [(j.id, j.result) for j in jobs
             if not isinstance(j.result, tuple) or j.result[:2] != (j.id * j.id * 3, 'job-%s' % j.id)]
    common.check('results_in_order', not wrong, 'wrong results: %r' % wrong[:5])
    # where the jobs ran (INFO only: other test files list this script's
    # CHECK names): lets the harness check it was this test's node
    cwds = sorted(set(j.result[2] for j in jobs if isinstance(j.result, tuple) and len(j.result) > 2))
    common.info('dest_dir', cwds[0] if len(cwds) == 1 else 'NOT ONE DIRECTORY: %r' % cwds)
    ips = sorted(set(j.ip_addr for j in jobs))
    common.check_eq('ip_addr', ips, ['127.0.0.1'])
    outs = sorted(set((j.stdout, j.stderr, j.exception) for j in jobs))
    common.check_eq('empty_output', outs, [('', '', None)])
    st = c.status()
    node_cpus = [(n.ip_addr, n.cpus) for n in st.nodes]
    common.check_eq('node_cpus', node_cpus, [('127.0.0.1', 2)])
    jobs_done = [n.jobs_done for n in st.nodes]
    common.check_eq('jobs_done', jobs_done, [njobs])
    common.check('closed', common.close(c), 'close reported pending jobs')
    common.info('tag', tag)
    common.finish()
