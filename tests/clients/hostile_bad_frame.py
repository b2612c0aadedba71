"""A job that breaks its worker's stream to the daemon: it writes a frame header announcing
a 4 GiB message into every pipe it can write to (its worker's stream among them). The node
must stop that worker rather than keep running jobs nobody hears of: the job ends
Terminated, the computation's next job ends Terminated too (no worker), and the client's
close is answered. The harness then runs a normal client: the node is free again.

argv: PORT
"""
import common
import dispy


def breaker():
    import struct
    import time

    written = write_to_writable_pipes(struct.pack('>L', 0xFFFFFFF0))
    time.sleep(5)  # the worker is stopped meanwhile, and this job with it
    return written


def plain(n):
    return n


if __name__ == '__main__':
    c = common.cluster(breaker, depends=[common.write_to_writable_pipes])
    job = common.submit(c)
    common.check_eq('breaker_terminated', common.wait_job(job, 30) and job.status,
                    dispy.DispyJob.Terminated)
    common.info('breaker', '%s %r %r' % (common.status_name(job.status), job.result,
                                         job.exception))
    after = common.submit(c)
    common.check_eq('next_job_terminated', common.wait_job(after, 30) and after.status,
                    dispy.DispyJob.Terminated)
    common.info('next', '%s %r' % (common.status_name(after.status), after.exception))
    common.check('closed', common.close(c, 20) is not None, 'close')
    common.finish()
