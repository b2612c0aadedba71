"""Real cgroup limits (issue 4): a fork bomb stopped by pids.max and a memory
hog killed by memory.max, both reported Terminated with the reason in
job.exception; the node goes on serving.  Needs a node with a delegated
cgroup v2 tree and --job_pids_max 64 --job_memory_max 64m (tests/vm/).

argv: PORT [MEMORY_MB]
  MEMORY_MB: how much the hog tries to touch (default 512).

CHECKs:
  cgroup_placement  a job's /proc/self/cgroup is a leaf below <unit>/jobs/
                    (if not, the bomb and the hog are not run: their CHECKs fail)
  bomb_replied, bomb_status (Terminated), bomb_reason ("pids limit" in the
                    exception)
  hog_replied, hog_status (Terminated), hog_reason ("memory limit")
  normal_job        jobs after both still run and return the right result
  closed
INFO lines: each job's status, result and exception.
"""
import common
import dispy


def work(kind, arg):
    import os
    import time
    if kind == 'cgroup':
        with open('/proc/self/cgroup') as fd:
            return fd.read().strip()
    if kind == 'bomb':
        # Every process forks on for ever; the job's own process stops after `arg`
        # refused forks (EAGAIN from pids.max) and returns: the node must then report
        # the limit and kill whatever is left of the bomb with the cgroup.
        refused, forked = 0, 0
        deadline = time.time() + 60
        while refused < int(arg) and time.time() < deadline:
            try:
                pid = os.fork()
            except OSError:
                refused += 1
                time.sleep(0.01)
                continue
            if pid == 0:
                while True:
                    try:
                        os.fork()
                    except OSError:
                        time.sleep(0.05)
            forked += 1
        return ('bomb', forked, refused)
    if kind == 'hog':
        chunks = []
        for _ in range(int(arg)):
            chunks.append(b'\x01' * (1 << 20))  # touched: really resident
        return ('hog survived', len(chunks))
    if kind == 'square':
        return int(arg) * int(arg)
    return 'unknown kind %r' % kind


def run(c, kind, arg, timeout=120):
    job = common.submit(c, kind, arg)
    replied = common.wait_job(job, timeout)
    common.info('%s_job' % kind, '%s result=%r exception=%r' % (
        common.status_name(job.status), job.result, job.exception))
    return replied, job


def check_limit(c, kind, arg, reason):
    replied, job = run(c, kind, arg)
    common.check('%s_replied' % kind, replied, common.status_name(job.status))
    common.check_eq('%s_status' % kind, common.status_name(job.status),
                    common.status_name(dispy.DispyJob.Terminated))
    common.check('%s_reason' % kind, reason in (job.exception or ''),
                 'exception %r, result %r' % (job.exception, job.result))


def main():
    hog_mb = int(common.arg(2, '512'))
    c = common.cluster(work)
    replied, job = run(c, 'cgroup', '')
    placed = replied and isinstance(job.result, str) and '/jobs/' in job.result
    common.check('cgroup_placement', placed, 'result %r, exception %r' % (
        job.result, job.exception))
    if placed:
        check_limit(c, 'bomb', '20', 'pids limit')
        check_limit(c, 'hog', str(hog_mb), 'memory limit')
    else:
        # Without its own cgroup the bomb would run into the unit's TasksMax, shared with
        # the daemon, and wedge the node (seen): fail these checks without running them.
        for kind in ('bomb', 'hog'):
            for what in ('replied', 'status', 'reason'):
                common.check('%s_%s' % (kind, what), False,
                             'not run: the job is not in a cgroup of its own')
    normal = [common.submit(c, 'square', str(n)) for n in (5, 6)]
    done = all(common.wait_job(j, 120) for j in normal)
    common.check('normal_job', done and [j.result for j in normal] == [25, 36],
                 [(common.status_name(j.status), j.result, j.exception) for j in normal])
    common.check('closed', common.close(c, timeout=60), 'close reported pending jobs')
    common.finish()


if __name__ == '__main__':
    main()
