"""Confinement probes (issue 4): function jobs that try a forbidden thing
and report the errno name ('ok' when it worked), run by the stock client.

argv: PORT SPEC_JSON

SPEC_JSON is a file written by the Rust test:
  {"probes": [[name, kind, arg, want], ...],
   "other": null | {"file": NAME, "content": TEXT}}

kind is one of (see probe() below): write, read, list, kill0, kill,
abstract, connect_self.  `arg` may contain "{other_dir}" and "{other_pid}":
the directory and the job's pid of the second computation (see below),
learnt at run time.

With "other", a second computation runs in the same client at the same
time: the stock client shares one scheduler (dispy's _Cluster is a
singleton) between the JobClusters of a process, so the node accepts both
(same scheduler address).  Computation B is created first, with the file
NAME (content TEXT) as a depends file; its one job reads that file from its
own directory (proving it is there and readable by its owner), reports its
cwd and pid as a provisional result and stays running while computation A's probes
run.  Then B's job is cancelled and both computations are closed.

For each probe: CHECK <name> ok when the job's answer equals `want`.
Afterwards a normal job runs on the same node (CHECK normal_job), then the
clusters are closed (CHECK closed).
"""
import json
import sys

import common
import dispy


def probe(kind, arg):
    """Tries one thing; returns 'ok' or the errno name of the refusal."""
    import errno
    import os
    import signal
    import socket
    try:
        if kind == 'write':
            with open(arg, 'w') as fd:
                fd.write('escaped\n')
        elif kind == 'read':
            with open(arg, 'rb') as fd:
                fd.read()
        elif kind == 'list':
            os.listdir(arg)
        elif kind == 'kill0':
            os.kill(int(arg), 0)
        elif kind == 'kill':
            os.kill(int(arg), signal.SIGTERM)
        elif kind == 'abstract':
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(10)
            try:
                sock.connect('\0' + arg)
            finally:
                sock.close()
        elif kind == 'connect_self':
            # control: an abstract socket of the job's own is reachable
            name = '\0dispynode-probe-self-%d' % os.getpid()
            srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            cli = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                srv.bind(name)
                srv.listen(1)
                cli.connect(name)
            finally:
                cli.close()
                srv.close()
        elif kind == 'square':
            return int(arg) * int(arg)
        else:
            return 'unknown probe kind %r' % kind
        return 'ok'
    except OSError as exc:
        return errno.errorcode.get(exc.errno, 'errno %s' % exc.errno)


def hold(name, seconds):
    """Computation B's job: read our own file, tell where we are, stay running."""
    import os
    import time
    with open(name) as fd:
        data = fd.read()
    dispy_provisional_result((os.getcwd(), data, os.getpid()))  # noqa: F821 (from the node)
    time.sleep(seconds)
    return 'held'


def main():
    with open(common.arg(2)) as fd:
        spec = json.load(fd)
    other = spec.get('other')
    cluster_b = job_b = None
    other_dir = '/nonexistent-other-computation'
    other_pid = '0'
    if other:
        with open(other['file'], 'w') as fd:
            fd.write(other['content'])
        cluster_b = common.cluster(hold, depends=[other['file']])
        job_b = common.submit(cluster_b, other['file'], 120)
        running = common.wait_until(
            lambda: job_b.status == dispy.DispyJob.ProvisionalResult, 40)
        got = job_b.result if running else None
        ok = isinstance(got, tuple) and got[1] == other['content']
        common.check('other_running', ok, 'status %s, result %r, exception %r' % (
            common.status_name(job_b.status), got, job_b.exception))
        if ok:
            other_dir, other_pid = got[0], str(got[2])
        common.info('other_dir', other_dir)
        common.info('other_pid', other_pid)

    cluster_a = common.cluster(probe)
    jobs = []
    for name, kind, arg, want in spec['probes']:
        arg = arg.replace('{other_dir}', other_dir).replace('{other_pid}', other_pid)
        jobs.append((name, kind, arg, want, common.submit(cluster_a, kind, arg)))
    for name, kind, arg, want, job in jobs:
        if not common.wait_job(job, 60):
            common.check(name, False, 'no reply; status %s' % common.status_name(job.status))
            continue
        common.info('probe_%s' % name, '%s %s -> %r (exception %r)' % (
            kind, arg, job.result, job.exception))
        common.check(name, job.status == dispy.DispyJob.Finished and job.result == want,
                     '%s %s: got %r (%s, exception %r), want %r' % (
                         kind, arg, job.result, common.status_name(job.status),
                         job.exception, want))

    if job_b is not None:
        still = job_b.status == dispy.DispyJob.ProvisionalResult
        common.check('other_still_running', still, common.status_name(job_b.status))
        cluster_b.cancel(job_b)
        common.wait_job(job_b, 20)

    normal = [common.submit(cluster_a, 'square', str(n)) for n in (3, 4)]
    done = all(common.wait_job(j, 60) for j in normal)
    common.check('normal_job', done and [j.result for j in normal] == [9, 16],
                 [(common.status_name(j.status), j.result, j.exception) for j in normal])
    closed = common.close(cluster_a)
    if cluster_b is not None:
        closed = common.close(cluster_b) and closed
    common.check('closed', closed, 'close reported pending jobs')
    common.finish()


if __name__ == '__main__':
    sys.exit(main())
