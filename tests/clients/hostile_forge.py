"""Two computations of one client: a job of the second writes forged ``done`` and
``started`` messages for every job id it can guess into every pipe it can write
to (its worker's stream to the daemon among them).  The first computation's job
must still get its own result.

argv: PORT
"""
import common
import dispy


def slow(seconds):
    import time
    time.sleep(seconds)
    return 'real'


def forge(first, last):
    import json
    import pickle
    import struct

    def frame(header, blob=b''):
        h = json.dumps(header).encode()
        return struct.pack('>L', len(h)) + h + struct.pack('>L', len(blob)) + blob

    blob = pickle.dumps('forged', 4)
    frames = b''.join(frame({'ev': 'started', 'id': i, 'pid': 1})
                      + frame({'ev': 'done', 'id': i, 'status': 9, 'stdout': '', 'stderr': '',
                               'exception': 'job killed: forged'}, blob)
                      for i in range(first, last))
    return write_to_writable_pipes(frames)


if __name__ == '__main__':
    victim = common.cluster(slow)
    forger = common.cluster(forge, depends=[common.write_to_writable_pipes])
    job = common.submit(victim, 3)
    common.check('victim_running', common.wait_until(
        lambda: job.status == dispy.DispyJob.Running, 20), common.status_name(job.status))
    attack = common.submit(forger, 1, 100)
    common.check('forger_replied', common.wait_job(attack, 30), common.status_name(attack.status))
    common.info('forger', '%s %r' % (common.status_name(attack.status), attack.result))
    common.check('victim_replied', common.wait_job(job, 30), common.status_name(job.status))
    common.check_eq('victim_result', (common.status_name(job.status), job.result),
                    (common.status_name(dispy.DispyJob.Finished), 'real'))
    common.close(forger)
    common.check('closed', common.close(victim), 'close reported pending jobs')
    common.finish()
