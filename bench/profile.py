#!/usr/bin/env python3
"""Where the time goes when OUR node runs N trivial function jobs.

    python3 bench/profile.py --venv V --node-bin B [--jobs 1000] [--out bench/results/profile.json]

Starts our node, then runs the `jobs` workload of client.py while
`perf record -a -g` samples every CPU (cpu-clock, 999 Hz; works without
hardware counters).  The perf data's fork events rebuild the process tree, so
every sample is charged to one role:

    daemon   the Rust dispynode process (all its threads)
    worker   the per-computation Python worker (the daemon's python child)
    jobs     the job processes the worker forks (one per job)
    programs (--workload prog) the daemon's children: its spawner (and the jail helper, if used)
    program children  (--workload prog) the program jobs the spawner forks, split into
             "before exec" (the forked copy of the spawner: its jail steps and the execve up
             to the new image, still under the spawner's comm) and "after exec" (the program)
    client   the dispy client process
    other    everything else on the machine (other users' load: noise)

For each role it reports CPU ms per job, the share spent in the kernel, the
inclusive share of a few telling kernel paths (fork, exit/munmap, page
faults, exec, pipes/sockets) and the top symbols.  Without perf it still
reports the per-role CPU from /proc (daemon vs worker+jobs) and the client's
own getrusage.
"""

import argparse
import collections
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib  # noqa: E402
from benchlib import log  # noqa: E402

MARKERS = [   # (label, regex on a frame's symbol): inclusive shares
    ('fork (copy_process)', r'^(copy_process|dup_mm|copy_page_range|dup_mmap)'),
    ('exit + unmap (do_exit/exit_mmap)', r'^(do_exit|exit_mmap|unmap_vmas|mmput)$'),
    ('page faults', r'^(exc_page_fault|handle_mm_fault|do_wp_page|wp_page_copy)$'),
    ('wait/signals', r'^(do_wait|kernel_waitid|__x64_sys_wait4|get_signal|do_signal)'),
    ('pipe read/write', r'^(pipe_read|pipe_write)$'),
    ('TCP (tcp_sendmsg/recvmsg/connect/accept)', r'^(tcp_sendmsg|tcp_recvmsg|__sys_connect|__sys_accept4|tcp_v4_connect|inet_accept)'),
    ('socket close/teardown', r'^(tcp_close|__sock_release|inet_release)$'),
    ('file create/unlink (openat/unlinkat)', r'^(do_sys_openat2|do_unlinkat)$'),
    ('ext4 file writes', r'^ext4_file_write_iter$'),
    ('/proc reads', r'^(do_task_stat|proc_pid_status|proc_single_show|proc_pid_cmdline_read)$'),
    ('fsync', r'^(do_fsync|vfs_fsync_range|__x64_sys_fsync|__x64_sys_fdatasync)$'),
    ('execve of the jail/program', r'^(do_execveat_common)'),
    ('epoll/poll/select', r'^(do_epoll_wait|ep_poll|do_sys_poll|do_select|core_sys_select)'),
    ('scheduler (schedule)', r'^(schedule|__schedule)$'),
    ('Python eval loop', r'^_PyEval_EvalFrameDefault$'),
    ('Python GC', r'^(gc_collect_main|collect|gc_collect_region|_PyGC_Collect)'),
    ('pickle', r'@_pickle'),
    ('json', r'@_json'),
    ('import / compile', r'^(_PyImport|PyImport_|_PyParser|_PyPegen|_PyAST_Compile|compiler_)'),
]


def parse_perf(script_out):
    """Yields ('fork', child, parent) and ('sample', pid, comm, period_ns, frames)."""
    fork_re = re.compile(r'PERF_RECORD_(?:FORK|COMM)')
    head_re = re.compile(r'^\s*(.+?)\s+(\d+)/(\d+)\s+(?:[\d.]+:\s+)?(\d+)\s*(?:\S+:)?\s*$')
    fk = re.compile(r'PERF_RECORD_FORK\((\d+):(\d+)\):\((\d+):(\d+)\)')
    cur = None
    for line in script_out:
        line = line.rstrip('\n')
        if 'PERF_RECORD_FORK' in line:
            m = fk.search(line)
            if m:
                yield ('fork', int(m.group(1)), int(m.group(3)))
            continue
        if fork_re.search(line) or 'PERF_RECORD' in line:
            continue
        if not line.strip():
            if cur:
                yield cur
                cur = None
            continue
        if line.startswith('\t') or line.startswith(' ' * 8):
            if cur is not None:
                parts = line.strip().split(None, 1)
                if len(parts) == 2:
                    sym = parts[1]
                    dso = ''
                    if sym.endswith(')') and ' (' in sym:
                        sym, dso = sym.rsplit(' (', 1)
                        dso = dso[:-1]
                    sym = re.sub(r'\+0x[0-9a-f]+$', '', sym)
                    cur[4].append((sym, dso))
            continue
        m = head_re.match(line)
        if m:
            if cur:
                yield cur
            cur = ['sample', int(m.group(2)), m.group(1), int(m.group(4)), []]
    if cur:
        yield cur


def classify(events, daemon, client, child_role='worker', grandchild_role='jobs'):
    parent = {}
    samples = []
    for ev in events:
        if ev[0] == 'fork':
            if ev[1] != ev[2]:
                parent[ev[1]] = ev[2]
        else:
            samples.append(ev)

    def chain(pid):
        seen = []
        while pid in parent and len(seen) < 50:
            pid = parent[pid]
            seen.append(pid)
        return seen

    roles = {}

    def role(pid, comm):
        if pid in roles:
            return roles[pid]
        if pid == daemon:
            r = 'daemon'
        elif pid == client:
            r = 'client'
        else:
            anc = chain(pid)
            if daemon in anc:
                # the worker is the daemon's direct python child; deeper = jobs
                r = child_role if anc[0] == daemon else grandchild_role
            elif client in anc:
                r = 'client'
            else:
                r = 'other'
        roles[pid] = r
        return r
    per = collections.defaultdict(lambda: {'ns': 0, 'kernel_ns': 0, 'markers': collections.Counter(),
                                           'top': collections.Counter(), 'pids': set()})
    # A forked child keeps its parent's comm until its execve installs the new image: for
    # program jobs that splits the spawner's fork and jail steps from the program itself.
    parent_comms = {comm for _, pid, comm, _, _ in samples if role(pid, comm) == child_role}
    split_exec = child_role == 'programs'
    for _, pid, comm, period, frames in samples:
        r = role(pid, comm)
        if split_exec and r == grandchild_role:
            r += ', before exec' if comm in parent_comms else ', after exec'
        d = per[r]
        d['ns'] += period
        d['pids'].add(pid)
        if frames:
            sym, dso = frames[0]
            if 'kernel' in dso:
                d['kernel_ns'] += period
            d['top'][('%s [%s]' % (sym, os.path.basename(dso)))] += period
            hit = set()
            for sym, dso in frames:
                for label, rx in MARKERS:
                    if label in hit:
                        continue
                    if rx.startswith('@'):
                        if rx[1:] in dso:
                            hit.add(label)
                    elif re.search(rx, sym):
                        hit.add(label)
            for label in hit:
                d['markers'][label] += period
    return per


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--venv', default=benchlib.default_venv())
    ap.add_argument('--node-bin', default=benchlib.default_node_bin())
    ap.add_argument('--jobs', type=int, default=1000)
    ap.add_argument('--workload', default='jobs', choices=('jobs', 'seq', 'prog', 'depends', 'sendfile'),
                    help='depends/sendfile: --jobs is the file size in MiB; "per job" is then per run')
    ap.add_argument('--freq', type=int, default=999)
    ap.add_argument('--out', default=os.path.join(benchlib.HERE, 'results', 'profile.json'))
    args = ap.parse_args()
    perf = shutil.which('perf')
    tmp = tempfile.mkdtemp(prefix='dispynode-bench-perf-')
    data = os.path.join(tmp, 'perf.data')
    node = benchlib.Node('ours', args.venv, args.node_bin).start()
    rec = None
    try:
        time.sleep(0.5)
        sampler = node.start_sampler()
        holder = {}

        def on_start(pid):
            if perf:
                holder['perf'] = subprocess.Popen(
                    [perf, 'record', '-a', '-g', '-e', 'cpu-clock', '-F', str(args.freq), '-o', data],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        run = benchlib.run_client(args.venv, args.workload, node.port, args.jobs, timeout=240,
                                  stall=30, on_start=on_start)
        sampler.stop()
        p = holder.get('perf')
        if p:
            p.send_signal(signal.SIGINT)
            try:
                p.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
        res = run.result or {}
        if not res:
            sys.exit('client failed: %s %s' % (run.error, run.stderr_tail[-500:]))
        n = res.get('n', 1)
        if 't0' in res:
            a, b = sampler.window(res['t0'], res['t1'])
        else:   # depends/sendfile: the whole client run
            a, b = sampler.samples[0], sampler.samples[-1]
        proc_cpu = {'daemon_ms_per_job': (b[4] - a[4]) / n * 1e3,
                    'worker_and_jobs_ms_per_job': ((b[5] - a[5]) - (b[4] - a[4])) / n * 1e3,
                    'client_ms_per_job': res.get('client_cpu_per_job_ms')}
        out = {'workload': args.workload, 'n': n, 'wall_s': res.get('wall'),
               'jobs_per_s': res.get('jobs_per_s'), 'mb_per_s': res.get('mb_per_s'), 'lost': res.get('lost'), 'wrong': res.get('wrong'),
               'proc_cpu': proc_cpu, 'machine': benchlib.machine_info(args.venv, args.node_bin)}
        if perf and os.path.exists(data):
            sp = subprocess.Popen([perf, 'script', '-i', data, '--show-task-events',
                                   '-F', 'comm,pid,tid,period,ip,sym,dso'],
                                  stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                                  errors='replace')
            if args.workload == 'prog':   # the spawner is the daemon's child, the jobs its children
                per = classify(parse_perf(sp.stdout), node.pid, run.pid, 'programs', 'program children')
            else:
                per = classify(parse_perf(sp.stdout), node.pid, run.pid)
            sp.wait(120)
            total_ns = sum(d['ns'] for d in per.values())
            roles = {}
            for r, d in sorted(per.items(), key=lambda kv: -kv[1]['ns']):
                roles[r] = {
                    'cpu_ms_per_job': d['ns'] / 1e6 / n,
                    'share_of_all_samples': d['ns'] / total_ns if total_ns else None,
                    'kernel_share': d['kernel_ns'] / d['ns'] if d['ns'] else None,
                    'processes': len(d['pids']),
                    'inclusive': {k: v / d['ns'] for k, v in d['markers'].most_common()},
                    'top_symbols': [(k, round(v / d['ns'], 4)) for k, v in d['top'].most_common(15)],
                }
            out['perf'] = {'freq': args.freq, 'window_note': 'perf ran from the client start to its end '
                           '(includes cluster set-up and close)', 'roles': roles}
        rec = out
    finally:
        node.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, 'w') as fd:
        json.dump(rec, fd, indent=1, sort_keys=True)
    print_report(rec)
    log('wrote %s' % args.out)


def print_report(rec):
    print('%s: %d jobs, %.0f jobs/s, %s MB/s, lost %s wrong %s' % (
        rec['workload'], rec['n'], rec['jobs_per_s'] or 0,
        '%.0f' % rec['mb_per_s'] if rec.get('mb_per_s') else '-', rec['lost'], rec['wrong']))
    pc = rec['proc_cpu']
    print('from /proc over the timed window: daemon %.2f ms/job, worker+jobs %.2f ms/job, client %s ms/job'
          % (pc['daemon_ms_per_job'], pc['worker_and_jobs_ms_per_job'],
             '%.2f' % pc['client_ms_per_job'] if pc.get('client_ms_per_job') is not None else '-'))
    perf = rec.get('perf')
    if not perf:
        print('(no perf data)')
        return
    print('perf (whole client run), CPU ms per job by role:')
    for r, d in perf['roles'].items():
        print('  %-8s %6.2f ms/job  (%4.1f%% of all samples, %3.0f%% in kernel, %d processes)' % (
            r, d['cpu_ms_per_job'], 100 * d['share_of_all_samples'], 100 * (d['kernel_share'] or 0),
            d['processes']))
        if r == 'other':
            continue
        inc = ', '.join('%s %.0f%%' % (k, 100 * v) for k, v in list(d['inclusive'].items())[:8] if v >= 0.02)
        if inc:
            print('          inclusive: ' + inc)
        for sym, share in d['top_symbols'][:8]:
            print('          %5.1f%%  %s' % (100 * share, sym[:100]))


if __name__ == '__main__':
    main()
