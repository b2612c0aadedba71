"""A job that leaves a very deep directory tree in its computation directory
(cleanup=True): the node removes that directory at close and must survive
doing so.  The harness checks the node is alive and the tree gone.

argv: PORT DEPTH
"""
import common
import dispy


def deep(depth):
    import os
    top = os.getcwd()
    fd = os.open('.', os.O_RDONLY)
    for _ in range(depth):
        os.mkdir('d')
        os.chdir('d')
    os.chdir(top)
    os.close(fd)
    return top


if __name__ == '__main__':
    depth = int(common.arg(2, '20000'))
    c = common.cluster(deep)
    job = common.submit(c, depth)
    common.check('replied', common.wait_job(job, 60), common.status_name(job.status))
    common.check_eq('finished', (common.status_name(job.status), job.exception),
                    (common.status_name(dispy.DispyJob.Finished), None))
    common.info('dest_dir', job.result)
    common.check('closed', common.close(c), 'close reported pending jobs')
    common.finish()
