#!/usr/bin/env python3
"""What one job costs at the least on this machine, whatever the node: the
floors bench.py divides into the cores to show the bound of each workload.

    python3 bench/floors.py PYTHON [N]      -> one JSON line

* fork_exit_ms: CPU (parent and child) of one fork + _exit of a Python process
  that has loaded our worker (runner/dispynode_job.py, not run; compiled in
  another process, as runner/dispynode_boot.py does for the node): the least a
  function job costs when every job is a fresh process, as the protocol's
  semantics (and the reference) require.  Measured with PYTHON, the
  interpreter our node runs its worker with.
* fork_run_ms: the same, with the least work of a function job in the child:
  unpickle the arguments, call a trivial function, pickle the result, write it
  to the parent.  Running Python in a fresh fork writes to (copies) every page
  whose objects it touches, even their reference counts: that cost is the job's.
* cow_fault_us: CPU of one copy-on-write page fault in a forked child (the
  child writes to a page it shares with its parent): a job process takes
  hundreds, whatever it runs, because every page its Python touches is one.
* fork_exit_ms_per_mib: what fork+exit costs more per MiB of the parent's
  anonymous memory (16 MiB added and taken away, alternately): a computation
  whose code or setup loads large libraries makes every job process dearer, in
  any node that forks one per job.
* spawn_sh_ms: CPU of posix_spawn + run + exit of `/bin/sh script ARG`, the
  2-line script of the program-jobs workload: the least a program job costs.
* protocol_ms: the kernel's CPU (system time only) for a node's side of the two
  TCP exchanges dispy's client makes per job, with messages of the captured
  sizes: accept the client's connection, read its 40-byte auth and JOB
  message, answer ACK, close; connect to the client's reply port, send
  JOB_REPLY, read its ACK, close.  Any node that speaks dispy's protocol does
  these; user-space time is left out (our Python side would overstate it), so
  this is less than any node spends on them.
"""

import json
import os
import resource
import signal
import socket
import struct
import subprocess
import sys
import tempfile

from rawcopy import recv_exact  # this directory

HERE = os.path.dirname(os.path.abspath(__file__))
WORKER = os.path.join(HERE, os.pardir, 'runner', 'dispynode_job.py')

FORK_EXIT = r'''
import os, resource, sys, json, marshal
with open(sys.argv[1], 'rb') as fd:
    exec(marshal.loads(fd.read()), {'__name__': 'dispynode_job'})
n = int(sys.argv[2])
def cpu(who):
    r = resource.getrusage(who)
    return r.ru_utime + r.ru_stime
def fork_exit_ms(k):
    """CPU (parent and child) of one fork + _exit, averaged over k."""
    s0, c0 = cpu(resource.RUSAGE_SELF), cpu(resource.RUSAGE_CHILDREN)
    for _ in range(k):
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)
    s1, c1 = cpu(resource.RUSAGE_SELF), cpu(resource.RUSAGE_CHILDREN)
    return ((s1 - s0) + (c1 - c0)) / k * 1e3
fork_exit_ms(20)  # warm up
out = {'fork_exit_ms': fork_exit_ms(n)}
# The same with the least work of a function job in the child: load its arguments, call
# the function, pickle the result, write it to the parent.
import pickle
def trivial(x):
    return x, None
def fork_run(k):
    r, w = os.pipe()
    args = pickle.dumps((k,))
    pid = os.fork()
    if pid == 0:
        os.close(r)
        os.write(w, pickle.dumps(trivial(*pickle.loads(args)), 4))
        os._exit(0)
    os.close(w)
    data = os.read(r, 65536)
    os.close(r)
    os.waitpid(pid, 0)
    assert pickle.loads(data) == (k, None)
for k in range(20):
    fork_run(k)
s0, c0 = cpu(resource.RUSAGE_SELF), cpu(resource.RUSAGE_CHILDREN)
for k in range(n):
    fork_run(k)
s1, c1 = cpu(resource.RUSAGE_SELF), cpu(resource.RUSAGE_CHILDREN)
out['fork_run_ms'] = ((s1 - s0) + (c1 - c0)) / n * 1e3
# What the kernel's work on a process's memory costs here, which is most of a job process's
# CPU: one copy-on-write fault (the child writes to a page it shares with its parent), and
# fork+exit per MiB of the parent's anonymous memory (page tables copied, then torn down).
import mmap, statistics, struct, time
ballast = mmap.mmap(-1, 16 << 20, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
for i in range(0, len(ballast), 4096):
    ballast[i] = 1
PAGES = 2000
def cow_fault_us():
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        t0 = time.process_time()
        for i in range(PAGES):
            ballast[i * 4096 + 1] = 2  # copied: a fault each
        t1 = time.process_time()
        for i in range(PAGES):
            ballast[i * 4096 + 1] = 3  # the child's own now: the loop alone
        t2 = time.process_time()
        os.write(w, struct.pack('d', ((t1 - t0) - (t2 - t1)) / PAGES * 1e6))
        os._exit(0)
    os.close(w)
    data = os.read(r, 8)
    os.close(r)
    os.waitpid(pid, 0)
    return struct.unpack('d', data)[0]
out['cow_fault_us'] = statistics.median(cow_fault_us() for _ in range(7))
with_ballast, without = [], []
for _ in range(5):  # alternated: the host's speed drifts
    with_ballast.append(fork_exit_ms(max(n // 10, 10)))
    ballast.close()
    without.append(fork_exit_ms(max(n // 10, 10)))
    ballast = mmap.mmap(-1, 16 << 20, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    for i in range(0, len(ballast), 4096):
        ballast[i] = 1
out['fork_exit_ms_per_mib'] = (statistics.median(with_ballast) - statistics.median(without)) / 16
print(json.dumps(out))
'''

SCRIPT = '#!/bin/sh\necho "program $1"\n'


def spawn_sh(n):
    with tempfile.TemporaryDirectory(prefix='dispynode-floor-') as d:
        script = os.path.join(d, 'prog.sh')
        with open(script, 'w') as fd:
            fd.write(SCRIPT)
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            actions = [(os.POSIX_SPAWN_DUP2, devnull, 1)]
            c0 = resource.getrusage(resource.RUSAGE_CHILDREN)
            for i in range(n):
                pid = os.posix_spawn('/bin/sh', ['/bin/sh', script, str(i)], {},
                                     file_actions=actions)
                os.waitpid(pid, 0)
            c1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        finally:
            os.close(devnull)
    used = (c1.ru_utime + c1.ru_stime) - (c0.ru_utime + c0.ru_stime)
    return used / n * 1e3


# Sizes from ../shared/docs/dispy-protocol-artifacts (transcripts/sessA.txt): the client's
# auth prefix, a JOB of a one-argument function, a JOB_REPLY of a small result; every
# message is framed by a 4-byte length.
AUTH_LEN, JOB_LEN, REPLY_LEN, ACK = 40, 181, 257, b'ACK'


def _frame(payload):
    return struct.pack('>L', len(payload)) + payload


def protocol_ms(n, warm=20):
    """System CPU of the node's side of one job's two TCP exchanges (see the module doc),
    the client's side run by a forked child on the same loopback."""
    node_l = socket.create_server(('127.0.0.1', 0), backlog=64)
    client_l = socket.create_server(('127.0.0.1', 0), backlog=64)
    node_addr, client_addr = node_l.getsockname(), client_l.getsockname()
    job = b'x' * AUTH_LEN + _frame(b'J' * JOB_LEN)
    reply = _frame(b'R' * REPLY_LEN)
    pid = os.fork()
    if pid == 0:  # the client: what dispy's does per job, minus its Python
        code = 1
        try:
            signal.alarm(120)  # never outlives a measuring side that failed or was killed
            node_l.close()
            for _ in range(warm + n):
                with socket.create_connection(node_addr) as s:
                    s.sendall(job)
                    recv_exact(s, 4 + len(ACK))
                conn, _ = client_l.accept()
                with conn:
                    recv_exact(conn, len(reply))
                    conn.sendall(_frame(ACK))
            code = 0
        finally:
            os._exit(code)
    client_l.close()
    done = False
    try:
        for i in range(warm + n):
            if i == warm:
                t0 = resource.getrusage(resource.RUSAGE_SELF).ru_stime
            conn, _ = node_l.accept()
            with conn:
                recv_exact(conn, len(job))
                conn.sendall(_frame(ACK))
            with socket.create_connection(client_addr) as s:
                s.sendall(reply)
                recv_exact(s, 4 + len(ACK))
        t1 = resource.getrusage(resource.RUSAGE_SELF).ru_stime
        done = True
    finally:
        node_l.close()
        if not done:
            os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
    if status != 0:
        raise RuntimeError('protocol floor: the client side failed (%d)' % status)
    return (t1 - t0) / n * 1e3


def main():
    python = sys.argv[1] if len(sys.argv) > 1 else sys.executable
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 500
    with tempfile.TemporaryDirectory(prefix='dispynode-floor-') as d:
        code = os.path.join(d, 'worker.marshal')
        subprocess.run([python, '-c', 'import marshal, sys\n'
                        'src = open(sys.argv[1]).read()\n'
                        'open(sys.argv[2], "wb").write(marshal.dumps(compile(src, "w", "exec")))',
                        WORKER, code], check=True, timeout=300)
        out = json.loads(subprocess.run([python, '-c', FORK_EXIT, code, str(n)], check=True,
                                        capture_output=True, text=True, timeout=300).stdout)
    out['spawn_sh_ms'] = spawn_sh(n)
    out['protocol_ms'] = protocol_ms(n)
    out['python'] = python
    print(json.dumps(out))


if __name__ == '__main__':
    main()
