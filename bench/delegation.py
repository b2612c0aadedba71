#!/usr/bin/env python3
"""Our node as the package runs it: with a delegated cgroup v2 subtree (systemd's
Delegate=yes), so every job gets a cgroup of its own -- against the same node without one.

    python3 bench/delegation.py [--node-bin B] [--base-bin B0] [--rounds 4] [--out F]

On a host whose /sys/fs/cgroup is not cgroup2 (this machine: hybrid v1, cgroup2 at
/sys/fs/cgroup/unified), the node is started in a mount namespace of its own where that
cgroup2 mount is bind-mounted over /sys/fs/cgroup, in a fresh cgroup below its root: a
stand-in for systemd's delegation. Needs root. This host has no controller in cgroup2, so no
limit is applied, but every step of a job's cgroup is real: mkdir, moving the job's process in
(cgroup.procs), cgroup.kill, rmdir. (The limits themselves are tested in the VM:
tests/vm/sandbox-limits.sh.)

Runs, alternating, --rounds times: 200 sequential jobs (median latency), 1000 jobs (jobs/s)
and 30 sporadic jobs, one every 50 ms, of a function and of a shell script (median latency:
a cgroup migration waits for an RCU grace period when none happened in the last few ms). Configurations: `deleg` and `plain`
(no delegation) with --node-bin, `base-deleg` with --base-bin if given (an A/B of two
builds under delegation), and with --reference the Python dispynode (outside any cgroup, as it
always runs; not the 1000 jobs, which wedge it in about half the runs: bench.py counts that),
with the ratios. Ours must have no lost or wrong result; the reference's are counted, and a
reference run that wedges (no result) is counted, and run again on a fresh node (3 tries). Writes --out (default bench/results/delegation.json).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib  # noqa: E402
from benchlib import log  # noqa: E402


SPORADIC = r'''
import json, os, statistics, sys, time
port, n, pause, kind = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
sys.path.insert(0, sys.argv[5])
import client  # bench/client.py: its submit() gets round a race of dispy's submit()
import dispy
def f(x):
    return x
if kind == 'program':
    with open('prog.sh', 'w') as fd:
        fd.write('#!/bin/sh\necho "$1"\n')
    os.chmod('prog.sh', 0o755)
    computation, want = 'prog.sh', lambda j, i: j.stdout.strip() == str(i).encode()
else:
    computation, want = f, lambda j, i: j.result == i
c = dispy.JobCluster(computation, nodes=[('127.0.0.1', port)], host='127.0.0.1',
                     dispy_port=port - 1, loglevel=dispy.logger.CRITICAL)
client.submit(c, -1)()
lat, wrong = [], 0
for i in range(n):
    time.sleep(pause)
    t = time.perf_counter()
    j = client.submit(c, i)
    j()
    lat.append((time.perf_counter() - t) * 1e3)
    wrong += not want(j, i)
c.close()
print('RESULT ' + json.dumps({'median_ms': statistics.median(lat), 'wrong': wrong}))
'''


class ClientFailed(RuntimeError):
    """The client printed no result: it failed, or the node wedged (the reference does)."""


def run_workload(venv, node, argv, strict=True):
    # client.py's own watchdog ends a wedged run (stacks on stderr); the timeout is the last
    # resort, for the sporadic script.
    env = dict(os.environ, BENCH_CLIENT_WAIT='60', BENCH_CLIENT_WATCHDOG='90')
    with tempfile.TemporaryDirectory(prefix='dispynode-bench-deleg-') as d:
        try:
            p = subprocess.run([benchlib.venv_python(venv)] + [a.replace('PORT', str(node.port)) for a in argv],
                               cwd=d, capture_output=True, text=True, timeout=150, env=env)
        except subprocess.TimeoutExpired as e:
            raise ClientFailed('client timed out: %s' % str(e.stdout or '')[-300:]) from None
    line = [x for x in p.stdout.splitlines() if x.startswith('RESULT ')]
    if not line:
        raise ClientFailed('client failed: %s %s' % (p.stdout[-300:], p.stderr[-800:]))
    res = json.loads(line[0][7:])
    if strict and (res.get('lost', 0) or res.get('wrong', 0)):
        raise RuntimeError('lost or wrong results: %s' % res)
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--venv', default=benchlib.default_venv())
    ap.add_argument('--node-bin', default=benchlib.default_node_bin())
    ap.add_argument('--base-bin', help='a second build, run delegated too (A/B)')
    ap.add_argument('--reference', action='store_true',
                    help='the Python dispynode too (no cgroups; not the 1000 jobs, which wedge it)')
    ap.add_argument('--rounds', type=int, default=4)
    ap.add_argument('--out', default=os.path.join(benchlib.HERE, 'results', 'delegation.json'))
    args = ap.parse_args()
    if os.geteuid() != 0 or not benchlib.cgroup2_root():
        sys.exit('delegation.py needs root and a cgroup2 mount')
    wrap = benchlib.DELEGATED_WRAP
    configs = {'deleg': (args.node_bin, wrap), 'plain': (args.node_bin, [])}
    if args.base_bin:
        configs = {'base-deleg': (args.base_bin, wrap), **configs}
    if args.reference:
        configs['reference'] = (None, [])
    client = os.path.join(benchlib.HERE, 'client.py')
    sporadic = os.path.join(tempfile.mkdtemp(prefix='dispynode-bench-deleg-'), 'sporadic.py')
    with open(sporadic, 'w') as fd:
        fd.write(SPORADIC)
    work = {'seq_median_ms': ([client, 'seq', 'PORT', '200'], 'median_ms'),
            'jobs_per_s': ([client, 'jobs', 'PORT', '1000'], 'jobs_per_s'),
            'sporadic_median_ms': ([sporadic, 'PORT', '30', '0.05', 'function', benchlib.HERE],
                                   'median_ms'),
            'sporadic_prog_median_ms': ([sporadic, 'PORT', '30', '0.05', 'program', benchlib.HERE],
                                        'median_ms')}
    res = {name: {k: [] for k in work} for name in configs}
    wrong = {name: 0 for name in configs}  # the reference's (ours must have none)
    wedged = {name: 0 for name in configs}  # the reference's runs without a result, retried
    try:
        for rnd in range(args.rounds):
            for name, (binary, wrapper) in configs.items():
                ours = binary is not None

                def start():
                    return benchlib.Node('ours' if ours else 'ref', args.venv, binary, wrap=wrapper,
                                         python='/usr/bin/python3' if ours else None).start()
                node = start()
                try:
                    for key, (argv, field) in work.items():
                        if not ours and key == 'jobs_per_s':
                            continue
                        for attempt in range(3):
                            try:
                                r = run_workload(args.venv, node, argv, strict=ours)
                                break
                            except ClientFailed as e:
                                if ours:
                                    raise
                                # a wedged reference: counted, a fresh node, the run again
                                wedged[name] += 1
                                log('round %d %s %s: no result (%s), retrying on a fresh node'
                                    % (rnd, name, key, str(e)[:120].replace('\n', ' ')))
                                node.stop()
                                node = start()
                        else:
                            continue
                        res[name][key].append(r[field])
                        wrong[name] += r.get('wrong', 0) + r.get('lost', 0)
                    with open(node.log_path, errors='replace') as fd:
                        delegated = 'cgroup v2 delegated' in fd.read()
                    if ours and delegated != bool(wrapper):
                        raise RuntimeError('%s: delegated=%s: %s' % (name, delegated, node.log_tail()))
                finally:
                    node.stop()
                log('round %d %-10s %s' % (rnd, name, ', '.join('%s %.2f' % (k, v[-1]) for k, v in res[name].items() if v)))
    finally:
        benchlib.cleanup_delegated()
    summary = {name: {k: statistics.median(v) if v else None for k, v in r.items()}
               for name, r in res.items()}
    doc = {'summary': summary, 'runs': res, 'wrong_or_lost': wrong, 'wedged_retried': wedged, 'rounds': args.rounds, 'node_bin': args.node_bin,
           'base_bin': args.base_bin, 'machine': benchlib.machine_info(args.venv, args.node_bin)}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, 'w') as fd:
        json.dump(doc, fd, indent=1, sort_keys=True)
    print('%-12s %16s %12s %20s %25s' % ('config', 'seq median ms', 'jobs/s', 'sporadic median ms',
                                          'sporadic program median ms'))
    keys = ('seq_median_ms', 'jobs_per_s', 'sporadic_median_ms', 'sporadic_prog_median_ms')
    cell = lambda v, w: ('%*.2f' % (w, v)) if v is not None else '%*s' % (w, '-')  # noqa: E731
    for name, s in summary.items():
        print('%-12s %s %s %s %s  wrong/lost %d, wedged %d' % ((name,) + tuple(
            cell(s[k], w) for k, w in zip(keys, (16, 12, 20, 25))) + (wrong[name], wedged[name])))
    ref = summary.get('reference')
    if ref:
        # Latencies: how many times lower ours is (>1: ours better).
        for name in [n for n in summary if n != 'reference']:
            print('%s vs reference: %s' % (name, ', '.join(
                '%s %.2fx' % (k, ref[k] / summary[name][k]) for k in keys
                if ref[k] and summary[name][k])))


if __name__ == '__main__':
    main()
