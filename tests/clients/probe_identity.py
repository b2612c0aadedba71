"""Who a function job runs as (issue 4): the job returns the lines of its
own /proc/self/status that tell its identity and privileges.

argv: PORT

CHECKs: replied, status (Finished), closed.
INFO job_<Field>=<value> for Uid, Gid, Groups, CapInh, CapPrm, CapEff,
CapBnd, CapAmb, NoNewPrivs, Seccomp (the Rust test asserts on them), and
INFO job_pid.
"""
import common
import dispy

FIELDS = ('Uid', 'Gid', 'Groups', 'CapInh', 'CapPrm', 'CapEff', 'CapBnd', 'CapAmb',
          'NoNewPrivs')


def identity(fields):
    import os
    out = {'pid': str(os.getpid())}
    with open('/proc/self/status') as fd:
        for line in fd:
            key, _, value = line.partition(':')
            if key in fields:
                out[key] = ' '.join(value.split())
    return out


def main():
    c = common.cluster(identity)
    job = common.submit(c, FIELDS)
    replied = common.wait_job(job, 60)
    common.check('replied', replied, common.status_name(job.status))
    common.check('status', job.status == dispy.DispyJob.Finished and isinstance(job.result, dict),
                 '%s %r %r' % (common.status_name(job.status), job.result, job.exception))
    if isinstance(job.result, dict):
        for key, value in sorted(job.result.items()):
            common.info('job_%s' % key, value)
    common.check('closed', common.close(c), 'close reported pending jobs')
    common.finish()


if __name__ == '__main__':
    main()
