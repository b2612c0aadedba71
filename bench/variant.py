#!/usr/bin/env python3
"""End-to-end what-if: our node with a patched Python worker vs our node as it is.

    python3 bench/variant.py --venv V --node-bin B --variant inline [--variant-bin B2] [--rounds 3]

Builds (unless --variant-bin is given) a copy of the repository whose
runner/dispynode_job.py is patched in memory with one of worker_micro.py's
variants (`inline`: jobs run in the worker itself, no fork per job -- the
ceiling of anything that makes the job process cheaper; `gc-freeze`, `no-zygote`,
`no-warm-up`, `prefork-pool` with --modes seq --seq-pause 3), into its own target directory
(--target-dir, default target/bench-variants), then runs the 1000-job and the
sequential workloads (--modes; the 1000 jobs with the CPU per job of the node's tree and of its
daemon; also `prog`, 200 program jobs, with the node tree's CPU per
job, and `depends`/`sendfile`, --mib MiB each way) against both binaries, alternating, --rounds times.
The repository itself is not changed.  Writes bench/results/variant-<name>.json.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib  # noqa: E402
import worker_micro  # noqa: E402
from benchlib import log  # noqa: E402


def build_variant(variant, target_dir):
    src_dir = tempfile.mkdtemp(prefix='dispynode-bench-variant-src-')
    files = subprocess.run(['git', '-C', benchlib.REPO, 'ls-files', '-co', '--exclude-standard'],
                           capture_output=True, text=True, check=True, timeout=60).stdout.split('\n')
    files = [f for f in files if f and not f.startswith('bench/results') and os.path.isfile(os.path.join(benchlib.REPO, f))]
    subprocess.run(['tar', '-cf', os.path.join(src_dir, 'src.tar'), '-C', benchlib.REPO] + files,
                   check=True, timeout=300)
    subprocess.run(['tar', '-xf', 'src.tar'], cwd=src_dir, check=True, timeout=300)
    runner = os.path.join(src_dir, 'runner', 'dispynode_job.py')
    with open(runner) as fd:
        src = fd.read()
    variants = worker_micro.variants(src)
    if variant not in variants:
        sys.exit('variant %r does not apply to this runner (have %s)' % (variant, sorted(variants)))
    with open(runner, 'w') as fd:
        fd.write(variants[variant])
    log('building the %s variant in %s (target %s)' % (variant, src_dir, target_dir))
    env = dict(os.environ, CARGO_TARGET_DIR=target_dir)
    # Built like the packages' binary (packaging/lib.sh), which the benchmark measures.
    out = subprocess.run(['bash', '-c', '. packaging/lib.sh && build_release >&2 && echo "$BIN"'],
                         cwd=src_dir, env=env, check=True, timeout=3600, stdout=subprocess.PIPE,
                         text=True).stdout.strip()
    subprocess.run(['rm', '-rf', src_dir], timeout=120)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--venv', default=benchlib.default_venv())
    ap.add_argument('--node-bin', default=benchlib.default_node_bin())
    ap.add_argument('--variant', default='inline')
    ap.add_argument('--variant-bin', help='an already built variant binary (skips the build)')
    ap.add_argument('--target-dir', default=os.path.join(benchlib.REPO, 'target', 'bench-variants'))
    ap.add_argument('--rounds', type=int, default=3)
    ap.add_argument('--jobs', type=int, default=1000)
    ap.add_argument('--seq', type=int, default=50)
    ap.add_argument('--prog', type=int, default=200)
    ap.add_argument('--mib', type=int, default=100, help='MiB of the depends and sendfile workloads')
    ap.add_argument('--modes', default='jobs,seq',
                    help='workloads to run: jobs, seq, prog, depends, sendfile (comma-separated)')
    ap.add_argument('--seq-pause', type=float, default=0.0,
                    help='seconds the sequential client waits after its first job (prefork-pool)')
    ap.add_argument('--out')
    args = ap.parse_args()
    modes = [m for m in (('jobs', args.jobs), ('seq', args.seq), ('prog', args.prog),
                         ('depends', args.mib), ('sendfile', args.mib))
             if m[0] in args.modes.split(',')]
    vbin = args.variant_bin or build_variant(args.variant, args.target_dir)
    bins = {'as-is': args.node_bin, args.variant: vbin}
    runs = []
    for rnd in range(args.rounds):
        for name in (list(bins) if rnd % 2 == 0 else list(bins)[::-1]):
            for mode, n in modes:
                benchlib.wait_quiet(0.5, 15)
                node = benchlib.Node('ours', args.venv, bins[name]).start()
                sampler = node.start_sampler(0.05) if mode in ('prog', 'jobs') else None
                try:
                    r = benchlib.run_client(args.venv, mode, node.port, n, timeout=240, stall=20,
                                            node_alive=node.alive,
                                            env={'BENCH_SEQ_PAUSE': str(args.seq_pause)})
                finally:
                    if sampler:
                        sampler.stop()
                    node.stop()
                res = r.result or {}
                if sampler and res:
                    # CPU of the node's whole tree (what it reaped included) per program job.
                    a, b = sampler.window(res['t0'], res['t1'])
                    if a and b:
                        res['node_cpu_ms_per_job'] = (b[5] - a[5]) / n * 1e3
                        res['daemon_cpu_ms_per_job'] = (b[4] - a[4]) / n * 1e3
                rec = {'round': rnd, 'binary': name, 'mode': mode, 'error': r.error, 'wedged': r.wedged,
                       'result': {k: v for k, v in res.items() if k != 'lat_ms'}, 'lat_ms': res.get('lat_ms')}
                runs.append(rec)
                log('round %d %-12s %-4s %s' % (rnd, name, mode,
                                                 '%.0f jobs/s, client %.0f%% of a core, node %.2f (daemon %.2f) ms CPU per job' % (
                                                     res['jobs_per_s'], 100 * res['client_util'],
                                                     res.get('node_cpu_ms_per_job', float('nan')),
                                                     res.get('daemon_cpu_ms_per_job', float('nan')))
                                                 if mode == 'jobs' and res else
                                                 '%.0f jobs/s, node %.2f ms CPU per job' % (res['jobs_per_s'], res.get('node_cpu_ms_per_job', float('nan')))
                                                 if mode == 'prog' and res else
                                                 '%.0f MB/s' % res['mb_per_s'] if mode in ('depends', 'sendfile') and res.get('mb_per_s') else
                                                 'median %.2f ms' % res['median_ms'] if res else 'FAILED %s' % r.error))
    summary = {}
    for name in bins:
        rates = [r['result']['jobs_per_s'] for r in runs if r['binary'] == name and r['mode'] == 'jobs' and r['result']]
        utils = [r['result']['client_util'] for r in runs if r['binary'] == name and r['mode'] == 'jobs' and r['result']]
        jobs_cpu = [(r['result']['node_cpu_ms_per_job'], r['result']['daemon_cpu_ms_per_job'])
                    for r in runs if r['binary'] == name and r['mode'] == 'jobs' and r['result']
                    and 'node_cpu_ms_per_job' in r['result']]
        lat = [x for r in runs if r['binary'] == name and r['mode'] == 'seq' and r['lat_ms'] for x in r['lat_ms']]
        prog = [r['result'] for r in runs if r['binary'] == name and r['mode'] == 'prog' and r['result']]
        prog_cpu = [p['node_cpu_ms_per_job'] for p in prog if 'node_cpu_ms_per_job' in p]
        files = {m: [r['result']['mb_per_s'] for r in runs if r['binary'] == name and r['mode'] == m
                     and r['result'] and r['result'].get('mb_per_s')] for m in ('depends', 'sendfile')}
        summary[name] = {'jobs_per_s': statistics.median(rates) if rates else None,
                         'depends_mb_per_s': statistics.median(files['depends']) if files['depends'] else None,
                         'sendfile_mb_per_s': statistics.median(files['sendfile']) if files['sendfile'] else None,
                         'prog_jobs_per_s': statistics.median(p['jobs_per_s'] for p in prog) if prog else None,
                         'prog_node_cpu_ms_per_job': statistics.median(prog_cpu) if prog_cpu else None,
                         'client_util': statistics.median(utils) if utils else None,
                         'jobs_node_cpu_ms_per_job': statistics.median(c[0] for c in jobs_cpu) if jobs_cpu else None,
                         'jobs_daemon_cpu_ms_per_job': statistics.median(c[1] for c in jobs_cpu) if jobs_cpu else None,
                         'seq_median_ms': statistics.median(lat) if lat else None,
                         'seq_p90_ms': sorted(lat)[int(0.9 * len(lat)) - 1] if lat else None}
    out = args.out or os.path.join(benchlib.HERE, 'results', 'variant-%s.json' % args.variant)
    with open(out, 'w') as fd:
        json.dump({'summary': summary, 'runs': runs, 'variant': args.variant, 'bins': bins,
                   'machine': benchlib.machine_info(args.venv, args.node_bin)}, fd, indent=1, sort_keys=True)
    for name, s in summary.items():
        print('%-14s %6s jobs/s (client %s of a core, node %s ms CPU per job, daemon %s)   sequential median %s ms, p90 %s ms   '
              'program jobs %s jobs/s, node %s ms CPU per job   depends %s MB/s, sendfile %s MB/s' % (
                  name, '%.0f' % s['jobs_per_s'] if s['jobs_per_s'] else '-',
                  '%.0f%%' % (100 * s['client_util']) if s['client_util'] else '-',
                  '%.2f' % s['jobs_node_cpu_ms_per_job'] if s['jobs_node_cpu_ms_per_job'] else '-',
                  '%.2f' % s['jobs_daemon_cpu_ms_per_job'] if s['jobs_daemon_cpu_ms_per_job'] else '-',
                  '%.2f' % s['seq_median_ms'] if s['seq_median_ms'] else '-',
                  '%.2f' % s['seq_p90_ms'] if s['seq_p90_ms'] else '-',
                  '%.0f' % s['prog_jobs_per_s'] if s['prog_jobs_per_s'] else '-',
                  '%.2f' % s['prog_node_cpu_ms_per_job'] if s['prog_node_cpu_ms_per_job'] else '-',
                  '%.0f' % s['depends_mb_per_s'] if s['depends_mb_per_s'] else '-',
                  '%.0f' % s['sendfile_mb_per_s'] if s['sendfile_mb_per_s'] else '-'))
    log('wrote %s' % out)


if __name__ == '__main__':
    main()
