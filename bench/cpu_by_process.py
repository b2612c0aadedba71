#!/usr/bin/env python3
"""Where a node's CPU goes, process by process, while the real client runs a workload.

    python3 bench/cpu_by_process.py [--venv V] [--node-bin B] [--mode jobs] [--n 1000] [--rounds 3]

Starts our node fresh for each round, samples /proc every 50 ms during the client's run
and prints, per job, the CPU of each process of the node's tree that lived through most of
the timed part: its own time and what it reaped (for function jobs: the daemon, the Python
worker, and the zygote, which reaps the job processes; so the zygote's "reaped" column is
the job processes' CPU; for program jobs the spawner, which reaps them).  Samples are taken inside the timed part and scaled to it.
"""

import argparse
import os
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib  # noqa: E402


def role(pid, node_pid, table):
    """What a process of the node's tree is (read while it runs: its cmdline goes with it)."""
    if pid == node_pid:
        return 'daemon'
    try:
        with open('/proc/%d/cmdline' % pid, 'rb') as fd:
            argv = fd.read().split(b'\0')
    except OSError:
        argv = []
    if b'__spawner' in argv:
        return 'spawner'
    if table[pid][0] == node_pid:
        return 'worker'
    if table.get(table[pid][0], (None,))[0] == node_pid:
        return 'zygote'
    return 'pid %d' % pid


def one_round(venv, node_bin, mode, n):
    node = benchlib.Node('ours', venv, node_bin).start()
    samples, stop, roles = [], threading.Event(), {}

    def sampler():
        while not stop.is_set():
            table = benchlib.proc_table()
            samples.append((time.time(), table))
            for pid in benchlib.tree_pids(node.pid, table):
                if (pid, table[pid][4]) not in roles:
                    roles[pid, table[pid][4]] = role(pid, node.pid, table)
            time.sleep(0.05)

    th = threading.Thread(target=sampler, daemon=True)
    th.start()
    try:
        run = benchlib.run_client(venv, mode, node.port, n, timeout=240, stall=20,
                                  node_alive=node.alive)
    finally:
        stop.set()
        th.join()
        node.stop()
    res = run.result
    if not res:
        return 'FAILED %s' % run.error
    t0, t1 = res['t0'], res['t1']
    inside = [s for s in samples if t0 <= s[0] <= t1]
    if len(inside) < 2:
        return 'too short to sample'
    # Per process, from the first to the last sample of the timed part that has it (the
    # zygote starts after the first job), scaled to the jobs of that interval.
    last = inside[-1][1]
    parts = []
    for pid in benchlib.tree_pids(node.pid, last):
        have = [(t, tab[pid]) for t, tab in inside if pid in tab and tab[pid][4] == last[pid][4]]
        if len(have) < 2 or have[-1][0] - have[0][0] < 0.2 * (t1 - t0):
            continue  # short-lived: counted in what its parent reaped
        (ta, a), (tb, b) = have[0], have[-1]
        jobs = n * (tb - ta) / (t1 - t0)
        parts.append('%s %.3f (reaped %.3f)' % (
            roles.get((pid, b[4]), '?'), (b[1] - a[1]) / jobs * 1e3, (b[2] - a[2]) / jobs * 1e3))
    rate = res.get('jobs_per_s')
    return '%s ms CPU per job: %s' % ('%.0f jobs/s;' % rate if rate else '', ', '.join(parts))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--venv', default=benchlib.default_venv())
    ap.add_argument('--node-bin', default=benchlib.default_node_bin())
    ap.add_argument('--mode', default='jobs', help='a bench/client.py workload: jobs, prog')
    ap.add_argument('--n', type=int, default=1000)
    ap.add_argument('--rounds', type=int, default=3)
    args = ap.parse_args()
    for rnd in range(args.rounds):
        benchlib.wait_quiet(0.5, 15)
        print('round %d: %s' % (rnd, one_round(args.venv, args.node_bin, args.mode, args.n)),
              flush=True)


if __name__ == '__main__':
    main()
