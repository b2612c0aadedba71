#!/usr/bin/env python3
"""What kind of page faults the function path takes, per job, while the real client runs.

    python3 bench/fault_kinds.py [--venv V] [--node-bin B] [--mode seq] [--n 3000] [--secs 1]
    /usr/bin/python3 bench/fault_kinds.py --fork-test [--forks 3000] [--rounds 3]

Starts our node, runs a long bench/client.py workload against it, records every user page
fault of the whole machine for --secs seconds in the middle of it (`perf record -e
exceptions:page_fault_user`, needs root) and classifies the faults of the worker, its
zygote and the job processes by their kind (the x86 error code: `cow` a write to a present
page, `write-np` / `read-np` to a page not present, `ifetch` an instruction fetch) and by
the mapping they hit (the zygote's /proc/PID/maps: its spares are forks of it, so they
share its layout). Prints the count per job process of each kind and mapping.

Why it exists: `cow` faults are the price of a fork per job (each page written after the
fork is copied); `ifetch` and `read-np` faults on the interpreter's and libc's files are
not copies: fork does not copy page-table entries of a mapping without private pages, so
the child maps them again on first use.
"""

import argparse
import collections
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib  # noqa: E402

LINE = re.compile(r'\s*(\S+)\s+(\d+)\s+address=(0x[0-9a-f]+) ip=0x[0-9a-f]+ error_code=(0x[0-9a-f]+)')


def read_maps(pid):
    maps = []
    with open('/proc/%d/maps' % pid) as fd:
        for line in fd:
            f = line.split()
            lo, hi = (int(x, 16) for x in f[0].split('-'))
            name = os.path.basename(f[5]) if len(f) > 5 else '[anon]'
            maps.append((lo, hi, '%s %s' % (name or f[5], f[1])))
    return maps


def kind(code):
    if code & 0x10:
        return 'ifetch'
    if code & 3 == 3:
        return 'cow'
    return 'write-np' if code & 2 else 'read-np'


def classify(perf_text, worker, zygote, maps):
    """(counts per (who, kind, mapping), job pids seen) from `perf script` lines."""
    counts, jobs = collections.Counter(), set()
    for line in perf_text.splitlines():
        m = LINE.match(line)
        if not m or m.group(1) != 'python3':
            continue
        pid = int(m.group(2))
        if pid == worker:
            who = 'worker'
        elif pid == zygote:
            who = 'zygote'
        else:
            who = 'job'
            jobs.add(pid)
        addr = int(m.group(3), 16)
        where = next((name for lo, hi, name in maps if lo <= addr < hi), '?')
        counts[who, kind(int(m.group(4), 16)), where] += 1
    return counts, jobs


FORK_TEST = r"""
import io, json, marshal, os, pickle, resource, sys, time
if sys.argv[1] == 'copied':
    with open('/proc/self/maps') as f:
        maps = [line.split() for line in f]
    with open('/proc/self/mem', 'r+b', buffering=0) as mem:
        for m in maps:
            if len(m) > 5 and m[1] in ('r-xp', 'r--p') and ('python3' in m[5] or 'libc.so' in m[5]):
                at = int(m[0].split('-')[0], 16)
                mem.seek(at)
                byte = mem.read(1)
                mem.seek(at)
                mem.write(byte)
def work():
    x = pickle.loads(pickle.dumps((1, 'a')))
    s = json.dumps({'a': x[0]})
    io.StringIO().write(s)
    marshal.loads(marshal.dumps(s))
work()
n = int(sys.argv[2])
use = lambda who: resource.getrusage(who)
r0, c0 = use(resource.RUSAGE_SELF), use(resource.RUSAGE_CHILDREN)
for _ in range(n):
    pid = os.fork()
    if pid == 0:
        work()
        os._exit(0)
    os.waitpid(pid, 0)
r1, c1 = use(resource.RUSAGE_SELF), use(resource.RUSAGE_CHILDREN)
cpu = lambda a, b: (b.ru_utime + b.ru_stime - a.ru_utime - a.ru_stime) / n * 1e3
print('%-8s parent %.3f ms, child %.3f ms CPU per fork; page faults: parent %.1f, child %.1f' % (
    sys.argv[1], cpu(r0, r1), cpu(c0, c1), (r1.ru_minflt - r0.ru_minflt) / n,
    (c1.ru_minflt - c0.ru_minflt) / n))
"""


def fork_test(forks, rounds):
    for _ in range(rounds):
        for how in ('as-is', 'copied'):
            subprocess.run(['/usr/bin/python3', '-c', FORK_TEST, how, str(forks)], check=True,
                           timeout=600)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--venv', default=benchlib.default_venv())
    ap.add_argument('--node-bin', default=benchlib.default_node_bin())
    ap.add_argument('--mode', default='seq', help='a bench/client.py workload: seq, jobs')
    ap.add_argument('--n', type=int, default=3000)
    ap.add_argument('--secs', type=float, default=1.0)
    ap.add_argument('--fork-test', action='store_true')
    ap.add_argument('--forks', type=int, default=3000)
    ap.add_argument('--rounds', type=int, default=3)
    args = ap.parse_args()
    if args.fork_test:
        return fork_test(args.forks, args.rounds)
    node = benchlib.Node('ours', venv=args.venv, node_bin=args.node_bin).start()
    tmp = tempfile.mkdtemp(prefix='dispynode-faults-')
    data = os.path.join(tmp, 'faults.perf')
    started = threading.Event()
    client = threading.Thread(target=lambda: benchlib.run_client(
        args.venv, args.mode, node.port, args.n, on_start=lambda pid: started.set()), daemon=True)
    try:
        client.start()
        started.wait(30)
        deadline = time.time() + 30
        worker = zygote = None
        while time.time() < deadline and zygote is None:
            table = benchlib.proc_table()
            worker = next((p for p, row in table.items() if row[0] == node.pid
                           and b'Start-up of the dispynode' in cmdline(p)), None)
            zygote = next((p for p, row in table.items() if worker and row[0] == worker
                           and b'Start-up of the dispynode' in cmdline(p)), None)
            time.sleep(0.1)
        if zygote is None:
            sys.exit('no zygote appeared (is the client running jobs?)')
        time.sleep(1.0)  # past the computation's set-up
        maps = read_maps(zygote)
        subprocess.run(['perf', 'record', '-q', '-e', 'exceptions:page_fault_user', '-a', '-o',
                        data, '--', 'sleep', str(args.secs)], check=True, timeout=120,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        text = subprocess.run(['perf', 'script', '-i', data, '-F', 'comm,pid,trace'],
                              capture_output=True, text=True, check=True, timeout=300).stdout
    finally:
        client.join(300)
        node.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    counts, jobs = classify(text, worker, zygote, maps)
    n = max(len(jobs), 1)
    per = collections.Counter()
    for (who, _, _), c in counts.items():
        per[who] += c
    print('%d job processes in %.1f s; page faults per job process: %s' % (
        len(jobs), args.secs, ', '.join('%s %.1f' % (w, c / n) for w, c in sorted(per.items()))))
    for (who, k, where), c in sorted(counts.items(), key=lambda x: -x[1]):
        if c / n >= 0.5:
            print('  %-7s %-9s %-45s %6.1f' % (who, k, where, c / n))


def cmdline(pid):
    try:
        with open('/proc/%d/cmdline' % pid, 'rb') as fd:
            return fd.read()
    except OSError:
        return b''


if __name__ == '__main__':
    main()
