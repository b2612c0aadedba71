"""One benchmark workload, run by the stock dispy 4.15.2 client against one node.

    python client.py MODE PORT [PARAM]

MODE is one of
    jobs N          N trivial function jobs (def f(n): return n), submit all, wait all
    seq N           1 warm-up job, then N jobs one after the other (submit, wait, next)
    prog N          N program jobs (a tiny shell script echoing its argument)
    depends MIB     a MIB MiB file as `depends` (client -> node), then one trivial job
    sendfile MIB    one job writes MIB MiB into its cwd and sends it with dispy_send_file

The node listens on PORT, the client on PORT-1 (dispy_port).  Runs in a fresh
working directory (bench.py makes one).  Output, line by line on stdout:

    PROGRESS <jobs finished> <unix time>   every 0.5 s (bench.py's wedge detector)
    RESULT <json>                          once the workload is done and checked
    ERROR <text>                           when it failed (exit status 1)

Every job's result is checked; `lost` counts jobs without a final reply,
`wrong` jobs whose status or result is not what the job returns.  The client's
own CPU time over the timed window (resource.getrusage of this process, all
threads: dispy's pycos scheduler thread and the main thread) is reported so the
harness can tell when the client, not the node, is the bound.
"""

import faulthandler
import hashlib
import json
import os
import resource
import statistics
import sys
import threading
import time

# Hard watchdog: a client that hangs dumps its stacks and exits (bench.py also
# has a hard timeout and a wedge detector that kill the whole process group).
faulthandler.dump_traceback_later(float(os.environ.get('BENCH_CLIENT_WATCHDOG', '300')), exit=True)

import dispy  # noqa: E402

HOST = '127.0.0.1'
MIB = 1 << 20
DONE = [0]              # jobs finished so far (read by the progress thread)
XFERS = []              # (name, size, seconds, resp) of the client's file transfers to the node
T_START = time.time()
WAIT = float(os.environ.get('BENCH_CLIENT_WAIT', '240'))   # cap on every wait below


def out(line):
    sys.stdout.write(line + '\n')
    sys.stdout.flush()


def progress_thread():
    while True:
        out('PROGRESS %d %.3f' % (DONE[0], time.time()))
        time.sleep(0.5)


def cpu_now():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _timed_xfer_file():
    """Wrap dispy's client-side file transfer (a pycos coroutine: FILEXFER request,
    then 1 024 000-byte chunks, each acknowledged by the node) to time it exactly."""
    orig = dispy._Node.xfer_file

    def xfer_file(self, xf, task=None):
        t0, c0 = time.perf_counter(), cpu_now()
        resp = yield orig(self, xf, task=task)
        XFERS.append({'name': os.path.basename(xf.name), 'size': xf.stat_buf.st_size,
                      'seconds': time.perf_counter() - t0, 'resp': resp,
                      'client_cpu': cpu_now() - c0, 'end': time.time()})
        return resp
    dispy._Node.xfer_file = xfer_file


def make_cluster(computation, port, **kwargs):
    return dispy.JobCluster(computation, nodes=[(HOST, port)], host=HOST, dispy_port=port - 1,
                            loglevel=(dispy.logger.DEBUG if os.environ.get("BENCH_CLIENT_DEBUG") else dispy.logger.WARNING), **kwargs)


SUBMIT_RECOVERED = [0]
_LAST_JOB = [None]
_orig_job_init = dispy._DispyJob_.__init__


def _recording_job_init(self, *args, **kwargs):
    _orig_job_init(self, *args, **kwargs)
    _LAST_JOB[0] = self.job     # the user's DispyJob (dispy clears _DispyJob_.job when done)


dispy._DispyJob_.__init__ = _recording_job_init


def submit(cluster, *args):
    """cluster.submit, robust to a race in dispy 4.15.2 / pycos 4.12.2: submit() runs
    the scheduler's submit_job as a pycos Task and returns Task.value(); when that task
    has already finished before value() is called (seen with nodes that answer within a
    few hundred microseconds), pycos logs 'task ... is not suitable for "value"' and
    value() returns None, so submit() returns None although the job WAS queued.  The job
    object is then taken from the _DispyJob_ just created (counted as
    `submit_recovered`; a job that was not really queued would show up as lost)."""
    _LAST_JOB[0] = None
    job = cluster.submit(*args)
    if job is None and _LAST_JOB[0] is not None:
        SUBMIT_RECOVERED[0] += 1
        job = _LAST_JOB[0]
    if job is None:
        fail('cluster.submit%r returned None' % (args,))
    return job


def wait_ready(cluster, timeout=60):
    """Until the node is set up for the computation (discovery, COMPUTE, files, SETUP)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if any(n.ip_addr == HOST and n.cpus > 0 for n in cluster.status().nodes):
                return True
        except Exception:
            pass
        time.sleep(0.002)
    return False


def wait_jobs(jobs, deadline):
    for j in jobs:
        j.finish.wait(max(deadline - time.time(), 0.01))


def close(cluster):
    try:
        cluster.close(timeout=30, terminate=True)
    except Exception as exc:
        out('INFO close failed: %r' % (exc,))


def finish(result):
    out('RESULT ' + json.dumps(result, sort_keys=True))
    # os._exit: nothing (pycos threads, atexit) may keep a finished client alive.
    os._exit(0)


def fail(text):
    out('ERROR ' + text.replace('\n', '\\n'))
    os._exit(1)


# ---------------------------------------------------------------- computations

def trivial(n):
    return n


def send_big(mib):
    import hashlib
    import os
    import time
    block = hashlib.sha256(b'dispynode bench').digest() * (1 << 15)      # 1 MiB
    h = hashlib.sha256()
    with open('bench_send.bin', 'wb') as fd:
        for i in range(mib):
            chunk = block[:-8] + i.to_bytes(8, 'big')
            h.update(chunk)
            fd.write(chunk)
    t0 = time.perf_counter()
    rc = dispy_send_file('bench_send.bin')   # noqa: F821 (a node global)
    return (rc, time.perf_counter() - t0, mib << 20, h.hexdigest())


def dep_check(n):
    import os
    if n == 1:
        return (n, os.path.getsize('bench_dep.bin'))
    import hashlib
    h = hashlib.sha256()
    with open('bench_dep.bin', 'rb') as fd:
        for chunk in iter(lambda: fd.read(1 << 20), b''):
            h.update(chunk)
    return (n, h.hexdigest())


# ---------------------------------------------------------------- workloads

def check_jobs(jobs, expect):
    lost = sum(1 for j in jobs if not j.finish.is_set())
    wrong = []
    for i, j in enumerate(jobs):
        if not j.finish.is_set():
            continue
        got = (j.status, j.result, j.exception, j.stdout, j.stderr)
        want = (dispy.DispyJob.Finished,) + expect(i) + ('', '')
        if got != want:
            wrong.append((i, repr(got)[:200]))
    return lost, wrong


def run_jobs(port, n):
    t_create = time.time()
    c = make_cluster(trivial, port)
    if not wait_ready(c):
        fail('node not ready')
    t_ready = time.time()

    jobs = []
    cpu0, t0, pt0 = cpu_now(), time.time(), time.perf_counter()
    for i in range(n):
        jobs.append(submit(c, i))
    deadline = time.time() + WAIT
    for k, j in enumerate(jobs):
        j.finish.wait(max(deadline - time.time(), 0.01))
        DONE[0] = k + 1
    pt1, t1, cpu1 = time.perf_counter(), time.time(), cpu_now()
    lost, wrong = check_jobs(jobs, lambda i: (i, None))
    wall = pt1 - pt0
    res = {'mode': 'jobs', 'n': n, 'wall': wall, 'jobs_per_s': n / wall,
           'client_cpu': cpu1 - cpu0, 'client_cpu_per_job_ms': (cpu1 - cpu0) / n * 1e3,
           'client_util': (cpu1 - cpu0) / wall, 't0': t0, 't1': t1,
           'ready_s': t_ready - t_create, 'lost': lost, 'wrong': len(wrong),
           'wrong_sample': wrong[:3]}
    close(c)
    return res


def run_seq(port, n):
    t_create = time.time()
    c = make_cluster(trivial, port)
    if not wait_ready(c):
        fail('node not ready')
    first = submit(c, -1)
    first.finish.wait(WAIT)
    t_first = time.time()
    # bench/variant.py --seq-pause: let a node finish what it does after set-up first
    time.sleep(float(os.environ.get('BENCH_SEQ_PAUSE', '0')))
    lat, jobs = [], []
    cpu0, t0, pt_start = cpu_now(), time.time(), time.perf_counter()
    for i in range(n):
        s = time.perf_counter()
        j = submit(c, i)
        j.finish.wait(WAIT)
        lat.append(time.perf_counter() - s)
        jobs.append(j)
        DONE[0] = i + 1
    pt_end, t1, cpu1 = time.perf_counter(), time.time(), cpu_now()
    lost, wrong = check_jobs(jobs, lambda i: (i, None))
    lat_ms = sorted(x * 1e3 for x in lat)
    res = {'mode': 'seq', 'n': n, 'lat_ms': [round(x * 1e3, 3) for x in lat],
           'median_ms': statistics.median(lat_ms),
           'p90_ms': lat_ms[min(len(lat_ms) - 1, int(round(0.9 * len(lat_ms))) - 1)],
           'min_ms': lat_ms[0], 'max_ms': lat_ms[-1], 'mean_ms': statistics.mean(lat_ms),
           'client_cpu_per_job_ms': (cpu1 - cpu0) / n * 1e3,
           'client_util': (cpu1 - cpu0) / (pt_end - pt_start), 't0': t0, 't1': t1,
           'first_result_s': t_first - t_create, 'lost': lost, 'wrong': len(wrong),
           'wrong_sample': wrong[:3]}
    close(c)
    return res


def run_prog(port, n):
    with open('bench_prog.sh', 'w') as fd:
        fd.write('#!/bin/sh\necho "$1"\n')
    os.chmod('bench_prog.sh', 0o755)
    t_create = time.time()
    c = make_cluster('bench_prog.sh', port)
    if not wait_ready(c):
        fail('node not ready')
    t_ready = time.time()
    jobs = []
    cpu0, t0, pt0 = cpu_now(), time.time(), time.perf_counter()
    for i in range(n):
        jobs.append(submit(c, str(i)))
    deadline = time.time() + WAIT
    for k, j in enumerate(jobs):
        j.finish.wait(max(deadline - time.time(), 0.01))
        DONE[0] = k + 1
    pt1, t1, cpu1 = time.perf_counter(), time.time(), cpu_now()
    lost = sum(1 for j in jobs if not j.finish.is_set())
    wrong = [(i, repr((j.status, j.stdout, j.exception))[:200]) for i, j in enumerate(jobs)
             if j.finish.is_set() and (j.status != dispy.DispyJob.Finished
                                       or j.stdout != ('%d\n' % i).encode())]
    wall = pt1 - pt0
    res = {'mode': 'prog', 'n': n, 'wall': wall, 'jobs_per_s': n / wall,
           'client_cpu': cpu1 - cpu0, 'client_cpu_per_job_ms': (cpu1 - cpu0) / n * 1e3,
           'client_util': (cpu1 - cpu0) / wall, 't0': t0, 't1': t1,
           'ready_s': t_ready - t_create, 'lost': lost, 'wrong': len(wrong),
           'wrong_sample': wrong[:3]}
    close(c)
    return res


def make_file(path, mib):
    """MIB MiB of incompressible-looking bytes; returns the sha256."""
    h = hashlib.sha256()
    seed = os.urandom(1 << 20)
    with open(path, 'wb') as fd:
        for i in range(mib):
            chunk = seed[:-8] + i.to_bytes(8, 'big')
            h.update(chunk)
            fd.write(chunk)
    return h.hexdigest()


def run_depends(port, mib):
    digest = make_file('bench_dep.bin', mib)
    _timed_xfer_file()
    t_create = time.time()
    c = make_cluster(dep_check, port, depends=['bench_dep.bin'])
    j = submit(c, 1)         # timed: cluster creation (incl. the transfer) to first result
    j.finish.wait(WAIT)
    t_first = time.time()
    DONE[0] = 1
    j2 = submit(c, 2)        # not timed: the node hashes what it received
    j2.finish.wait(WAIT)
    DONE[0] = 2
    xf = [x for x in XFERS if x['name'] == 'bench_dep.bin']
    res = {'mode': 'depends', 'mib': mib, 'first_result_s': t_first - t_create,
           'lost': sum(1 for x in (j, j2) if not x.finish.is_set())}
    if not xf:
        fail('no transfer of bench_dep.bin seen (status %r, %r)' % (j.status, j.exception))
    x = xf[0]
    res.update(xfer_s=x['seconds'], xfer_resp=x['resp'], xfer_end=x['end'],
               mb_per_s=(mib << 20) / x['seconds'] / 1e6,
               client_util=x['client_cpu'] / x['seconds'])
    ok = (j.status == j2.status == dispy.DispyJob.Finished and j.result == (1, mib << 20)
          and j2.result == (2, digest))
    res['wrong'] = 0 if ok or res['lost'] else 1
    if not ok:
        res['wrong_sample'] = [repr((j.status, j.result, j.exception))[:300],
                               repr((j2.status, j2.result, j2.exception))[:300]]
    close(c)
    return res


def run_sendfile(port, mib):
    t_create = time.time()
    c = make_cluster(send_big, port)
    if not wait_ready(c):
        fail('node not ready')
    cpu0 = cpu_now()
    j = submit(c, mib)
    j.finish.wait(WAIT)
    cpu1 = cpu_now()
    t_first = time.time()
    DONE[0] = 1
    res = {'mode': 'sendfile', 'mib': mib, 'first_result_s': t_first - t_create,
           'status': j.status, 'exception': j.exception, 'lost': 0 if j.finish.is_set() else 1}
    r = j.result if isinstance(j.result, tuple) and len(j.result) == 4 else None
    if r is None:
        res['wrong'] = 1
        res['result'] = repr(j.result)[:200]
        close(c)
        return res
    rc, secs, size, digest = r
    res.update(rc=rc, send_s=secs, mb_per_s=size / secs / 1e6 if secs > 0 else None,
               client_cpu=cpu1 - cpu0,
               # the client is all but idle while the job writes its file: its CPU
               # over the job is (nearly) its CPU over the transfer
               client_util=(cpu1 - cpu0) / secs if secs > 0 else None)
    got = None
    if os.path.isfile('bench_send.bin'):
        h = hashlib.sha256()
        with open('bench_send.bin', 'rb') as fd:
            for chunk in iter(lambda: fd.read(1 << 20), b''):
                h.update(chunk)
        got = h.hexdigest()
    res['wrong'] = 0 if (rc == 0 and got == digest and j.status == dispy.DispyJob.Finished) else 1
    res['received_ok'] = got == digest
    close(c)
    return res


def main():
    mode, port = sys.argv[1], int(sys.argv[2])
    param = int(sys.argv[3]) if len(sys.argv) > 3 else None
    if not 1024 < port < 65536 or (param is not None and not 0 < param <= 100000) \
            or (mode in ('depends', 'sendfile') and (param or 100) > 4096):
        fail('bad arguments %r (usage: client.py MODE PORT [PARAM])' % (sys.argv[1:],))
    threading.Thread(target=progress_thread, daemon=True).start()
    try:
        if mode == 'jobs':
            res = run_jobs(port, param or 1000)
        elif mode == 'seq':
            res = run_seq(port, param or 50)
        elif mode == 'prog':
            res = run_prog(port, param or 200)
        elif mode == 'depends':
            res = run_depends(port, param or 100)
        elif mode == 'sendfile':
            res = run_sendfile(port, param or 100)
        else:
            fail('unknown mode %r' % mode)
    except Exception:
        import traceback
        fail(traceback.format_exc())
    res['client_total_s'] = time.time() - T_START
    res['submit_recovered'] = SUBMIT_RECOVERED[0]
    finish(res)


if __name__ == '__main__':
    main()
