#!/usr/bin/env python3
"""Soak: many runs of 1000 trivial function jobs against OUR node, every result checked.

    python3 bench/soak.py --venv V --node-bin B [--runs 50] [--jobs 1000] [--max-minutes 15] [--fresh]
                          [--delegated]

By default one node serves every run (one client process after the other, as
an operator's long-running node would), so leaks show up: after every run the
daemon's VmRSS, its open file descriptors and the processes left in its tree
are recorded.  --fresh starts a new node for every run instead.  --delegated runs our node
as the package does, with a cgroup per job (benchlib.DELEGATED_WRAP: root and a cgroup2
mount), and a run also counts as bad if any job or computation cgroup is left after it.

A run counts as bad if any job has no final reply (lost), a status other than
Finished, a result other than its argument, an exception or output (wrong), if
the client makes no progress for --stall seconds (wedged: killed and counted),
or if the node dies.  Stops after --runs runs or when the next run would not
fit in --max-minutes.  Writes bench/results/soak.json; exit status 0 only with
zero lost, wrong, wedged and failed runs.
"""

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib  # noqa: E402
from benchlib import log  # noqa: E402


def fd_count(pid):
    try:
        return len(os.listdir('/proc/%d/fd' % pid))
    except OSError:
        return None


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--venv', default=benchlib.default_venv())
    ap.add_argument('--node-bin', default=benchlib.default_node_bin())
    ap.add_argument('--runs', type=int, default=50)
    ap.add_argument('--jobs', type=int, default=1000)
    ap.add_argument('--max-minutes', type=float, default=15.0)
    ap.add_argument('--fresh', action='store_true', help='a new node for every run')
    ap.add_argument('--impl', default='ours', choices=('ours', 'ref'), help='ref: soak the reference instead')
    ap.add_argument('--delegated', action='store_true',
                    help='our node with a delegated cgroup subtree: a cgroup per job (root)')
    ap.add_argument('--stall', type=float, default=20.0)
    ap.add_argument('--timeout', type=float, default=300.0)
    ap.add_argument('--out', help='default: results/soak.json, results/soak-delegated.json '
                                  'with --delegated')
    args = ap.parse_args()
    if args.out is None:
        args.out = os.path.join(benchlib.HERE, 'results',
                                'soak-delegated.json' if args.delegated else 'soak.json')
    if not benchlib.venv_ok(args.venv):
        sys.exit('no dispy 4.15.2 in the venv %s (bench/run.sh makes one)' % args.venv)
    if args.delegated and (args.impl != 'ours' or os.geteuid() != 0 or not benchlib.cgroup2_root()):
        sys.exit('--delegated: our node only, as root, with a cgroup2 mount')

    t_start = time.time()
    budget = args.max_minutes * 60
    runs = []
    node = None
    try:
        for i in range(args.runs):
            elapsed = time.time() - t_start
            last = runs[-1]['elapsed'] if runs else 0
            if runs and elapsed + 1.3 * last + 5 > budget:
                log('stopping after %d runs: the next would not fit in %g minutes' % (len(runs), args.max_minutes))
                break
            if node is None or args.fresh or node.proc.poll() is not None:
                if node is not None:
                    node.stop()
                node = benchlib.Node(args.impl, args.venv, args.node_bin,
                                     wrap=benchlib.DELEGATED_WRAP if args.delegated else ()).start()
                node.start_sampler(0.1)
            t0 = time.time()
            run = benchlib.run_client(args.venv, 'jobs', node.port, args.jobs, timeout=args.timeout,
                                      stall=args.stall)
            res = run.result or {}
            time.sleep(0.3)    # let the node finish closing the computation
            table = benchlib.proc_table()
            alive = node.proc.poll() is None
            left = None
            if args.delegated and alive:
                # cgroups go once their processes have exited: give them a few seconds
                for _ in range(50):
                    left = benchlib.job_cgroups_left(node.pid)
                    if not left:
                        break
                    time.sleep(0.1)
            rec = {'run': i, 'elapsed': time.time() - t0, 'jobs_per_s': res.get('jobs_per_s'),
                   'n': res.get('n'), 'lost': res.get('lost'), 'wrong': res.get('wrong'),
                   'wrong_sample': res.get('wrong_sample'), 'wedged': run.wedged,
                   'timed_out': run.timed_out, 'error': run.error, 'node_alive': alive,
                   'daemon_rss_kb': benchlib.vmrss_kb(node.pid) if alive else None,
                   'daemon_fds': fd_count(node.pid) if alive else None,
                   'tree_procs': len(benchlib.tree_pids(node.pid, table)) if alive else None,
                   'client_util': res.get('client_util'), 'loadavg': benchlib.loadavg(),
                   'cgroups_left': left}
            if run.result is None:
                rec['client_stderr_tail'] = run.stderr_tail[-1500:]
                rec['client_log_tail'] = run.other_output[-20:]
                rec['node_log_tail'] = node.log_tail(30)
            bad = (run.result is None or res.get('lost') or res.get('wrong') or not alive or left)
            rec['bad'] = bool(bad)
            runs.append(rec)
            log('run %2d: %s %s jobs/s lost %s wrong %s rss %s KiB fds %s procs %s%s%s' % (
                i, 'BAD' if bad else 'ok', '%.0f' % rec['jobs_per_s'] if rec['jobs_per_s'] else '-',
                rec['lost'], rec['wrong'], rec['daemon_rss_kb'], rec['daemon_fds'], rec['tree_procs'],
                ' cgroups left %s' % left[:5] if left else '',
                ' WEDGED' if run.wedged else (' ERROR %s' % (run.error or '')[:200] if run.error else '')))
            if bad and node is not None:
                node.stop(keep=os.path.join(os.path.dirname(os.path.abspath(args.out)), 'logs',
                                            'soak-run%d.log' % i))
                node = None
    finally:
        if node is not None:
            node.stop()
        if args.delegated:
            benchlib.cleanup_delegated()
    ok = [r for r in runs if not r['bad']]
    rates = [r['jobs_per_s'] for r in ok if r['jobs_per_s']]
    rss = [r['daemon_rss_kb'] for r in runs if r['daemon_rss_kb']]
    fds = [r['daemon_fds'] for r in runs if r['daemon_fds']]
    summary = {
        'impl': args.impl, 'runs': len(runs), 'runs_requested': args.runs, 'jobs_per_run': args.jobs,
        'jobs_checked': sum(r['n'] or 0 for r in runs),
        'lost': sum(r['lost'] or 0 for r in runs), 'wrong': sum(r['wrong'] or 0 for r in runs),
        'wedged': sum(1 for r in runs if r['wedged']),
        'failed': sum(1 for r in runs if r['bad'] and not r['wedged']),
        'node_deaths': sum(1 for r in runs if not r['node_alive']),
        'jobs_per_s': {'median': statistics.median(rates), 'min': min(rates), 'max': max(rates)} if rates else None,
        'daemon_rss_kb': {'first': rss[0], 'last': rss[-1], 'max': max(rss)} if rss else None,
        'daemon_fds': {'first': fds[0], 'last': fds[-1], 'max': max(fds)} if fds else None,
        'one_node': not args.fresh, 'minutes': (time.time() - t_start) / 60,
        'delegated': args.delegated,
        'runs_with_cgroups_left': sum(1 for r in runs if r.get('cgroups_left')),
    }
    doc = {'summary': summary, 'runs': runs,
           'machine': benchlib.machine_info(args.venv, args.node_bin),
           'command': 'bench/soak.py ' + ' '.join(sys.argv[1:])}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, 'w') as fd:
        json.dump(doc, fd, indent=1, sort_keys=True)
    s = summary
    print('soak (%s node%s, %s): %d runs of %d jobs in %.1f min: %d jobs checked, lost %d, wrong %d, '
          'wedged %d, failed %d, node deaths %d' % (
              args.impl, ', a cgroup per job' if args.delegated else '',
              'one node for all runs' if s['one_node'] else 'fresh node per run', s['runs'],
              args.jobs, s['minutes'], s['jobs_checked'], s['lost'], s['wrong'], s['wedged'], s['failed'],
              s['node_deaths']))
    if s['jobs_per_s']:
        print('jobs/s median %.0f (min %.0f, max %.0f)' % (s['jobs_per_s']['median'], s['jobs_per_s']['min'],
                                                          s['jobs_per_s']['max']))
    if s['daemon_rss_kb']:
        print('daemon RSS after each run: first %d KiB, last %d KiB, max %d KiB; open fds first %s last %s' % (
            s['daemon_rss_kb']['first'], s['daemon_rss_kb']['last'], s['daemon_rss_kb']['max'],
            s['daemon_fds']['first'], s['daemon_fds']['last']))
    log('wrote %s' % args.out)
    if args.delegated:
        print('runs after which job cgroups were left: %d' % s['runs_with_cgroups_left'])
    bad = s['lost'] or s['wrong'] or s['wedged'] or s['failed'] or s['runs'] == 0
    sys.exit(1 if bad else 0)


if __name__ == '__main__':
    main()
