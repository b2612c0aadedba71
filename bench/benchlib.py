"""Shared machinery of bench.py, soak.py and profile.py: nodes (ours and the
reference) started fresh on free ports, process-tree sampling from /proc, and
client workloads (client.py) run with a hard timeout and a wedge detector.

Standard library only.  Nothing waits without a bound.
"""

import glob
import json
import os
import platform
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
CLIENT = os.path.join(HERE, 'client.py')
CLK_TCK = os.sysconf('SC_CLK_TCK')
PAGE_KB = os.sysconf('SC_PAGE_SIZE') // 1024

NODE_START_TIMEOUT = 30.0     # seconds until a node must accept TCP connections
NODE_STOP_GRACE = 3.0         # SIGTERM -> SIGKILL

IMPL_NAMES = {'ref': 'reference (dispy 4.15.2 dispynode.py)', 'ours': 'ours (Rust dispynode)'}


def log(msg):
    sys.stderr.write('[%s] %s\n' % (time.strftime('%H:%M:%S'), msg))
    sys.stderr.flush()


# ---------------------------------------------------------------- ports

_used_ports = set()


def _port_free(port):
    for ip in ('127.0.0.1', '0.0.0.0'):
        for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
            s = socket.socket(socket.AF_INET, kind)
            try:
                s.bind((ip, port))
            except OSError:
                return False
            finally:
                s.close()
    return True


def _port_range():
    """Below the kernel's ephemeral ports (any outgoing connection may take one of those as
    its source port a moment after we chose it), unless that leaves too few."""
    try:
        with open('/proc/sys/net/ipv4/ip_local_port_range') as fd:
            low = int(fd.read().split()[0])
    except (OSError, ValueError, IndexError):
        low = 0
    return (20001, low - 1) if low >= 22001 else (20001, 59999)


def free_port_pair():
    """P such that TCP and UDP on P-1 (client) and P (node) are free now."""
    lo, hi = _port_range()
    for _ in range(2000):
        p = random.randint(lo, hi)
        if p in _used_ports or p - 1 in _used_ports:
            continue
        if _port_free(p - 1) and _port_free(p):
            _used_ports.update((p - 1, p))
            return p
    raise RuntimeError('no free port pair')


# ---------------------------------------------------------------- /proc

def read_stat(pid):
    """(ppid, self cpu s, children cpu s, rss KiB, starttime) from /proc/<pid>/stat, or None."""
    try:
        with open('/proc/%d/stat' % pid, 'rb') as fd:
            data = fd.read()
    except OSError:
        return None
    f = data[data.rindex(b')') + 2:].split()
    # fields after comm: state(0) ppid(1) ... utime(11) stime(12) cutime(13) cstime(14) ... starttime(19) vsize(20) rss(21)
    return (int(f[1]), (int(f[11]) + int(f[12])) / CLK_TCK, (int(f[13]) + int(f[14])) / CLK_TCK,
            int(f[21]) * PAGE_KB, int(f[19]))


def proc_table():
    table = {}
    for name in os.listdir('/proc'):
        if name.isdigit():
            st = read_stat(int(name))
            if st is not None:
                table[int(name)] = st
    return table


def tree_pids(root, table):
    """root and all its descendants (by ppid) in `table`."""
    children = {}
    for pid, st in table.items():
        children.setdefault(st[0], []).append(pid)
    out, todo = [], [root]
    while todo:
        p = todo.pop()
        if p in table:
            out.append(p)
            todo.extend(children.get(p, ()))
    return out


def status_kb(pid, key):
    """A KiB field (VmRSS, RssAnon, RssFile...) of /proc/<pid>/status, or None."""
    try:
        with open('/proc/%d/status' % pid) as fd:
            for line in fd:
                if line.startswith(key + ':'):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def vmrss_kb(pid):
    """VmRSS of one process from /proc/<pid>/status (KiB), or None."""
    return status_kb(pid, 'VmRSS')


def pss_kb(pid):
    """Pss (proportional set size: shared pages divided among their users) in KiB, or None."""
    try:
        with open('/proc/%d/smaps_rollup' % pid) as fd:
            for line in fd:
                if line.startswith('Pss:'):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def cpu_busy():
    """(busy, total) seconds of the whole machine from /proc/stat."""
    with open('/proc/stat') as fd:
        f = [int(x) for x in fd.readline().split()[1:]]
    idle = f[3] + f[4]
    return (sum(f) - idle) / CLK_TCK, sum(f) / CLK_TCK


def busy_cores(window=1.0):
    """CPU cores busy on the whole machine over the next `window` seconds."""
    b0, _ = cpu_busy()
    t0 = time.time()
    time.sleep(window)
    b1, _ = cpu_busy()
    return (b1 - b0) / (time.time() - t0)


def wait_quiet(max_busy, max_wait, window=1.0):
    """Waits until the machine uses at most `max_busy` cores (measured over
    `window` s), at most `max_wait` s.  Returns (seconds waited, last busy cores)."""
    t0 = time.time()
    busy = busy_cores(window)
    while busy > max_busy and time.time() - t0 < max_wait:
        busy = busy_cores(window)
    return time.time() - t0, busy


def loadavg():
    with open('/proc/loadavg') as fd:
        return [float(x) for x in fd.read().split()[:3]]


class TreeSampler(threading.Thread):
    """Samples a node's process tree every `interval` s: RSS (sum of VmRSS of
    the root and every descendant, i.e. shared pages counted once per process),
    CPU of the root itself and of the whole tree (live processes' own time plus
    what they reaped), and the machine's busy CPU."""

    def __init__(self, root, interval=0.02, pss_every=None):
        super().__init__(daemon=True)
        self.root = root
        self.interval = interval
        self.samples = []      # (t, rss_tree, rss_root, nprocs, cpu_root, cpu_tree, machine_busy)
        # (t, pss_tree): PSS splits pages shared between processes (a forked job and its
        # parent); smaps_rollup walks the page tables, so it is read every 0.25 s only.
        self.pss_samples = []
        self.pss_every = pss_every or max(1, round(0.25 / interval))
        self.seen = {}         # pid -> starttime, every process seen in the tree
        self.exes = {}         # executable -> how many processes of the tree ran it (seen)
        self._stop_ev = threading.Event()

    def sample(self):
        table = proc_table()
        pids = tree_pids(self.root, table)
        if not pids:
            return None
        rss = sum(table[p][3] for p in pids)
        root = table[self.root]
        cpu_tree = sum(table[p][1] + table[p][2] for p in pids)
        for p in pids:
            if p not in self.seen:
                self.seen[p] = table[p][4]
                try:
                    exe = os.readlink('/proc/%d/exe' % p)
                except OSError:
                    exe = '?'
                self.exes[exe] = self.exes.get(exe, 0) + 1
        s = (time.time(), rss, root[3], len(pids), root[1], cpu_tree, cpu_busy()[0])
        if len(self.samples) % self.pss_every == 0:
            pss = [pss_kb(p) for p in pids]
            self.pss_samples.append((s[0], sum(v for v in pss if v is not None)))
        self.samples.append(s)
        return s

    def run(self):
        while not self._stop_ev.is_set():
            self.sample()
            self._stop_ev.wait(self.interval)

    def stop(self):
        self._stop_ev.set()
        self.join(5)
        self.sample()

    def window(self, t0, t1):
        """(first sample at or before t0, first sample at or after t1)."""
        before = [s for s in self.samples if s[0] <= t0]
        after = [s for s in self.samples if s[0] >= t1]
        a = before[-1] if before else (self.samples[0] if self.samples else None)
        b = after[0] if after else (self.samples[-1] if self.samples else None)
        return a, b

    @staticmethod
    def _within(t, t0, t1, pad=0.0):
        """t in [t0 - pad, t1 + pad] (an open end if None).  A window shorter than the sampling
        period (50 fast sequential jobs) may hold no sample; with pad, the ones around it count."""
        return (t0 is None or t >= t0 - pad) and (t1 is None or t <= t1 + pad)

    def peak_rss(self, t0=None, t1=None, pad=0.0):
        sel = [s for s in self.samples if self._within(s[0], t0, t1, pad)]
        if not sel:
            return None, None, None
        return max(s[1] for s in sel), max(s[2] for s in sel), max(s[3] for s in sel)

    def peak_pss(self, t0=None, t1=None, pad=0.0):
        sel = [v for t, v in self.pss_samples if self._within(t, t0, t1, pad)]
        return max(sel) if sel else None

    def median_rss(self, t0=None, t1=None):
        sel = sorted(s[1] for s in self.samples if self._within(s[0], t0, t1))
        return sel[len(sel) // 2] if sel else None


# ---------------------------------------------------------------- venv, binary

def venv_python(venv):
    return os.path.join(venv, 'bin', 'python')


def venv_ok(venv):
    py = venv_python(venv)
    if not os.path.exists(py):
        return False
    r = subprocess.run([py, '-c', "import dispy, pycos; assert dispy.__version__ == '4.15.2'"],
                       stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, timeout=60)
    return r.returncode == 0


def default_venv():
    env = os.environ.get('DISPY_VENV')
    if env:
        return env
    return os.path.join(REPO, 'target', 'bench-venv')


def default_node_bin():
    env = os.environ.get('DISPYNODE_BIN')
    if env:
        return env
    # The packages' binary (static, musl; packaging/lib.sh), which bench/run.sh builds.
    target = os.environ.get('CARGO_TARGET_DIR') or os.path.join(REPO, 'target')
    triple = os.environ.get('DISPYNODE_PKG_TARGET') or '%s-unknown-linux-musl' % os.uname().machine
    return os.path.join(target, triple, 'release', 'dispynode')


# ---------------------------------------------------------------- nodes

def node_account():
    """(uid, gid) our node runs as when started as root without --user/--group."""
    import grp
    import pwd
    try:
        pw = pwd.getpwnam('dispynode')
        return pw.pw_uid, pw.pw_gid
    except KeyError:
        pass
    uid = pwd.getpwnam('nobody').pw_uid
    for g in ('nogroup', 'nobody'):
        try:
            return uid, grp.getgrnam(g).gr_gid
        except KeyError:
            pass
    return uid, 65534


class Node:
    """A fresh node (ours or the reference) in its own temp dir on a free port pair.
    start() measures the time from spawn to accepting TCP connections."""

    def __init__(self, impl, venv, node_bin, cpus=2, debug=False, extra=(), wrap=(), python=None):
        self.impl = impl
        self.venv = venv
        self.node_bin = node_bin
        self.cpus = cpus
        self.debug = debug
        self.extra = list(extra)
        self.wrap = list(wrap)     # e.g. ['perf', 'record', ...] (then pid is the wrapper's)
        self.python = python       # our node's --python (None: its default, python3 on its PATH)
        self.port = None
        self.proc = None
        self.base = None
        self.start_ms = None
        self.sampler = None

    def command(self, prefix):
        py = venv_python(self.venv)
        if self.impl == 'ours':
            cmd = [self.node_bin, '-i', '127.0.0.1', '--node_port', str(self.port),
                   '--scheduler_port', str(self.port - 1), '--dest_path_prefix', prefix,
                   '--cpus', str(self.cpus)]
            if self.python:
                cmd += ['--python', self.python]
        else:
            cmd = [py, os.path.join(self.venv, 'bin', 'dispynode.py'), '-i', '127.0.0.1',
                   '-p', str(self.port - 1), '--dest_path_prefix', prefix,
                   '-c', str(self.cpus), '--daemon']
        if self.debug:
            cmd.append('-d')
        return self.wrap + cmd + self.extra

    def start(self):
        self.base = tempfile.mkdtemp(prefix='dispynode-bench-%s-' % self.impl)
        prefix = os.path.join(self.base, 'prefix')
        os.mkdir(prefix)
        if self.impl == 'ours' and os.geteuid() == 0:
            # Started as root, our node drops to --user (default dispynode, else nobody)
            # before it creates anything: the prefix must be theirs.
            uid, gid = node_account()
            os.chmod(self.base, 0o755)
            os.chown(prefix, uid, gid)
        self.port = free_port_pair()
        self.log_path = os.path.join(self.base, 'node.log')
        logf = open(self.log_path, 'wb')
        cmd = self.command(prefix)
        t0 = time.perf_counter()
        self.proc = subprocess.Popen(cmd, cwd=self.base, stdin=subprocess.DEVNULL, stdout=logf,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        logf.close()
        deadline = time.time() + NODE_START_TIMEOUT
        while True:
            if self.proc.poll() is not None:
                msg = '%s node exited at start (%s): %s' % (self.impl, self.proc.returncode, self.log_tail())
                self.stop()
                raise RuntimeError(msg)
            s = socket.socket()
            s.settimeout(1)
            try:
                s.connect(('127.0.0.1', self.port))
            except OSError:
                s.close()
                if time.time() > deadline:
                    self.stop()
                    raise RuntimeError('%s node not accepting after %ss' % (self.impl, NODE_START_TIMEOUT))
                time.sleep(0.002)
                continue
            self.start_ms = (time.perf_counter() - t0) * 1e3
            try:
                s.sendall(b'x' * 40)   # not the auth: the node drops the connection
            except OSError:
                pass
            s.close()
            break
        self.pid = self.proc.pid
        return self

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def idle_rss(self, wait=1.0):
        """VmRSS of the daemon and of its whole tree after `wait` s idle, before any client."""
        time.sleep(wait)
        table = proc_table()
        pids = tree_pids(self.pid, table)
        return {'daemon_kb': vmrss_kb(self.pid), 'daemon_anon_kb': status_kb(self.pid, 'RssAnon'),
                'daemon_file_kb': status_kb(self.pid, 'RssFile'), 'daemon_pss_kb': pss_kb(self.pid),
                'tree_kb': sum(vmrss_kb(p) or 0 for p in pids), 'procs': len(pids)}

    def start_sampler(self, interval=0.02, pss_every=None):
        self.sampler = TreeSampler(self.pid, interval, pss_every)
        self.sampler.start()
        return self.sampler

    def jobs_python(self):
        """The interpreter our node runs function jobs with, as its start-up log names it
        (resolved as the jobs' user, so not necessarily the `python3` on our PATH)."""
        try:
            with open(self.log_path, 'rb') as fd:
                m = re.search(rb'\bpython=(\S+)', fd.read())
        except OSError:
            return None
        return os.path.realpath(m.group(1).decode()) if m else None

    def log_tail(self, n=30):
        try:
            with open(self.log_path, 'rb') as fd:
                lines = fd.read().decode('utf-8', 'replace').splitlines()
            return '\n'.join(lines[-n:])
        except OSError:
            return ''

    def stop(self, keep=None):
        """SIGTERM, SIGKILL after the grace time, then kill whatever is left of
        the processes seen in its tree (job processes in their own sessions)."""
        if self.sampler is not None and self.sampler.is_alive():
            self.sampler.stop()
        seen = dict(self.sampler.seen) if self.sampler else {}
        if self.proc is not None:
            table = proc_table()
            for p in tree_pids(self.proc.pid, table):
                seen.setdefault(p, table[p][4])
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(NODE_STOP_GRACE)
                except subprocess.TimeoutExpired:
                    pass
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            if self.proc.poll() is None:
                self.proc.kill()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                pass
        for pid, start in seen.items():
            st = read_stat(pid)
            if st is not None and st[4] == start and pid != os.getpid():
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
        if keep and self.base and os.path.exists(self.log_path):
            os.makedirs(os.path.dirname(keep), exist_ok=True)
            shutil.copy(self.log_path, keep)
        if self.base:
            shutil.rmtree(self.base, ignore_errors=True)
            self.base = None


# ---------------------------------------------------------------- delegated cgroups

# Our node as the package runs it (systemd's Delegate=yes: a cgroup of its own per job), on a
# host where that is not how it was booted: "$@" runs in a new mount namespace whose
# /sys/fs/cgroup is the cgroup2 mount, in a cgroup of its own below that mount's root
# (dispynode-bench-<pid>, the node's pid: the shell execs it; cleanup_delegated() removes it
# once the node is gone). Needs root and a cgroup2 mount.
DELEGATED_WRAP = ['unshare', '-m', '--propagation', 'private', 'bash', '-c', r'''
set -e
v2=$(findmnt -n -t cgroup2 -o TARGET | head -1)
[ -n "$v2" ] || { echo "no cgroup2 mount" >&2; exit 1; }
[ "$v2" = /sys/fs/cgroup ] || mount --bind "$v2" /sys/fs/cgroup
cg=/sys/fs/cgroup/dispynode-bench-$$
mkdir "$cg"
echo $$ > "$cg/cgroup.procs"
exec "$@"
''', 'bash']


def cgroup2_root():
    out = subprocess.run(['findmnt', '-n', '-t', 'cgroup2', '-o', 'TARGET'], capture_output=True,
                         text=True, timeout=30).stdout.split()
    return out[0] if out else None


def delegated_cgroup(node_pid):
    """The cgroup a node started with DELEGATED_WRAP took as delegated."""
    return os.path.join(cgroup2_root() or '/nonexistent', 'dispynode-bench-%d' % node_pid)


def job_cgroups_left(node_pid):
    """Cgroups below the delegated node's jobs/ (computations and their jobs' leaves)."""
    jobs = os.path.join(delegated_cgroup(node_pid), 'jobs')
    return [os.path.relpath(d, jobs) for d, _, _ in os.walk(jobs)][1:]


def cleanup_delegated():
    root = cgroup2_root()
    for cg in glob.glob(os.path.join(root or '/nonexistent', 'dispynode-bench-*')):
        subprocess.run(['find', cg, '-depth', '-type', 'd', '-exec', 'rmdir', '{}', ';'],
                       timeout=60, stderr=subprocess.DEVNULL)


# ---------------------------------------------------------------- clients

class ClientRun:
    def __init__(self):
        self.result = None
        self.error = None
        self.status = None
        self.wedged = False          # no progress for `stall` seconds before a result
        self.timed_out = False       # hard timeout
        self.close_stalled = False   # result printed, then the client hung (in close)
        self.node_died = False       # the node exited during the run
        self.other_output = []       # the client's last other stdout lines (its log)
        self.progress = 0
        self.elapsed = None
        self.stderr_tail = ''
        self.pid = None


def run_client(venv, mode, port, param, timeout=240.0, stall=20.0, env=None, on_start=None,
               node_alive=None):
    """Runs client.py MODE PORT PARAM in a fresh cwd, in its own process group.
    Killed (whole group) after `timeout` s, or after `stall` s without a change
    of its PROGRESS count (a wedged node)."""
    cwd = tempfile.mkdtemp(prefix='dispynode-bench-client-')
    errf = open(os.path.join(cwd, 'client.stderr'), 'w+b')
    e = dict(os.environ)
    e['BENCH_CLIENT_WAIT'] = str(timeout)
    e['BENCH_CLIENT_WATCHDOG'] = str(timeout + 30)
    if env:
        e.update(env)
    run = ClientRun()
    started = time.time()
    proc = subprocess.Popen([venv_python(venv), CLIENT, mode, str(port), str(param)], cwd=cwd,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=errf,
                            env=e, start_new_session=True)
    run.pid = proc.pid
    if on_start:
        on_start(proc.pid)
    last_change = [time.time()]

    def reader():
        for raw in proc.stdout:
            line = raw.decode('utf-8', 'replace').rstrip('\n')
            if line.startswith('PROGRESS '):
                n = int(line.split()[1])
                if n != run.progress:
                    run.progress = n
                    last_change[0] = time.time()
            elif line.startswith('RESULT '):
                run.result = json.loads(line[len('RESULT '):])
                last_change[0] = time.time()
            elif line.startswith('ERROR '):
                run.error = line[len('ERROR '):]
            else:   # dispy's and pycos's log lines go to stdout
                run.other_output.append(line)
                del run.other_output[:-40]
    th = threading.Thread(target=reader, daemon=True)
    th.start()
    while proc.poll() is None:
        now = time.time()
        if node_alive is not None and not node_alive():
            run.node_died = True
            break
        if now - started > timeout:
            run.timed_out = run.result is None
            run.close_stalled = run.result is not None
            break
        if now - last_change[0] > stall:
            run.wedged = run.result is None
            run.close_stalled = run.result is not None
            break
        time.sleep(0.05)
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except OSError:
            pass
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        pass
    th.join(5)
    run.status = proc.returncode
    run.elapsed = time.time() - started
    try:
        errf.seek(0)
        run.stderr_tail = errf.read().decode('utf-8', 'replace')[-3000:]
    finally:
        errf.close()
    shutil.rmtree(cwd, ignore_errors=True)
    return run


# ---------------------------------------------------------------- machine

def machine_info(venv, node_bin):
    model = ''
    try:
        with open('/proc/cpuinfo') as fd:
            for line in fd:
                if line.startswith('model name'):
                    model = line.split(':', 1)[1].strip()
                    break
    except OSError:
        pass
    mem_kb = None
    try:
        with open('/proc/meminfo') as fd:
            mem_kb = int(fd.readline().split()[1])
    except OSError:
        pass
    py = subprocess.run([venv_python(venv), '-c',
                         'import sys, dispy, pycos; print(sys.version.split()[0], dispy.__version__, pycos.__version__)'],
                        capture_output=True, text=True, timeout=60).stdout.split()
    try:
        commit = subprocess.run(['git', '-C', REPO, 'rev-parse', '--short', 'HEAD'],
                                capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(['git', '-C', REPO, 'status', '--porcelain', '--', 'src', 'runner', 'Cargo.toml'],
                               capture_output=True, text=True, timeout=10).stdout.strip() != ''
    except (OSError, subprocess.SubprocessError):
        commit, dirty = '', None
    try:
        bin_mtime = time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(os.stat(node_bin).st_mtime))
    except OSError:
        bin_mtime = None
    return {'nproc': os.cpu_count(), 'cpus_usable': len(os.sched_getaffinity(0)),
            'cpu_model': model, 'kernel': platform.release(), 'os': platform.platform(),
            'mem_total_mib': mem_kb // 1024 if mem_kb else None,
            'python': py[0] if py else None, 'dispy': py[1] if len(py) > 1 else None,
            'pycos': py[2] if len(py) > 2 else None,
            'python_path': os.path.realpath(venv_python(venv)),
            'git_commit': commit, 'src_dirty': dirty, 'node_bin': node_bin,
            'node_bin_mtime': bin_mtime, 'loadavg_start': loadavg(),
            'date': time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}
