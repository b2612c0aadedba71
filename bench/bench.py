#!/usr/bin/env python3
"""Side-by-side benchmark of our dispynode and the original Python dispynode
(dispy 4.15.2), driven by the stock dispy 4.15.2 client.

    bench/run.sh [--rounds N] [--quick] [...]       (builds, makes the venv, runs this)
    python3 bench/bench.py --venv V --node-bin B [--rounds N] [--quick] [...]

For every round, every workload runs once against each node, the two nodes
alternating which goes first; every run gets a freshly started node (its
start-up time and idle RSS are measured each time) and its own client process
(client.py) with a hard timeout.  A run whose client makes no progress for
--stall seconds is a wedged run: it is counted, killed (client and node) and
retried with fresh processes, up to --retries times.

Results: one aligned text table on stdout (also bench/results/latest.txt) and
the same as JSON (bench/results/latest.json; --quick writes quick.*), with the
machine it ran on.  See bench/README.md for what every number means.
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib  # noqa: E402
from benchlib import log  # noqa: E402

WORKLOADS = ('jobs', 'seq', 'prog', 'depends', 'sendfile')
FULL = {'jobs': 1000, 'seq': 50, 'prog': 200, 'depends': 100, 'sendfile': 100}
QUICK = {'jobs': 200, 'seq': 20, 'prog': 50, 'depends': 20, 'sendfile': 20}
RAW_MODES = ('raw', 'stream', 'acked')
CLIENT_BOUND_MODES = ('depends', 'sendfile')


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def least(xs):
    xs = [x for x in xs if x is not None]
    return min(xs) if xs else None


def pct(xs, q):
    xs = sorted(x for x in xs if x is not None)
    if not xs:
        return None
    return xs[min(len(xs) - 1, max(0, int(round(q * len(xs))) - 1))]


# ---------------------------------------------------------------- one run

def one_run(args, impl, workload, param, rnd, attempt):
    """Fresh node + one client run.  Returns a record (dict)."""
    rec = {'impl': impl, 'workload': workload, 'param': param, 'round': rnd, 'attempt': attempt}
    if args.quiet_cores > 0:
        rec['quiet_wait_s'], rec['busy_cores_before'] = benchlib.wait_quiet(args.quiet_cores, args.quiet_wait)
    rec['loadavg'] = benchlib.loadavg()
    node = benchlib.Node(impl, args.venv, args.node_bin, cpus=args.cpus, python=args.our_python)
    try:
        node.start()
    except Exception as exc:
        rec['error'] = 'node start: %s' % exc
        node.stop()
        return rec
    keep = None
    try:
        rec['start_ms'] = node.start_ms
        rec['idle'] = node.idle_rss(args.idle_wait)
        # The sampler scans /proc (about 2 ms of CPU a time): in the latency runs it samples
        # less often, so that it does not compete with what it measures.
        # (the sequential run's window can be shorter than 0.25 s: PSS at every sample there)
        sampler = node.start_sampler(args.seq_sample_interval if workload == 'seq'
                                     else args.sample_interval, 1 if workload == 'seq' else None)
        busy0, bench_cpu0 = benchlib.cpu_busy()[0], time.process_time()
        run = benchlib.run_client(args.venv, workload, node.port, param, timeout=args.timeout,
                                  stall=args.stall, node_alive=node.alive)
        busy1, bench_cpu1 = benchlib.cpu_busy()[0], time.process_time()
        sampler.stop()
        rec.update(wedged=run.wedged, timed_out=run.timed_out, close_stalled=run.close_stalled,
                   progress=run.progress, client_status=run.status, client_elapsed=run.elapsed)
        if run.error:
            rec['error'] = run.error[:2000]
        if run.node_died or not node.alive():
            rec['error'] = 'the node exited (status %s) during the run: %s' % (
                node.proc.poll(), node.log_tail(3)[-300:])
            rec['wedged'] = False
        if run.result is None and not rec.get('error'):
            rec['error'] = 'no result (%s)' % ('wedged' if run.wedged else 'timeout' if run.timed_out
                                                else 'client exit %s' % run.status)
        if run.result is None:
            rec['client_stderr_tail'] = run.stderr_tail[-1500:]
            rec['client_log_tail'] = run.other_output[-20:]
            rec['node_log_tail'] = node.log_tail(20)
            keep = os.path.join(args.results_dir, 'logs', '%s-%s-r%d-a%d.log' % (impl, workload, rnd, attempt))
            rec['node_log'] = os.path.relpath(keep, benchlib.REPO)
        res = run.result or {}
        rec['result'] = {k: v for k, v in res.items() if k not in ('lat_ms',)}
        if 'lat_ms' in res:
            rec['lat_ms'] = res['lat_ms']
        # node CPU over the client's timed window (sampled, so +- one interval)
        if 't0' in res and 't1' in res:
            a, b = sampler.window(res['t0'], res['t1'])
            if a and b:
                wall = res['t1'] - res['t0']
                n = res.get('n') or 1
                cpu_root = b[4] - a[4]
                cpu_tree = b[5] - a[5]
                rec['node_cpu'] = {
                    'window_s': b[0] - a[0], 'daemon_s': cpu_root, 'tree_s': cpu_tree,
                    'daemon_ms_per_job': cpu_root / n * 1e3,
                    'others_ms_per_job': (cpu_tree - cpu_root) / n * 1e3,
                    'tree_ms_per_job': cpu_tree / n * 1e3,
                    'tree_util': cpu_tree / wall if wall > 0 else None,
                    'machine_busy_cores': (b[6] - a[6]) / (b[0] - a[0]) if b[0] > a[0] else None,
                }
                client_cpu = res.get('client_cpu') or 0
                other = (b[6] - a[6]) - cpu_tree - client_cpu
                rec['node_cpu']['foreign_cores'] = other / (b[0] - a[0]) if b[0] > a[0] else None
            # The sequential run's computation lives from before its first to after its last
            # timed job, and its window can be shorter than the sampling period.
            pad = sampler.interval if workload == 'seq' else 0.0
            rec['peak_rss_kb'], rec['peak_rss_daemon_kb'], rec['peak_procs'] = \
                sampler.peak_rss(res['t0'], res['t1'], pad)
            rec['median_rss_kb'] = sampler.median_rss(res['t0'], res['t1'])
            rec['peak_pss_kb'] = sampler.peak_pss(res['t0'], res['t1'], pad * sampler.pss_every)
        else:
            rec['peak_rss_kb'], rec['peak_rss_daemon_kb'], rec['peak_procs'] = sampler.peak_rss()
        rec['tree_exes'] = sampler.exes
        rec['machine_busy_cores_run'] = (busy1 - busy0) / run.elapsed if run.elapsed else None
        rec['bench_cpu_s'] = bench_cpu1 - bench_cpu0
        return rec
    finally:
        if impl == 'ours':
            rec['jobs_python'] = node.jobs_python()  # logged once it serves, after the start
        node.stop(keep=keep)


def run_with_retries(args, impl, workload, param, rnd):
    recs = []
    for attempt in range(args.retries + 1):
        rec = one_run(args, impl, workload, param, rnd, attempt)
        recs.append(rec)
        r = rec.get('result') or {}
        state = ('WEDGED at %s done' % rec.get('progress') if rec.get('wedged')
                 else 'ERROR %s' % rec['error'][:200] if rec.get('error') else 'ok')
        log('round %d %-8s %-4s attempt %d: %s %s' % (rnd, workload, impl, attempt, state, brief(workload, rec)))
        if rec.get('result') and not rec.get('error'):
            break
        if not (rec.get('wedged') or rec.get('timed_out') or rec.get('error')):
            break
    return recs


def brief(workload, rec):
    r = rec.get('result') or {}
    if workload in ('jobs', 'prog') and 'jobs_per_s' in r:
        return '%.0f jobs/s (client %.0f%% of a core), lost %s wrong %s' % (
            r['jobs_per_s'], 100 * r['client_util'], r['lost'], r['wrong'])
    if workload == 'seq' and 'median_ms' in r:
        return 'median %.2f ms p90 %.2f ms' % (r['median_ms'], r['p90_ms'])
    if workload == 'depends' and 'mb_per_s' in r:
        return '%.0f MB/s (first result after %.2fs)' % (r['mb_per_s'], r['first_result_s'])
    if workload == 'sendfile' and 'mb_per_s' in r and r['mb_per_s']:
        return '%.0f MB/s' % r['mb_per_s']
    return ''


def raw_copies(args, mib, repeat=3):
    """Each copy `repeat` times; the best one is the limit (the machine is shared). Also the
    client's own limit: dispy's real transfer code against a peer that costs next to nothing
    (bench/clientbound.py; the summary takes the median of all its tries, see summarize())."""
    out = {}
    d = tempfile.mkdtemp(prefix='dispynode-bench-raw-')
    copies = [('rawcopy.py', mode, mode) for mode in RAW_MODES] + \
        [('clientbound.py', mode, 'client_' + mode) for mode in CLIENT_BOUND_MODES]
    try:
        for script, mode, key in copies:
            tries = []
            for _ in range(repeat):
                sub = tempfile.mkdtemp(dir=d)
                try:
                    p = subprocess.run([benchlib.venv_python(args.venv), os.path.join(benchlib.HERE, script),
                                        mode, str(mib), sub], capture_output=True, text=True, timeout=120)
                    tries.append(json.loads(p.stdout.strip().splitlines()[-1]))
                except Exception as exc:
                    tries.append({'error': repr(exc)})
                subprocess.run(['rm', '-rf', sub], timeout=60)
            good = [t for t in tries if 'mb_per_s' in t]
            out[key] = dict(max(good, key=lambda t: t['mb_per_s'])) if good else tries[-1]
            out[key]['tries_mb_per_s'] = [t.get('mb_per_s') for t in tries]
    finally:
        subprocess.run(['rm', '-rf', d], timeout=60)
    return out


def floors(args, jobs_python=None):
    """bench/floors.py: the least CPU a function job (fork of the worker's Python, the function
    run in it, exit) and a program job (spawn + run of the script) cost here, whatever the node,
    measured with the interpreter our node ran its jobs with (``jobs_python``, from its log)."""
    python = (jobs_python or args.our_python
              or shutil.which('python3', path='/usr/local/bin:/usr/bin:/bin'))
    try:
        p = subprocess.run([sys.executable, os.path.join(benchlib.HERE, 'floors.py'), python],
                           capture_output=True, text=True, timeout=300)
        return json.loads(p.stdout.strip().splitlines()[-1])
    except Exception as exc:
        return {'error': repr(exc)}


# ---------------------------------------------------------------- summary

class Metric:
    def __init__(self, key, label, unit, better, fmt, target=None, note='', stat='median'):
        self.key, self.label, self.unit, self.better, self.fmt = key, label, unit, better, fmt
        self.target = target   # (kind, value): ('ratio', 5) / ('inv', 4) / ('raw', 0.9)
        self.note = note
        self.stat = stat       # which of the rounds' values a machine-wide row shows


def ok_recs(runs, impl, workload):
    return [r for r in runs if r['impl'] == impl and r['workload'] == workload
            and r.get('result') and not r.get('error')]


def summarize(runs, raws, params, floor_runs=(), cores=2):
    """metric key -> {impl: {'median', 'min', 'max', 'n', 'values'}}"""
    vals = {}

    def put(key, impl, v):
        if v is not None:
            vals.setdefault(key, {}).setdefault(impl, []).append(v)

    for impl in ('ref', 'ours'):
        for r in ok_recs(runs, impl, 'jobs'):
            res = r['result']
            put('jobs_per_s', impl, res['jobs_per_s'])
            put('jobs_client_cpu_ms', impl, res['client_cpu_per_job_ms'])
            put('jobs_client_util', impl, 100 * res['client_util'])
            nc = r.get('node_cpu') or {}
            put('jobs_node_daemon_ms', impl, nc.get('daemon_ms_per_job'))
            put('jobs_node_others_ms', impl, nc.get('others_ms_per_job'))
            put('jobs_node_util', impl, 100 * nc['tree_util'] if nc.get('tree_util') is not None else None)
            put('jobs_foreign_cores', impl, nc.get('foreign_cores'))
            put('peak_rss_mib', impl, r['peak_rss_kb'] / 1024 if r.get('peak_rss_kb') else None)
            put('peak_rss_daemon_mib', impl, r['peak_rss_daemon_kb'] / 1024 if r.get('peak_rss_daemon_kb') else None)
            put('peak_pss_mib', impl, r['peak_pss_kb'] / 1024 if r.get('peak_pss_kb') else None)
            put('peak_procs', impl, r.get('peak_procs'))
        lat = []
        for r in ok_recs(runs, impl, 'seq'):
            lat.extend(x for x in r.get('lat_ms') or [])
            put('seq_client_cpu_ms', impl, r['result']['client_cpu_per_job_ms'])
            put('seq_rss_mib', impl, r['peak_rss_kb'] / 1024 if r.get('peak_rss_kb') else None)
            put('seq_pss_mib', impl, r['peak_pss_kb'] / 1024 if r.get('peak_pss_kb') else None)
            nc = r.get('node_cpu') or {}
            put('seq_node_ms', impl, nc.get('tree_ms_per_job'))
        if lat:
            vals.setdefault('seq_median_ms', {})[impl] = [statistics.median(lat)]
            vals.setdefault('seq_p90_ms', {})[impl] = [pct(lat, 0.9)]
            for r in ok_recs(runs, impl, 'seq'):
                put('seq_round_median_ms', impl, r['result']['median_ms'])
        for r in ok_recs(runs, impl, 'prog'):
            res = r['result']
            put('prog_per_s', impl, res['jobs_per_s'])
            put('prog_client_cpu_ms', impl, res['client_cpu_per_job_ms'])
            put('prog_client_util', impl, 100 * res['client_util'])
            nc = r.get('node_cpu') or {}
            put('prog_node_ms', impl, nc.get('tree_ms_per_job'))
            put('prog_daemon_ms', impl, nc.get('daemon_ms_per_job'))
        for r in ok_recs(runs, impl, 'depends'):
            put('depends_mb_s', impl, r['result'].get('mb_per_s'))
            cu = r['result'].get('client_util')
            put('depends_client_util', impl, 100 * cu if cu is not None else None)
            put('depends_first_s', impl, r['result'].get('first_result_s'))
        for r in ok_recs(runs, impl, 'sendfile'):
            put('sendfile_mb_s', impl, r['result'].get('mb_per_s'))
            cu = r['result'].get('client_util')
            put('sendfile_client_util', impl, 100 * cu if cu is not None else None)
        for r in runs:
            if r['impl'] == impl:
                put('start_ms', impl, r.get('start_ms'))
                idle = r.get('idle') or {}
                put('idle_rss_mib', impl, idle['daemon_kb'] / 1024 if idle.get('daemon_kb') else None)
                put('idle_tree_mib', impl, idle['tree_kb'] / 1024 if idle.get('tree_kb') else None)
                for k in ('anon', 'file', 'pss'):
                    v = idle.get('daemon_%s_kb' % k)
                    put('idle_%s_mib' % k, impl, v / 1024 if v is not None else None)
                put('idle_procs', impl, idle.get('procs'))
    for mode in RAW_MODES:
        for raw in raws:
            if 'mb_per_s' in raw.get(mode, {}):
                put('raw_' + mode, 'both', raw[mode]['mb_per_s'])
    # The client's limit is compared with our node's single runs: every try counts (a single
    # 100 MiB transfer varies 2-3x here), not only each round's best.
    for mode in CLIENT_BOUND_MODES:
        for raw in raws:
            for v in (raw.get('client_' + mode) or {}).get('tries_mb_per_s') or []:
                put('raw_client_' + mode, 'both', v)
    for f in floor_runs:
        put('floor_fork_exit_ms', 'both', f.get('fork_exit_ms'))
        put('floor_fork_run_ms', 'both', f.get('fork_run_ms'))
        put('floor_cow_fault_us', 'both', f.get('cow_fault_us'))
        put('floor_fork_exit_per_mib_ms', 'both', f.get('fork_exit_ms_per_mib'))
        put('floor_spawn_sh_ms', 'both', f.get('spawn_sh_ms'))
        put('floor_protocol_ms', 'both', f.get('protocol_ms'))
    # The bounds of any node on these cores: the cores divided by the least CPU one job takes
    # whatever the node does -- the client's own CPU per job (the lower of its two medians),
    # the floor of the job's process and the kernel's side of the node's two TCP exchanges --
    # a node whose own code used no CPU at all would reach it.  The floors' least values over
    # the rounds: the host's speed drifts, and noise only ever adds to a floor.
    fork_run = least(vals.get('floor_fork_run_ms', {}).get('both', []))
    spawn_sh = least(vals.get('floor_spawn_sh_ms', {}).get('both', []))
    protocol = least(vals.get('floor_protocol_ms', {}).get('both', [])) or 0.0
    for w, times, floor in (('jobs', 5, fork_run), ('prog', 3, spawn_sh)):
        c = [median(v) for v in (vals.get(w + '_client_cpu_ms') or {}).values()]
        if not c or floor is None:
            continue
        vals[w + '_bound'] = {'both': [cores * 1e3 / (min(c) + floor + protocol)]}
        # What the target leaves a node per job on these cores beyond all that: a node whose
        # own work per job costs more cannot meet it here.
        ref = (vals.get('jobs_per_s' if w == 'jobs' else 'prog_per_s') or {}).get('ref')
        if ref:
            vals[w + '_budget'] = {'both': [cores * 1e3 / (times * median(ref)) - min(c) - floor
                                            - protocol]}
    out = {}
    for key, per in vals.items():
        out[key] = {impl: {'median': median(v), 'min': min(v), 'max': max(v), 'n': len(v),
                           'values': [round(x, 4) for x in v]} for impl, v in per.items()}
    # wedges, lost, wrong
    counts = {}
    for impl in ('ref', 'ours'):
        for w in WORKLOADS:
            rs = [r for r in runs if r['impl'] == impl and r['workload'] == w]
            if not rs:
                continue
            counts.setdefault(impl, {})[w] = {
                'runs': len(rs), 'wedged': sum(1 for r in rs if r.get('wedged')),
                'failed': sum(1 for r in rs if r.get('error') and not r.get('wedged')),
                'close_stalled': sum(1 for r in rs if r.get('close_stalled')),
                'lost': sum((r.get('result') or {}).get('lost', 0) for r in rs),
                'wrong': sum((r.get('result') or {}).get('wrong', 0) for r in rs),
                'jobs': sum((r.get('result') or {}).get('n', 0) or (1 if r.get('result') else 0) for r in rs),
            }
    return out, counts


# Both kinds of job make the same two TCP exchanges: one row, shown in both sections.
PROTOCOL_FLOOR = Metric('floor_protocol_ms', 'floor: node side of the 2 TCP exchanges (kernel)',
                        'ms CPU', None, '%.2f', stat='min')

METRICS = [
    ('Function jobs (%(jobs)d trivial jobs, cpus=2, submit all then wait all)', [
        Metric('jobs_per_s', 'throughput', 'jobs/s', 'higher', '%.0f', ('ratio', 5)),
        Metric('jobs_client_cpu_ms', '  client CPU per job', 'ms', None, '%.2f'),
        Metric('jobs_client_util', '  client CPU use (1 core = 100%%)', '%', None, '%.0f',
               note='near 100%: the client is the bound'),
        Metric('jobs_node_daemon_ms', '  node CPU per job: daemon', 'ms', 'lower', '%.2f'),
        Metric('jobs_node_others_ms', '  node CPU per job: worker+jobs', 'ms', 'lower', '%.2f'),
        Metric('jobs_node_util', '  node CPU use (2 cores = 200%%)', '%', None, '%.0f'),
        Metric('jobs_foreign_cores', '  other load on the machine', 'cores', None, '%.2f'),
        Metric('peak_rss_mib', '  peak RSS, node process tree', 'MiB', 'lower', '%.1f'),
        Metric('peak_rss_daemon_mib', '  peak RSS, daemon alone', 'MiB', 'lower', '%.1f'),
        Metric('peak_pss_mib', '  peak PSS, node process tree (shared pages split)', 'MiB',
               'lower', '%.1f'),
        Metric('floor_fork_exit_ms', 'floor: fork+exit of the worker Python', 'ms CPU', None, '%.2f',
               stat='min'),
        Metric('floor_fork_run_ms', 'floor: the same, running the function in it', 'ms CPU', None,
               '%.2f', stat='min'),
        Metric('floor_cow_fault_us', '  kernel: one copy-on-write page fault', 'us CPU',
               None, '%.1f'),
        Metric('floor_fork_exit_per_mib_ms', '  kernel: fork+exit, per MiB of the Python\'s memory',
               'ms CPU', None, '%.3f'),
        PROTOCOL_FLOOR,
        Metric('jobs_bound', 'bound, any node: cores/(client+floors)', 'jobs/s', None, '%.0f',
               ('bound', 5, 'jobs_per_s')),
        Metric('jobs_budget', 'node CPU left per job at 5x ref', 'ms', None, '%.2f',
               ('budget', 'jobs_node_daemon_ms')),
    ]),
    ('Sequential jobs (%(seq)d, submit -> result -> next)', [
        Metric('seq_median_ms', 'latency median', 'ms', 'lower', '%.2f', ('inv', 4)),
        Metric('seq_p90_ms', 'latency p90', 'ms', 'lower', '%.2f', ('inv', 4)),
        Metric('seq_client_cpu_ms', '  client CPU per job', 'ms', None, '%.2f'),
        Metric('seq_node_ms', '  node CPU per job (tree)', 'ms', 'lower', '%.2f'),
        Metric('seq_rss_mib', '  RSS with a computation, tree (peak)', 'MiB', 'lower', '%.1f'),
        Metric('seq_pss_mib', '  PSS with a computation, tree (peak)', 'MiB', 'lower', '%.1f'),
    ]),
    ('Program jobs (%(prog)d runs of a 2-line shell script)', [
        Metric('prog_per_s', 'throughput', 'jobs/s', 'higher', '%.0f', ('ratio', 3)),
        Metric('prog_client_cpu_ms', '  client CPU per job', 'ms', None, '%.2f'),
        Metric('prog_client_util', '  client CPU use (1 core = 100%%)', '%', None, '%.0f'),
        Metric('prog_node_ms', '  node CPU per job (tree)', 'ms', 'lower', '%.2f'),
        Metric('prog_daemon_ms', '  node CPU per job: daemon', 'ms', 'lower', '%.2f'),
        Metric('floor_spawn_sh_ms', 'floor: spawn+run of the script', 'ms CPU', None, '%.2f',
               stat='min'),
        PROTOCOL_FLOOR,
        Metric('prog_bound', 'bound, any node: cores/(client+floors)', 'jobs/s', None, '%.0f',
               ('bound', 3, 'prog_per_s')),
        Metric('prog_budget', 'node CPU left per job at 3x ref', 'ms', None, '%.2f',
               ('budget', 'prog_daemon_ms')),
    ]),
    ('Files (%(depends)d MiB)', [
        Metric('depends_mb_s', 'depends client->node', 'MB/s', 'higher', '%.0f', ('raw', 0.9)),
        Metric('depends_client_util', '  client CPU use during it', '%', None, '%.0f'),
        Metric('depends_first_s', '  cluster creation -> 1st result', 's', 'lower', '%.3f'),
        Metric('raw_client_depends', "  bound, any node: dispy's client, instant receiver", 'MB/s', None, '%.0f',
               ('client_bound', 'depends_mb_s')),
        Metric('sendfile_mb_s', 'dispy_send_file node->client', 'MB/s', 'higher', '%.0f', ('raw', 0.9)),
        Metric('sendfile_client_util', '  client CPU use during it', '%', None, '%.0f'),
        Metric('raw_client_sendfile', "  bound, any node: dispy's client, instant sender", 'MB/s', None, '%.0f',
               ('client_bound', 'sendfile_mb_s')),
        Metric('raw_raw', 'limit: raw loopback copy', 'MB/s', None, '%.0f'),
        Metric('raw_stream', 'bound, any node: file->file stream copy', 'MB/s', None, '%.0f',
               ('bound_raw', 0.9)),
        Metric('raw_acked', '  file->file, 1024000-byte chunks+acks', 'MB/s', None, '%.0f'),
    ]),
    ('Memory and start-up', [
        Metric('idle_rss_mib', 'idle RSS, daemon', 'MiB', 'lower', '%.1f', ('inv', 6)),
        Metric('idle_anon_mib', '  of which anonymous (heap, stacks)', 'MiB', 'lower', '%.1f'),
        Metric('idle_file_mib', '  of which file-backed (code, libs)', 'MiB', 'lower', '%.1f'),
        Metric('idle_pss_mib', '  idle PSS, daemon (shared pages split)', 'MiB', 'lower', '%.1f'),
        Metric('idle_tree_mib', '  idle RSS, whole tree', 'MiB', 'lower', '%.1f'),
        Metric('idle_procs', '  idle processes', '', None, '%.0f'),
        Metric('start_ms', 'start -> accepting TCP', 'ms', 'lower', '%.1f'),
    ]),
]


def fmt(m, v):
    return '-' if v is None else (m.fmt % v)


def render(summary, counts, machine, params, config, runs=()):
    raw = (summary.get('raw_raw') or {}).get('both', {}).get('median')
    rows = [('metric', 'unit', 'reference', 'ours', 'ours/ref', 'better', 'target')]
    sections = []
    for title, metrics in METRICS:
        sec = []
        for m in metrics:
            per = summary.get(m.key) or {}
            if 'both' in per:
                v = per['both'][m.stat]
                note = 'the limit' if m.key == 'raw_raw' else ''
                if m.target and m.target[0] == 'bound_raw' and raw:
                    # Receiving into a file, with no protocol at all: the most a node can do.
                    tv = m.target[1]
                    note = '%d%% raw = %.0f: %s' % (tv * 100, tv * raw, 'below the bound' if
                                                    tv * raw <= v else 'ABOVE the bound')
                if m.target and m.target[0] == 'bound':
                    # Can any node reach the target here? Compare the target with the bound.
                    _, times, key = m.target
                    ref = ((summary.get(key) or {}).get('ref') or {}).get('median')
                    if ref:
                        note = '%gx ref = %.0f: %s' % (times, times * ref, 'below the bound' if
                                                       times * ref <= v else 'ABOVE the bound')
                if m.target and m.target[0] == 'client_bound':
                    # The real client's code against a peer that does nothing else: how much
                    # of what the client allows ours reaches (>= 90 %: the client is the bound).
                    ours = ((summary.get(m.target[1]) or {}).get('ours') or {}).get('median')
                    if ours and v:
                        note = 'ours: %.0f%% of it%s' % (100 * ours / v, ': the client is the bound'
                                                         if ours >= 0.9 * v else '')
                if m.target and m.target[0] == 'budget':
                    # The daemon's protocol work alone (no Python, no job process) against it,
                    # less the kernel's TCP work the budget has already taken out.
                    own = ((summary.get(m.target[1]) or {}).get('ours') or {}).get('median')
                    tcp = ((summary.get('floor_protocol_ms') or {}).get('both') or {}).get('min')
                    if own is not None:
                        what = 'our daemon alone uses'
                        if tcp is not None:
                            own, what = own - tcp, 'our daemon, beyond its TCP floor:'
                        note = '%s %.2f: %s' % (what, own, 'within' if own <= v else 'over the budget')
                shown_ref = fmt(m, v)
                sec.append((m.label, m.unit, shown_ref, fmt(m, v), '', '', note))
                continue
            ref = (per.get('ref') or {}).get('median')
            ours = (per.get('ours') or {}).get('median')
            ratio = ours / ref if ref and ours is not None else None
            better = ''
            if ratio and m.better == 'higher':
                better = '%.2fx' % ratio
            elif ratio and m.better == 'lower':
                better = '%.2fx' % (1 / ratio) if ratio > 0 else 'inf'
            target = ''
            if m.target:
                kind, tv = m.target[:2]  # a bound or budget row without its data lands here too
                if kind == 'ratio' and ratio:
                    target = '>=%gx %s' % (tv, 'met' if ratio >= tv else 'NOT met')
                elif kind == 'inv' and ratio:
                    target = '<=1/%g %s' % (tv, 'met' if ratio <= 1 / tv else 'NOT met')
                elif kind == 'raw' and raw and ours:
                    target = '>=%d%% raw: %.0f%% %s' % (tv * 100, 100 * ours / raw,
                                                        'met' if ours >= tv * raw else 'NOT met')
            sec.append((m.label % (), m.unit, fmt(m, ref), fmt(m, ours),
                        '%.3f' % ratio if ratio is not None else '-', better, target))
        sections.append((title % params, sec))
    # runs, wedges, lost/wrong
    sec = []
    for w in WORKLOADS:
        c = {impl: (counts.get(impl) or {}).get(w) for impl in ('ref', 'ours')}
        if not any(c.values()):
            continue

        def wtxt(x):
            return '-' if not x else '%d of %d' % (x['wedged'], x['runs'])

        def etxt(x):
            return '-' if not x else '%d/%d/%d' % (x['failed'], x['lost'], x['wrong'])
        sec.append(('wedged runs: %s' % w, '', wtxt(c['ref']), wtxt(c['ours']), '', '', ''))
        sec.append(('  failed runs/lost/wrong: %s' % w, '', etxt(c['ref']), etxt(c['ours']), '', '', ''))
    sections.append(('Reliability (wedged = no progress for %gs: killed, counted, retried)' % config['stall'], sec))
    widths = [max(len(r[i]) for r in rows + [x for _, s in sections for x in s]) for i in range(7)]

    def line(r):
        cells = []
        for i, c in enumerate(r):
            cells.append(c.ljust(widths[i]) if i in (0, 1, 6) else c.rjust(widths[i]))
        return '  '.join(cells).rstrip()
    out = []
    out.append('dispynode benchmark: reference = dispy %s dispynode.py, ours = %s' %
               (machine.get('dispy'), os.path.relpath(machine['node_bin'], benchlib.REPO)
                if machine['node_bin'].startswith(benchlib.REPO) else machine['node_bin']))
    out.append('machine: %d CPUs (%s), %s, kernel %s, Python %s, %s MiB RAM, load %s at start' % (
        machine['nproc'], machine['cpu_model'], machine['os'], machine['kernel'], machine['python'],
        machine['mem_total_mib'], ' '.join('%.2f' % x for x in machine['loadavg_start'])))
    if machine.get('our_jobs_python'):
        out.append('Python: the client and the reference node %s, our node\'s jobs %s%s' % (
            machine['python_path'], machine['our_jobs_python'],
            '' if machine.get('same_python') else '  WARNING: not the same interpreter'))
    out.append('git %s%s; %d round(s), medians over rounds; command: %s' % (
        machine['git_commit'], ' (src modified)' if machine.get('src_dirty') else '',
        config['rounds'], config['command']))
    busy = [r.get('busy_cores_before') for r in runs if r.get('busy_cores_before') is not None]
    if busy:
        out.append('machine busy before each run (other processes): median %.2f cores, max %.2f; runs wait '
                   'up to %gs for <= %g busy cores' % (median(busy), max(busy), config['quiet_wait'],
                                                       config['quiet_cores']))
    out.append('')
    out.append(line(rows[0]))
    out.append('  '.join('-' * w for w in widths))
    for title, sec in sections:
        out.append(title)
        for r in sec:
            out.append(line(r))
    out.append('')
    out.append('better = how many times better ours is (>1: ours better). RSS = sum of VmRSS over the process')
    out.append('tree (shared pages counted per process). Our daemon forks no Python until a computation')
    out.append('arrives: its idle tree is the daemon alone; the per-computation Python worker shows up in')
    out.append('"RSS with a computation" and in the peak.  Client CPU is the client process\'s own CPU time')
    out.append('(getrusage) over the timed window; "other load" is CPU used on the machine by anything')
    out.append('but the node, the client and the bench (other processes: noise).  Floors are the least')
    out.append('value of the rounds (noise only adds to a floor); a bound divides the cores by the client\'s')
    out.append('CPU per job plus the floors a job of that kind needs, whatever the node.')
    return '\n'.join(out)


# ---------------------------------------------------------------- main

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--venv', default=benchlib.default_venv(), help='venv with dispy 4.15.2')
    ap.add_argument('--node-bin', default=benchlib.default_node_bin(), help='our dispynode binary')
    ap.add_argument('--rounds', type=int, default=3)
    ap.add_argument('--quick', action='store_true', help='1 round of small workloads (smoke test)')
    ap.add_argument('--only', default=','.join(WORKLOADS), help='comma-separated subset of %s' % (WORKLOADS,))
    ap.add_argument('--impl', default='both', choices=('both', 'ours', 'ref'))
    ap.add_argument('--cpus', type=int, default=2)
    ap.add_argument('--our-python', help="our node's --python (default: its own default, python3)")
    ap.add_argument('--stall', type=float, default=20.0, help='seconds without progress = wedged')
    ap.add_argument('--timeout', type=float, default=240.0, help='hard timeout of one client run')
    ap.add_argument('--retries', type=int, default=4, help='retries of a wedged/failed run')
    ap.add_argument('--idle-wait', type=float, default=1.0, help='seconds idle before reading idle RSS')
    ap.add_argument('--sample-interval', type=float, default=0.02)
    ap.add_argument('--seq-sample-interval', type=float, default=0.1,
                    help='sample interval of the sequential (latency) runs')
    ap.add_argument('--jobs', type=int, help='override the number of function jobs')
    ap.add_argument('--quiet-cores', type=float, default=0.5,
                    help='before each run, wait until other processes use at most this many cores '
                         '(measured over 1 s; 0: do not wait)')
    ap.add_argument('--quiet-wait', type=float, default=30.0, help='longest wait for a quiet machine (s)')
    ap.add_argument('--out', help='JSON output (default bench/results/latest.json, quick.json with --quick)')
    args = ap.parse_args()

    params = dict(QUICK if args.quick else FULL)
    if args.jobs:
        params['jobs'] = args.jobs
    rounds = 1 if args.quick and args.rounds == 3 else args.rounds
    workloads = [w for w in args.only.split(',') if w]
    for w in workloads:
        if w not in WORKLOADS:
            ap.error('unknown workload %r' % w)
    impls = ['ref', 'ours'] if args.impl == 'both' else [args.impl]
    out_json = args.out or os.path.join(benchlib.HERE, 'results', 'quick.json' if args.quick else 'latest.json')
    args.results_dir = os.path.dirname(os.path.abspath(out_json))
    os.makedirs(args.results_dir, exist_ok=True)
    if not benchlib.venv_ok(args.venv):
        sys.exit('no dispy 4.15.2 in the venv %s (bench/run.sh makes one)' % args.venv)
    if 'ours' in impls and not os.access(args.node_bin, os.X_OK):
        sys.exit('our node binary %s is missing (cargo build --release)' % args.node_bin)
    st = os.statvfs(tempfile.gettempdir())
    need = 4 * max(params['depends'], params['sendfile']) * (1 << 20) + (1 << 30)
    if st.f_bavail * st.f_frsize < need:
        sys.exit('not enough free space in %s (%d MiB needed)' % (tempfile.gettempdir(), need >> 20))

    machine = benchlib.machine_info(args.venv, args.node_bin)
    config = {'rounds': rounds, 'params': params, 'workloads': workloads, 'impls': impls,
              'cpus': args.cpus, 'our_python': args.our_python, 'stall': args.stall, 'timeout': args.timeout, 'retries': args.retries,
              'idle_wait': args.idle_wait, 'sample_interval': args.sample_interval,
              'seq_sample_interval': args.seq_sample_interval,
              'quiet_cores': args.quiet_cores, 'quiet_wait': args.quiet_wait,
              'command': 'bench/run.sh ' + ' '.join(sys.argv[1:]) if os.environ.get('BENCH_VIA_RUN_SH')
              else ' '.join(['bench/bench.py'] + sys.argv[1:])}
    log('machine: %s' % json.dumps(machine))
    runs, raws = [], []
    t_start = time.time()
    floor_runs = []
    for rnd in range(rounds):
        for wi, w in enumerate(workloads):
            order = impls if (rnd + wi) % 2 == 0 else impls[::-1]
            for impl in order:
                runs.extend(run_with_retries(args, impl, w, params[w], rnd))
        if 'jobs' in workloads or 'prog' in workloads:
            # After the round's runs: by then our node has said which interpreter it runs.
            jobs_python = next((r['jobs_python'] for r in reversed(runs)
                                if r.get('jobs_python')), None)
            floor_runs.append(floors(args, jobs_python))
            log('round %d floors: %s' % (rnd, floor_runs[-1]))
        if 'depends' in workloads or 'sendfile' in workloads:
            raw = raw_copies(args, params['depends'])
            raws.append(raw)
            log('round %d raw copies: %s' % (rnd, ', '.join(
                '%s %.0f MB/s' % (m, raw[m]['mb_per_s'])
                for m in RAW_MODES + tuple('client_' + c for c in CLIENT_BOUND_MODES)
                if 'mb_per_s' in raw.get(m, {}))))
    machine['loadavg_end'] = benchlib.loadavg()
    machine['bench_minutes'] = (time.time() - t_start) / 60
    # The reference node runs on the venv's interpreter, ours runs its jobs on the one it
    # resolved: two different builds (a distribution's optimised one against an unoptimised
    # one, say) would measure the interpreters as much as the nodes.
    ours_py = sorted({r['jobs_python'] for r in runs if r.get('jobs_python')})
    machine['our_jobs_python'] = ', '.join(ours_py) or None
    machine['same_python'] = ours_py == [machine['python_path']] if ours_py else None
    if machine['same_python'] is False:
        log('WARNING: the reference runs on %s, our jobs on %s: not the same interpreter'
            % (machine['python_path'], machine['our_jobs_python']))
    summary, counts = summarize(runs, raws, params, floor_runs, args.cpus)
    table = render(summary, counts, machine, params, config, runs)
    doc = {'machine': machine, 'config': config, 'summary': summary, 'counts': counts,
           'raw_copies': raws, 'floors': floor_runs, 'runs': runs, 'table': table.splitlines()}
    with open(out_json, 'w') as fd:
        json.dump(doc, fd, indent=1, sort_keys=True)
    with open(out_json[:-5] + '.txt' if out_json.endswith('.json') else out_json + '.txt', 'w') as fd:
        fd.write(table + '\n')
    print(table)
    log('wrote %s' % out_json)


if __name__ == '__main__':
    main()
