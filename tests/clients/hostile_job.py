"""The normal job after each abuse in tests/hostile.rs: a few short function
jobs with the stock client; every one must finish with the right result.

argv: PORT [NJOBS] [SECRET] [TAG]
"""
import common
import dispy


def compute(n, tag):
    return (n * n, tag)


if __name__ == '__main__':
    njobs = int(common.arg(2, '4'))
    secret = common.arg(3, '')
    tag = common.arg(4, 'after')
    c = common.cluster(compute, secret=secret)
    jobs = [common.submit(c, i, tag) for i in range(njobs)]
    done = [common.wait_job(j, 60) for j in jobs]
    common.check('replied', all(done), [common.status_name(j.status) for j in jobs])
    bad = [(i, common.status_name(j.status), j.exception) for i, j in enumerate(jobs)
           if j.status != dispy.DispyJob.Finished]
    common.check('finished', not bad, 'not finished: %r' % bad[:5])
    wrong = [(i, j.result) for i, j in enumerate(jobs) if j.result != (i * i, tag)]
    common.check('results', not wrong, 'wrong results: %r' % wrong[:5])
    common.check('closed', common.close(c), 'close reported pending jobs')
    common.finish()
