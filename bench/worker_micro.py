#!/usr/bin/env python3
"""The Python worker alone (runner/dispynode_job.py), driven over its pipes the
way the daemon drives it, without daemon, network or client: what one
function job costs in the worker, and what some changes would save.

    python3 bench/worker_micro.py [--python P] [--jobs 1000]

Variants are made by patching the worker's source in memory (the file is not
changed):

    as-is        the worker as it is: one process per job, forked ahead by the zygote
    gc-freeze    gc.freeze() after setup, gc.disable() in the job child: fewer
                 copy-on-write faults (the collector no longer writes to every
                 object header of the worker's heap)
    no-zygote    the worker forks the spares itself, when idle (the design before
                 the zygote): it then takes the copy-on-write faults of every fork
    inline       no process per job: the job runs in the worker itself.  Not a
                 proposal (no isolation), the lower bound of any process reuse
    bare-child   a process per job that does only what the floor's child does (unpickle,
                 call, pickle, one write of its done): no process group, no signal resets,
                 no output capture, no fd checks, no lock, no client link.  Not a proposal
                 (it drops what the protocol and termination need): the least any
                 process-per-job design with this daemon and zygote could spend
    no-prologue  bare-child's cuts one at a time (none a proposal): no session, signal
    no-capture   resets or fd checks; no output capture; the done written without the
    no-lock      stream lock
    no-warm-up   spares do not walk the job's path before their job comes
    prefork-pool 320 spares forked once, never refilled (for variant.py --seq-pause:
                 sequential jobs with no fork while they run)
    setsid       a session per job process instead of a process group (as before): a
                 scheduler autogroup made and freed per job
    batch-fork   the zygote forks two spares back to back whenever fewer than two are
                 ready (three kept): does its own copy-on-write work after a fork (its
                 loop's pages) happen once per two spares?

For each: sequential latency (job message -> done message), throughput with 2
jobs in flight (cpus=2), and CPU of the worker and its children per job (from
/proc: utime+stime+cutime+cstime).
"""

import argparse
import json
import os
import pickle
import statistics
import struct
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib  # noqa: E402

WORKER = os.path.join(benchlib.REPO, 'runner', 'dispynode_job.py')
# The worker is started as the daemon starts it: `-c BOOT`, the source first on its stdin
# (src/node/worker.rs).
with open(os.path.join(benchlib.REPO, 'runner', 'dispynode_boot.py')) as _fd:
    BOOT = _fd.read()
_LEN = struct.Struct('>L')

SETUP_END = "        self.user_globals = user_globals\n        self.setup_args = setup_args\n        return None"
CHILD_START = "            os.setpgid(0, 0)\n"
MAIN = "\nif __name__ == '__main__':"

INLINE = '''
def _inline_op_job(self, header, blob):
    saved = sys.stdout, sys.stderr
    try:
        reply, result = self._run_job(header, blob)
    finally:
        sys.stdout, sys.stderr = saved
    h = {'ev': 'done', 'id': header['id']}
    h.update(reply)
    self.send(h, result)


Worker._op_job = _inline_op_job
'''


BARE_CHILD = '''
def _bare_job_child(self, job_fd, result_fd):
    exit_code = 1
    try:
        if self.spare_fds is not None:
            for fd in self.spare_fds:
                os.close(fd)
        else:
            self._close_worker_fds()
        self._warm_up()
        job = self._await_job(job_fd)
        if job is None:
            exit_code = 0
            return
        header, blob = job
        args_len = header['args_len']
        value = self.user_globals[self.config['name']](*pickle.loads(blob[:args_len]),
                                                       **pickle.loads(blob[args_len:]))
        result = pickle.dumps(value, RESULT_PROTOCOL)
        os.write(self.ctl_out, frame_head(done_header(header['id'], {
            'status': FINISHED, 'stdout': '', 'stderr': '', 'exception': None}),
            len(result)) + result)
        os.write(result_fd, _SENT)
        exit_code = 0
    finally:
        os._exit(exit_code)


Worker._job_child = _bare_job_child
'''

START_ZYGOTE = "            self._start_zygote()\n"
SIGNALS_OFF = "            _signal.set_wakeup_fd(-1)\n            _signal.signal(_SIGCHLD, _signal.SIG_DFL)\n"
SIGNALS_JOB = ("            _signal.signal(_SIGINT, _signal.default_int_handler)\n"
               "            _signal.signal(_SIGTERM, _signal.SIG_DFL)\n")
FD_IDS_BEFORE = "            ours = _fd_ids(result_fd, self.ctl_out, self.stream_lock.fd)\n"
FD_IDS_AFTER = "            now = _fd_ids(result_fd, self.ctl_out, self.stream_lock.fd)\n"
CAPTURE = "        stdout, stderr = sys.stdout, sys.stderr = io.StringIO(), io.StringIO()\n"
CAPTURED = "'stdout': stdout.getvalue(), 'stderr': stderr.getvalue(),"
LOCKED_DONE = ("        with self.stream_lock:\n            os.write(self.ctl_out, frame)\n"
               "            write_all(result_fd, _SENT)\n")
UNLOCKED_DONE = "        os.write(self.ctl_out, frame)\n        os.write(result_fd, _SENT)\n"
WARM_UP = "            self._warm_up()\n"
SPARES_LINE = "SPARES = 2\n"
REFILL = "            while len(ready) < SPARES:\n"
ACCEPT = "            if len(self.spares) < SPARES:\n"


def variants(src):
    out = {'as-is': src}
    if SETUP_END in src and CHILD_START in src:
        v = src.replace(SETUP_END, SETUP_END.replace('        return None', '        import gc\n        gc.freeze()\n        return None'))
        v = v.replace(CHILD_START, "            import gc\n            gc.disable()\n" + CHILD_START)
        out['gc-freeze'] = v
    if START_ZYGOTE in src:
        out['no-zygote'] = src.replace(START_ZYGOTE, '')
    if WARM_UP in src:
        out['no-warm-up'] = src.replace(WARM_UP, '')
    if SPARES_LINE in src and REFILL in src:
        # 320 spares forked once, never refilled: with a pause before the timed jobs (variant.py
        # --seq-pause) no fork happens while they run -- what the refill's CPU costs them.
        out['prefork-pool'] = src.replace(SPARES_LINE, 'SPARES = 320\n_FORKED = [0]\n').replace(
            REFILL, REFILL.replace('while len(ready) < SPARES:',
                                   'while len(ready) < SPARES and _FORKED[0] < SPARES:\n'
                                   '                _FORKED[0] += 1'))
    if REFILL in src and ACCEPT in src:
        out['batch-fork'] = src.replace(REFILL, (
            "            target = SPARES + 1 if len(ready) < SPARES else 0\n"
            "            while len(ready) < target:\n")).replace(
                ACCEPT, ACCEPT.replace('< SPARES:', '< SPARES + 1:'))
    if CHILD_START in src:
        # A session per job, as job processes had until they took a process group only: a
        # scheduler autogroup made and freed per job.
        out['setsid'] = src.replace(CHILD_START, '            os.setsid()\n')
    if MAIN in src:
        i = src.rindex(MAIN)
        # No process per job, so no zygote and no spare either.
        out['inline'] = (src[:i] + INLINE + src[i:]).replace(START_ZYGOTE, '').replace(
            'and self.zygote is None)', 'and False)')
    if MAIN in src:
        i = src.rindex(MAIN)
        out['bare-child'] = src[:i] + BARE_CHILD + src[i:]
    # Each of bare-child's cuts alone (none is a proposal): which of them carry its latency.
    cuts = {
        'no-prologue': [(CHILD_START, ''),
                        (SIGNALS_OFF, ''), (SIGNALS_JOB, ''),
                        (FD_IDS_BEFORE, '            ours = now = (0, 0, 0)\n'),
                        (FD_IDS_AFTER, '')],
        'no-capture': [(CAPTURE, '        stdout = stderr = io.StringIO()\n'),
                       (CAPTURED, "'stdout': '', 'stderr': '',")],
        'no-lock': [(LOCKED_DONE, UNLOCKED_DONE)],
    }
    for name, edits in cuts.items():
        if all(old in src for old, _ in edits):
            v = src
            for old, new in edits:
                v = v.replace(old, new, 1)
            out[name] = v
    return out


class Drv:
    def __init__(self, python, src, cwd):
        self.p = subprocess.Popen([python, '-c', BOOT], cwd=cwd, stdin=subprocess.PIPE,
                                  env=dict(os.environ, LD_BIND_NOW='1'),  # as the daemon does
                                  stdout=subprocess.PIPE, stderr=open(os.path.join(cwd, 'worker.err'), 'wb'))
        data = src.encode('utf-8')
        self.p.stdin.write(_LEN.pack(len(data)) + data)
        self.buf = b''

    def send(self, header, blob=b''):
        h = json.dumps(header).encode()
        self.p.stdin.write(_LEN.pack(len(h)) + h + _LEN.pack(len(blob)) + blob)
        self.p.stdin.flush()

    def _read(self, n):
        data = self.p.stdout.read(n)
        if len(data) != n:
            raise RuntimeError('worker closed its stdout')
        return data

    def recv(self):
        h = json.loads(self._read(_LEN.unpack(self._read(4))[0]))
        blob = self._read(_LEN.unpack(self._read(4))[0])
        return h, blob

    def until(self, ev):
        while True:
            h, blob = self.recv()
            if h.get('ev') == ev:
                return h, blob

    def cpu(self):
        """CPU s of the worker, its zygote and every job process they reaped."""
        f = tree_faults_cpu(self.p.pid)
        return f['worker_cpu'] + f['zygote_cpu'] + f['jobs_cpu']

    def close(self):
        try:
            self.send({'op': 'close'})
            self.until('closed')
        except Exception:
            pass
        self.p.stdin.close()
        try:
            self.p.wait(5)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait(5)


def job_msg(k):
    args, kwargs = pickle.dumps((k,)), pickle.dumps({})
    return ({'op': 'job', 'id': k, 'uid': k, 'hash': 'h%d' % k, 'start_time': time.time(),
             'code': None, 'args_len': len(args)}, args + kwargs)


def _faults_cpu(pid):
    """(minor faults, reaped children's, CPU s, reaped children's) of a live process."""
    with open('/proc/%d/stat' % pid) as fd:
        f = fd.read().rsplit(')', 1)[1].split()
    tck = os.sysconf('SC_CLK_TCK')
    return (int(f[7]), int(f[8]), (int(f[11]) + int(f[12])) / tck,
            (int(f[13]) + int(f[14])) / tck)


_ZYGOTES = {}  # worker pid -> its zygote's pid, once seen


def tree_faults_cpu(pid):
    """Page faults and CPU of the worker itself, of its zygote (the live child that has
    children of its own, if any; remembered once seen, since a zygote may have no child for an
    instant and a sample without it would go backwards) and of the job processes either of
    them reaped."""
    w = _faults_cpu(pid)
    out = {'worker_faults': w[0], 'worker_cpu': w[2], 'zygote_faults': 0, 'zygote_cpu': 0.0,
           'jobs_faults': w[1], 'jobs_cpu': w[3]}
    zygote = _ZYGOTES.get(pid)
    if zygote is None:
        table = benchlib.proc_table()
        zygote = next((child for child, info in table.items() if info[0] == pid
                       and any(v[0] == child for v in table.values())), None)
        if zygote is not None:
            _ZYGOTES[pid] = zygote
    if zygote is not None:
        try:
            z = _faults_cpu(zygote)
        except OSError:
            return out
        out['zygote_faults'] += z[0]
        out['zygote_cpu'] += z[2]
        out['jobs_faults'] += z[1]
        out['jobs_cpu'] += z[3]
    return out


def measure(python, src, njobs):
    d = tempfile.mkdtemp(prefix='dispynode-bench-worker-')
    w = Drv(python, src, d)
    try:
        w.send({'op': 'init', 'code': 'def f(n):\n    return n\n', 'name': 'f', 'setup': None,
                'cleanup': None, 'dest_path': d, 'node_name': 'bench', 'node_ip_addr': '127.0.0.1',
                'reply_ip_addr': '127.0.0.1', 'client_addr': ['127.0.0.1', 9], 'scheduler_addr': ['127.0.0.1', 9],
                'max_file_size': 0, 'msg_timeout': 5.0, 'certfile': None, 'keyfile': None})
        h, _ = w.until('init')
        assert h['ok'], h
        w.send({'op': 'setup'}, pickle.dumps({'compute_id': 1, 'setup_args': ()}))
        h, _ = w.until('setup')
        assert h['ok'], h
        rss_kb = benchlib.vmrss_kb(w.p.pid)
        # sequential, with 1 ms between jobs (about the client's own time per job): the
        # worker's own page faults and CPU per job, and its job processes'
        lat = []
        nseq = njobs // 2
        s0 = tree_faults_cpu(w.p.pid)
        for k in range(nseq):
            hdr, blob = job_msg(k)
            t = time.perf_counter()
            w.send(hdr, blob)
            h, res = w.until('done')
            lat.append((time.perf_counter() - t) * 1e3)
            assert h['status'] == 11 and pickle.loads(res) == k, (h, res)
            time.sleep(0.001)
        time.sleep(0.1)  # the last child reaped
        s1 = tree_faults_cpu(w.p.pid)
        own = {}
        for who in ('worker', 'zygote', 'jobs'):
            own['%s_faults_per_job' % who] = (s1[who + '_faults'] - s0[who + '_faults']) / nseq
            own['%s_cpu_ms_per_job' % who] = (s1[who + '_cpu'] - s0[who + '_cpu']) / nseq * 1e3
        # two in flight
        c0, t0 = w.cpu(), time.perf_counter()
        nxt, done = 0, 0
        for _ in range(2):
            w.send(*job_msg(nxt))
            nxt += 1
        while done < njobs:
            h, res = w.until('done')
            done += 1
            if nxt < njobs:
                w.send(*job_msg(nxt))
                nxt += 1
        wall = time.perf_counter() - t0
        cpu = w.cpu() - c0
        lat.sort()
        return {'seq_median_ms': statistics.median(lat), 'seq_p90_ms': lat[int(0.9 * len(lat)) - 1],
                'pipelined_jobs_per_s': njobs / wall, 'cpu_ms_per_job': cpu / njobs * 1e3,
                'worker_rss_kb': rss_kb, **own}
    finally:
        w.close()
        subprocess.run(['rm', '-rf', d], timeout=30)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--python', default=benchlib.venv_python(benchlib.default_venv()))
    ap.add_argument('--jobs', type=int, default=1000)
    ap.add_argument('--repeat', type=int, default=3)
    ap.add_argument('--variants', help='comma-separated names of the variants to run (default: all)')
    ap.add_argument('--out', default=os.path.join(benchlib.HERE, 'results', 'worker_micro.json'))
    args = ap.parse_args()
    with open(WORKER) as fd:
        src = fd.read()
    res = {}
    for rep in range(args.repeat):
        for name, v in variants(src).items():
            if name == 'prefork-pool':  # for variant.py (--seq-pause): no pause here
                continue
            if args.variants and name not in args.variants.split(','):
                continue
            r = measure(args.python, v, args.jobs)
            res.setdefault(name, []).append(r)
            benchlib.log('%-9s %s' % (name, ', '.join('%s %.2f' % kv for kv in r.items())))
    summary = {name: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for name, rs in res.items()}
    doc = {'summary': summary, 'runs': res, 'loadavg': benchlib.loadavg(), 'jobs': args.jobs,
           'python': args.python}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, 'w') as fd:
        json.dump(doc, fd, indent=1, sort_keys=True)
    print('%-16s %13s %10s %15s %10s %14s %22s %22s %22s' % (
        'variant', 'seq median ms', 'seq p90 ms', '2-in-flight j/s', 'CPU ms/job', 'worker RSS KiB',
        'worker: faults, ms/job', 'zygote: faults, ms/job', 'jobs: faults, ms/job'))
    for name, s in summary.items():
        print('%-16s %13.2f %10.2f %15.0f %10.2f %14d %12.0f %9.2f %12.0f %9.2f %12.0f %9.2f' % (
            name, s['seq_median_ms'], s['seq_p90_ms'], s['pipelined_jobs_per_s'], s['cpu_ms_per_job'],
            s['worker_rss_kb'], s['worker_faults_per_job'], s['worker_cpu_ms_per_job'],
            s['zygote_faults_per_job'], s['zygote_cpu_ms_per_job'],
            s['jobs_faults_per_job'], s['jobs_cpu_ms_per_job']))


if __name__ == '__main__':
    main()
