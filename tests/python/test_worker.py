"""Tests of runner/dispynode_job.py, driven exactly as the Rust daemon drives it.

The worker is started as ``python3 -c <source>`` with pipes on stdin/stdout and
spoken to with the daemon's framing (u32 BE JSON header length, JSON header,
u32 BE blob length, blob).  The in-job client functions are checked against a
small fake dispy client (a TCP server that speaks dispy's JOB_REPLY and
FILEXFER exchanges).

Run from the repository root:  python3 -m unittest tests/python/test_worker.py
"""

import io
import json
import os
import pickle
import queue
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import unittest

WORKER_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                           os.pardir, os.pardir, 'runner', 'dispynode_job.py')
with open(WORKER_PATH) as _fd:
    WORKER_SOURCE = _fd.read()
BOOT_PATH = os.path.join(os.path.dirname(WORKER_PATH), 'dispynode_boot.py')
with open(BOOT_PATH) as _fd:
    BOOT_SOURCE = _fd.read()

FILE_CHUNK = 1024000
LEN = struct.Struct('>L')

# Most tests use this computation; `compute(kind, ...)` picks the behaviour.
CODE = textwrap.dedent('''\
    import signal
    import subprocess

    def helper(n):
        raise ValueError('bad value %s' % n)

    def compute(kind, arg=None, **kwargs):
        if kind == 'echo':
            print('out', arg)
            sys.stderr.write('err %s\\n' % arg)
            return arg
        if kind == 'raise':
            return helper(arg)
        if kind == 'global':
            return globals().get(arg)
        if kind == 'env':
            return {'cwd': os.getcwd(), 'path0': sys.path[0], 'name': __name__,
                    'job_path': dispy_job_path, 'node_name': dispy_node_name,
                    'node_ip': dispy_node_ip_addr, 'logger': type(dispynode_logger).__name__,
                    'names': sorted(k for k in globals() if not k.startswith('__'))}
        if kind == 'window':
            start = time.time()
            time.sleep(arg)
            return start, time.time(), os.getpid()
        if kind == 'spawn_and_sleep':
            child = subprocess.Popen(['sleep', '30'])
            with open('sleep.pid', 'w') as fd:
                fd.write(str(child.pid))
            time.sleep(30)
        if kind == 'fork_holder':
            if os.fork() == 0:
                time.sleep(arg)
                os._exit(0)
            return 'parent done'
        if kind == 'fd_output':
            os.system('echo fd-level-from-shell')
            os.write(1, b'fd-level-from-job\\n')
            dispynode_logger.warning('logger-line')
            return 'ok'
        if kind == 'unpicklable':
            return lambda: 0
        if kind == 'big':
            return b'x' * arg
        if kind == 'tagged':
            time.sleep(kwargs.get('delay', 0))
            return kwargs['tag'], b'x' * arg
        if kind == 'stop_worker':
            os.kill(kwargs['worker'], signal.SIGSTOP)
            for _ in range(500):  # until it is stopped, so the result cannot come through it
                with open('/proc/%d/stat' % kwargs['worker']) as fd:
                    if fd.read().rsplit(')', 1)[1].split()[0] == 'T':
                        break
                time.sleep(0.01)
            return b'x' * arg
        if kind == 'fds':  # what each fd above stderr is, and whether it is open for writing
            out = []
            for n in os.listdir('/proc/self/fd'):
                try:
                    kind_of = os.readlink('/proc/self/fd/' + n).split(':')[0]
                    with open('/proc/self/fdinfo/' + n) as info:
                        flags = int(info.read().split('flags:')[1].split()[0], 8)
                except FileNotFoundError:  # listdir's own fd, closed by now
                    continue
                if int(n) > 2:
                    out.append(kind_of + (':w' if flags & 3 else ':r'))
            return sorted(out)
        if kind == 'reuse_fds':
            # Put a file of its own in place of every fd above stderr.
            files = []
            for fd in sorted(int(n) for n in os.listdir('/proc/self/fd')):
                if fd > 2 and fd < arg:
                    f = open('reused%d' % fd, 'w+')
                    files.append(f)
                    if f.fileno() != fd:
                        os.dup2(f.fileno(), fd)
            return len(files)
        if kind == 'daemonize':
            if os.fork() == 0:
                os.setsid()
                with open('daemon.pid', 'w') as fd:
                    fd.write(str(os.getpid()))
                time.sleep(arg)
                os._exit(0)
            return 'parent done'
        if kind == 'os_exit':
            os._exit(arg)
        if kind == 'sys_exit':
            sys.exit(arg)
        if kind == 'point':
            return type(arg).__module__, type(arg).__name__, arg.x, isinstance(arg, Point)
        if kind == 'provisional':
            return dispy_provisional_result(arg, **kwargs)
        if kind == 'send_file':
            return dispy_send_file(arg, **kwargs)
        if kind == 'send_file_sockopts':
            calls = []
            plain = socket.socket.setsockopt

            def record(sock, *args):
                calls.append(args)
                return plain(sock, *args)
            socket.socket.setsockopt = record  # this job process only
            return dispy_send_file(arg), calls
        if kind == 'provisional_then_file':
            return dispy_provisional_result('partial'), dispy_send_file(arg)
        raise RuntimeError('unknown kind %r' % kind)

    class Point:
        def __init__(self, x):
            self.x = x
    ''')


def line_of(code, text):
    """1-based line number of the first line of `code` containing `text`."""
    return next(i for i, line in enumerate(code.splitlines(), 1) if text in line)


def process_state(pid):
    """The state letter of `pid` (R, S, T, Z...), None if there is no such process."""
    try:
        with open('/proc/%d/stat' % pid) as fd:
            return fd.read().rsplit(')', 1)[1].split()[0]
    except FileNotFoundError:
        return None


def process_gone(pid):
    """True if `pid` no longer runs (absent, or a zombie waiting for init)."""
    return process_state(pid) in (None, 'Z')


def live_children(pid):
    """Pids of the processes whose parent is `pid` and that still run."""
    children = []
    for entry in os.listdir('/proc'):
        if not entry.isdigit():
            continue
        try:
            with open('/proc/%s/stat' % entry) as fd:
                fields = fd.read().rsplit(')', 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != 'Z':
            children.append(int(entry))
    return children


def wait_until(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


class Point:
    """Stands for a class the client defined in its __main__ and pickled
    inside setup_args / job args; the worker must resolve it to the class of
    the same name in the user code."""

    def __init__(self, x):
        self.x = x


def pickle_as_main(obj):
    """Pickle `obj` so that its class is referenced as __main__.<name>, as a
    dispy client script does (the test runner's __main__ is unittest's)."""
    main = sys.modules['__main__']
    saved = Point.__module__
    Point.__module__ = '__main__'
    setattr(main, 'Point', Point)
    try:
        return pickle.dumps(obj)
    finally:
        delattr(main, 'Point')
        Point.__module__ = saved


def source_preamble(source):
    """What the daemon writes to a booted worker's stdin before any message."""
    data = source.encode('utf-8')
    return LEN.pack(len(data)) + data


class WorkerProcess:
    """One worker, spoken to as the daemon does.  A reader thread drains its
    stdout so that big results never block it."""

    def __init__(self, as_script=False, command=None):
        booted = command is None and not as_script
        if command is None:  # as the daemon starts it (src/node/worker.rs, worker_args)
            command = [WORKER_PATH] if as_script else ['-c', BOOT_SOURCE]
        self.stderr = tempfile.TemporaryFile()
        # The daemon's variable for the worker (src/node/worker.rs, worker_env).
        env = dict(os.environ, LD_BIND_NOW='1') if booted else None
        self.proc = subprocess.Popen([sys.executable] + command,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.stderr, env=env)
        if booted:  # the boot reads the source first (source_preamble)
            self.proc.stdin.write(source_preamble(WORKER_SOURCE))
        self.messages = queue.Queue()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        out = self.proc.stdout
        while True:
            head = out.read(4)
            if len(head) < 4:
                self.messages.put(None)
                return
            header = json.loads(out.read(LEN.unpack(head)[0]).decode('utf-8'))
            blob = out.read(LEN.unpack(out.read(4))[0])
            self.messages.put((header, blob))

    def stderr_text(self):
        self.stderr.seek(0)
        return self.stderr.read().decode('utf-8', 'replace')

    def send(self, header, blob=b''):
        text = json.dumps(header).encode('utf-8')
        self.proc.stdin.write(LEN.pack(len(text)) + text + LEN.pack(len(blob)) + blob)
        self.proc.stdin.flush()

    def recv(self, timeout=10.0):
        try:
            msg = self.messages.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError('no message from worker in %ss; stderr:\n%s'
                                 % (timeout, self.stderr_text()))
        if msg is None:
            raise AssertionError('worker closed its stdout; stderr:\n' + self.stderr_text())
        return msg

    def expect(self, ev, timeout=10.0):
        header, blob = self.recv(timeout)
        if header.get('ev') != ev:
            raise AssertionError('expected %r, got %r' % (ev, header))
        return header, blob

    def run_jobs(self, jobs, timeout=20.0):
        """Send `jobs` (header, blob pairs) and return ({id: started}, {id: (done, blob)})."""
        for header, blob in jobs:
            self.send(header, blob)
        started, done = {}, {}
        deadline = time.monotonic() + timeout
        while len(done) < len(jobs):
            header, blob = self.recv(max(0.1, deadline - time.monotonic()))
            if header['ev'] == 'started':
                started[header['id']] = header
            elif header['ev'] == 'done':
                done[header['id']] = (header, blob)
            else:
                raise AssertionError('unexpected message %r' % (header,))
        return started, done

    def run_job(self, *args, **kwargs):
        """Run one job of `compute(*args, **kwargs)`; return (done header, result)."""
        started, done = self.run_jobs([job(1, *args, **kwargs)])
        header, blob = done[1]
        if header['status'] == 11:
            assert blob.startswith(b'\x80\x04'), blob[:2]  # protocol 4 for 3.7 clients
        return header, pickle.loads(blob)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            try:
                stream.close()
            except OSError:  # the pipe is already broken
                pass
        self.reader.join(5)


def job(job_id, *args, code='', cgroup_procs=None, args_pickle=None, **kwargs):
    """A `job` op calling compute(*args, **kwargs)."""
    args_blob = args_pickle if args_pickle is not None else pickle.dumps(args)
    return ({'op': 'job', 'id': job_id, 'uid': 140000000000 + job_id, 'hash': 'hash%d' % job_id,
             'start_time': time.time(), 'code': code, 'args_len': len(args_blob),
             'cgroup_procs': cgroup_procs},
            args_blob + pickle.dumps(kwargs))


class WorkerTestCase(unittest.TestCase):
    """Starts workers on a fresh computation directory."""

    def setUp(self):
        self.dest = tempfile.mkdtemp(prefix='dispynode-worker-test-')
        self.addCleanup(shutil.rmtree, self.dest, True)

    def config(self, code, **overrides):
        config = {'op': 'init', 'code': code, 'name': 'compute', 'setup': None,
                  'cleanup': None, 'dest_path': self.dest, 'node_name': 'testnode',
                  'node_ip_addr': '127.0.0.1', 'reply_ip_addr': '127.0.0.2',
                  'client_addr': ['127.0.0.1', 9], 'scheduler_addr': ['127.0.0.1', 9],
                  'max_file_size': 0, 'msg_timeout': 5.0, 'certfile': None, 'keyfile': None}
        config.update(overrides)
        return config

    def new_worker(self, as_script=False):
        worker = WorkerProcess(as_script)
        self.addCleanup(worker.stderr.close)
        self.addCleanup(worker.stop)
        return worker

    def start(self, code=CODE, as_script=False, **overrides):
        """A worker after a successful init (no setup yet)."""
        worker = self.new_worker(as_script)
        worker.send(self.config(code, **overrides))
        header, _ = worker.expect('init')
        self.assertEqual(header, {'ev': 'init', 'ok': True})
        return worker

    def setup_worker(self, worker, setup_args=(), setup_blob=None):
        """Send `setup`; return its reply header."""
        if setup_blob is None:
            setup_blob = pickle.dumps({'compute_id': 1, 'setup_args': setup_args})
        worker.send({'op': 'setup'}, setup_blob)
        return worker.expect('setup')[0]

    def ready(self, code=CODE, setup_args=(), as_script=False, **overrides):
        """A worker ready to run jobs."""
        worker = self.start(code, as_script, **overrides)
        self.assertEqual(self.setup_worker(worker, setup_args), {'ev': 'setup', 'ok': True})
        return worker


class JobTests(WorkerTestCase):

    def test_result_stdout_stderr(self):
        worker = self.ready()
        started, done = worker.run_jobs([job(5, 'echo', [1, 'two'])])
        self.assertIsInstance(started[5]['pid'], int)
        header, blob = done[5]
        self.assertEqual(header, {'ev': 'done', 'id': 5, 'status': 11,
                                  'stdout': "out [1, 'two']\n", 'stderr': "err [1, 'two']\n",
                                  'exception': None})
        self.assertEqual(pickle.loads(blob), [1, 'two'])
        # `done` goes out as soon as the outcome is complete; the worker reaps the child
        # right after: no zombie left behind
        self.assertTrue(wait_until(lambda: not os.path.exists('/proc/%d' % started[5]['pid'])),
                        'the job process was not reaped')

    def test_job_globals_and_cwd(self):
        worker = self.ready()
        _, env = worker.run_job('env')
        self.assertEqual(env['cwd'], os.path.realpath(self.dest))
        self.assertEqual(env['path0'], '.')
        self.assertEqual(env['name'], '__main__')
        self.assertEqual((env['job_path'], env['node_name'], env['node_ip'], env['logger']),
                         (self.dest, 'testnode', '127.0.0.1', 'Logger'))
        # exactly the promised names plus the user's own: nothing of the worker leaks
        self.assertEqual(env['names'], sorted([
            'Point', 'compute', 'helper', 'signal', 'subprocess', 'dispy_job_path', 'dispy_node_ip_addr',
            'dispy_node_name', 'dispy_provisional_result', 'dispy_send_file',
            'dispynode_logger', 'os', 'pickle', 'socket', 'sys', 'time']))

    def test_per_job_code_runs_in_job_globals(self):
        worker = self.ready()
        header, value = worker.run_job('global', 'EXTRA', code='EXTRA = 40 + 2\n')
        self.assertEqual((header['status'], value), (11, 42))
        self.assertIsNone(worker.run_job('global', 'EXTRA')[1])  # did not leak into the worker

    def test_many_concurrent_jobs(self):
        worker = self.ready()
        count = 12
        # 2 s each: all twelve must have started (ten forked on demand) before the first ends.
        started, done = worker.run_jobs([job(i, 'window', 2.0) for i in range(count)])
        windows = [pickle.loads(done[i][1]) for i in range(count)]
        self.assertTrue(all(done[i][0]['status'] == 11 for i in range(count)))
        self.assertLess(max(w[0] for w in windows), min(w[1] for w in windows),
                        'jobs did not run concurrently')
        self.assertEqual(sorted(w[2] for w in windows),
                         sorted(started[i]['pid'] for i in range(count)))

    def test_small_outcome_goes_from_the_job_to_the_daemon(self):
        # A done that fits in one atomic pipe write comes from the job process itself: it
        # arrives while the worker is stopped, and only once.
        worker = self.ready()
        wpid = worker.proc.pid
        self.addCleanup(lambda: os.kill(wpid, signal.SIGCONT))
        header, blob = job(1, 'stop_worker', 100, worker=wpid)
        worker.send(header, blob)
        worker.expect('started')
        done, result = worker.expect('done')
        self.assertEqual((done['id'], done['status'], pickle.loads(result)), (1, 11, b'x' * 100))
        self.assertEqual(process_state(wpid), 'T')
        # A larger one goes through the worker: nothing comes until it runs again.
        header, blob = job(2, 'stop_worker', 100000, worker=wpid)
        os.kill(wpid, signal.SIGCONT)
        worker.send(header, blob)
        worker.expect('started')
        self.assertTrue(wait_until(lambda: process_state(wpid) == 'T'))
        with self.assertRaises(AssertionError):
            worker.recv(timeout=0.5)
        os.kill(wpid, signal.SIGCONT)
        done, result = worker.expect('done')
        self.assertEqual((done['id'], done['status'], len(pickle.loads(result))), (2, 11, 100000))
        self.assertEqual(worker.run_job('echo', 'next')[1], 'next')
        with self.assertRaises(AssertionError):  # no second done for jobs 1 and 2
            worker.recv(timeout=0.5)

    def test_job_holds_only_its_own_fds(self):
        # Beside stdio a job holds its result pipe, the daemon's stream and the stream's lock:
        # nothing of the worker's or the
        # zygote's (control pipes, socket, epoll, wake-up pipe) leaks into user code.
        worker = self.ready()
        for _ in range(3):  # spares forked ahead and after a take alike
            header, value = worker.run_job('fds')
            self.assertEqual(header['status'], 11, header)
            self.assertEqual(value, ['/memfd:w', 'pipe:w', 'pipe:w'], value)

    def test_job_reusing_our_fd_numbers_gets_no_result_into_its_files(self):
        # A job that puts files in place of every fd it has: its outcome must not be
        # written into those files (the job ends without an outcome, reported as such), and
        # the next job runs normally.
        worker = self.ready()
        header, value = worker.run_job('reuse_fds', 256)
        self.assertEqual(header['status'], 9, header)
        self.assertIn('without a result', header['exception'])
        for name in os.listdir(self.dest):
            if name.startswith('reused'):
                self.assertEqual(os.path.getsize(os.path.join(self.dest, name)), 0, name)
        self.assertEqual(worker.run_job('echo', 'after')[1], 'after')

    def test_kill_after_a_direct_done_sends_no_second_done(self):
        # The daemon may terminate a job whose done the job itself has just sent: the worker
        # must not report it again as Terminated.
        worker = self.ready()
        for i in range(20):
            header, value = worker.run_job('echo', i)
            self.assertEqual(value, i)
            worker.send({'op': 'kill', 'id': 1})
        self.assertEqual(worker.run_job('echo', 'last')[1], 'last')
        with self.assertRaises(AssertionError):
            worker.recv(timeout=0.5)

    def test_outcomes_of_both_paths_interleave_whole(self):
        # Children write small outcomes while the worker forwards large ones on the same
        # stream: every message must arrive whole, with its own job's result.
        worker = self.ready()
        count = 40
        sizes = {i: (4000000 if i % 4 == 0 else 10) for i in range(count)}
        started, done = worker.run_jobs(
            [job(i, 'tagged', sizes[i], tag=i, delay=0.005 * i) for i in range(count)], timeout=60)
        for i in range(count):
            self.assertEqual(done[i][0]['status'], 11, done[i][0])
            self.assertEqual(pickle.loads(done[i][1]), (i, b'x' * sizes[i]))

    def test_a_daemonized_descendant_does_not_hold_the_stream(self):
        # The daemon learns that a worker is gone from EOF on its stream: a process a job
        # forked and left running must not keep that stream open.
        worker = self.ready()
        header, value = worker.run_job('daemonize', 30)
        self.assertEqual(value, 'parent done')
        pid_file = os.path.join(self.dest, 'daemon.pid')
        self.assertTrue(wait_until(lambda: os.path.exists(pid_file) and os.path.getsize(pid_file)))
        with open(pid_file) as fd:
            daemon_pid = int(fd.read())
        self.addCleanup(lambda: process_gone(daemon_pid) or os.kill(daemon_pid, signal.SIGKILL))
        self.assertFalse(process_gone(daemon_pid))
        worker.proc.stdin.close()
        self.assertEqual(worker.proc.wait(5), 0)
        self.assertIsNone(worker.messages.get(timeout=5))  # EOF, though it still runs
        self.assertFalse(process_gone(daemon_pid))

    def test_exception_traceback_starts_at_user_code(self):
        worker = self.ready()
        header, value = worker.run_job('raise', 3)
        self.assertEqual(header['status'], 9)
        self.assertIsNone(value)
        self.assertEqual(header['exception'],
                         'Traceback (most recent call last):\n'
                         '  File "<string>", line %d, in compute\n'
                         '  File "<string>", line %d, in helper\n'
                         'ValueError: bad value 3\n'
                         % (line_of(CODE, 'return helper(arg)'), line_of(CODE, 'raise ValueError')))

    def test_system_exit_is_a_failed_job(self):
        worker = self.ready()
        header, value = worker.run_job('sys_exit', 3)
        self.assertEqual(header['status'], 9)
        self.assertEqual(header['exception'],
                         'Traceback (most recent call last):\n'
                         '  File "<string>", line %d, in compute\nSystemExit: 3\n'
                         % line_of(CODE, 'sys.exit(arg)'))

    def test_unpicklable_result(self):
        worker = self.ready()
        header, value = worker.run_job('unpicklable')
        self.assertEqual((header['status'], value), (9, None))
        self.assertRegex(header['exception'], "Can't (pickle|get) local object")

    def test_large_result(self):
        worker = self.ready()
        size = 50 * 1024 * 1024
        header, value = worker.run_job('big', size)
        self.assertEqual(header['status'], 11)
        self.assertEqual(len(value), size)
        self.assertEqual(value.count(b'x'), size)

    def test_result_over_the_limit_is_refused_by_the_job(self):
        # The daemon sends max_result (src/limits.rs MAX_RESULT): a larger result would break
        # the worker's stream, so the job reports it instead, and the worker goes on.
        worker = self.ready(max_result=1000)
        header, value = worker.run_job('big', 2000)
        self.assertEqual((header['status'], value), (9, None))
        self.assertRegex(header['exception'],
                         r'the result pickles to \d+ bytes, more than this node returns \(1000\)')
        header, value = worker.run_job('big', 500)
        self.assertEqual((header['status'], len(value)), (11, 500))

    def test_exit_without_result(self):
        worker = self.ready()
        header, value = worker.run_job('os_exit', 4)
        self.assertEqual(header, {'ev': 'done', 'id': 1, 'status': 9, 'stdout': None,
                                  'stderr': None, 'signal': None, 'exit_code': 4,
                                  'exception': 'job process exited with status 4 without a result'})
        self.assertIsNone(value)

    def test_kill_takes_the_job_process_group(self):
        worker = self.ready()
        header, blob = job(7, 'spawn_and_sleep')
        worker.send(header, blob)
        pid = worker.expect('started')[0]['pid']
        pid_file = os.path.join(self.dest, 'sleep.pid')
        self.assertTrue(wait_until(lambda: os.path.exists(pid_file) and os.path.getsize(pid_file)))
        with open(pid_file) as fd:
            sleep_pid = int(fd.read())
        worker.send({'op': 'kill', 'id': 99})  # unknown: ignored
        worker.send({'op': 'kill', 'id': 7})
        header, blob = worker.expect('done')
        self.assertEqual(header, {'ev': 'done', 'id': 7, 'status': 9, 'stdout': None,
                                  'stderr': None, 'signal': 9, 'exit_code': None,
                                  'exception': 'job process was killed by signal 9 (SIGKILL)'})
        self.assertIsNone(pickle.loads(blob))
        self.assertTrue(process_gone(pid))
        self.assertTrue(wait_until(lambda: process_gone(sleep_pid)), 'sleep grandchild survived')
        self.assertEqual(worker.run_job('echo', 1)[1], 1)  # the worker carries on

    def test_job_runs_in_a_child_forked_ahead(self):
        # After setup the worker forks a zygote, which forks the next jobs' children ahead
        # (SPARES of them); a job takes one, the zygote forks the next, and the worker itself
        # never forks again.
        worker = self.ready()
        wpid = worker.proc.pid
        self.assertTrue(wait_until(lambda: len(live_children(wpid)) == 1),
                        'no zygote: %r' % live_children(wpid))
        zygote = live_children(wpid)[0]
        self.assertTrue(wait_until(lambda: len(live_children(zygote)) == 2),
                        'no spares: %r' % live_children(zygote))
        spares = live_children(zygote)
        started, done = worker.run_jobs([job(1, 'echo', 'first')])
        self.assertIn(started[1]['pid'], spares)
        self.assertEqual(pickle.loads(done[1][1]), 'first')
        self.assertTrue(wait_until(lambda: not os.path.exists('/proc/%d' % started[1]['pid'])),
                        'the zygote did not reap the job process')
        self.assertTrue(wait_until(lambda: len(live_children(zygote)) == 2))
        self.assertEqual(live_children(wpid), [zygote])
        # Spares killed from outside are reaped and replaced; the next jobs still run.
        for killed in live_children(zygote):
            os.kill(killed, signal.SIGKILL)
            self.assertTrue(wait_until(lambda: not os.path.exists('/proc/%d' % killed)
                                       and len(live_children(zygote)) == 2), 'spare not replaced')
        self.assertEqual(worker.run_job('echo', 'second')[1], 'second')
        started, done = worker.run_jobs([job(i, 'echo', i) for i in range(2, 6)])
        self.assertEqual({i: pickle.loads(done[i][1]) for i in done}, {i: i for i in range(2, 6)})
        # Close leaves no process behind.
        self.assertTrue(wait_until(lambda: len(live_children(zygote)) == 2))
        last = live_children(zygote)
        worker.send({'op': 'close'})
        self.assertTrue(worker.expect('closed')[0]['ok'])
        self.assertEqual(worker.proc.wait(5), 0)
        for pid in [zygote] + last:
            self.assertTrue(wait_until(lambda: process_gone(pid)), '%d survived close' % pid)

    def test_jobs_run_when_the_zygote_is_killed(self):
        # Without its zygote the worker forks job processes itself; a job running when the
        # zygote died still reports its outcome.
        worker = self.ready()
        wpid = worker.proc.pid
        self.assertTrue(wait_until(lambda: len(live_children(wpid)) == 1))
        zygote = live_children(wpid)[0]
        header, blob = job(1, 'window', 0.5)
        worker.send(header, blob)
        worker.expect('started')
        os.kill(zygote, signal.SIGKILL)
        done, _ = worker.expect('done')
        self.assertEqual(done['status'], 11)
        self.assertEqual(worker.run_job('echo', 'after')[1], 'after')
        self.assertTrue(wait_until(lambda: not os.path.exists('/proc/%d' % zygote)),
                        'the dead zygote was not reaped')

    def test_held_job_runs_only_after_release(self):
        # With cgroups the daemon places a job in its cgroup between `started` and `release`:
        # no user code may run before.
        worker = self.ready()
        header, blob = job(8, 'echo', 'held')
        header['hold'] = True
        worker.send(header, blob)
        worker.expect('started')
        with self.assertRaises(AssertionError):
            worker.recv(timeout=0.5)  # held: nothing ran, so no `done`
        worker.send({'op': 'release', 'id': 99})  # unknown: ignored
        worker.send({'op': 'release', 'id': 8})
        done, result = worker.expect('done')
        self.assertEqual((done['status'], pickle.loads(result)), (11, 'held'))
        # A held job can still be killed before its release.
        header, blob = job(9, 'echo', 'never')
        header['hold'] = True
        worker.send(header, blob)
        worker.expect('started')
        worker.send({'op': 'kill', 'id': 9})
        done, _ = worker.expect('done')
        self.assertEqual(done['status'], 9)

    def test_descendant_holding_the_result_pipe(self):
        # A job that forks leaves its result pipe open in the grandchild; the
        # result must still arrive when the job itself ends.
        worker = self.ready()
        began = time.monotonic()
        header, value = worker.run_job('fork_holder', 10)
        self.assertEqual((header['status'], value), (11, 'parent done'))
        self.assertLess(time.monotonic() - began, 8)  # not when the grandchild exits

    def test_fd_level_output_goes_to_stderr(self):
        worker = self.ready()
        header, value = worker.run_job('fd_output')
        self.assertEqual((header['status'], value, header['stdout'], header['stderr']),
                         (11, 'ok', '', ''))
        worker.stop()
        log = worker.stderr_text()
        for text in ('fd-level-from-shell', 'fd-level-from-job', 'logger-line'):
            self.assertIn(text, log)

    def test_logger_is_the_references_and_no_threading(self):
        # dispynode_logger has pycos.Logger's API (the reference's) and writes to the
        # daemon's log.  The worker must not import threading (logging does): its at-fork
        # hook makes every job process's fork cost about a third more CPU.
        worker = self.ready(code=textwrap.dedent('''\
            import sys

            def compute(kind):
                log = dispynode_logger
                log.debug('hidden-debug')
                log.info('shown-info %d', 7)
                log.setLevel(log.DEBUG)
                log.show_ms(True)
                log.debug('shown-debug')
                log.setLevel(log.ERROR)
                log.warning('hidden-warning')
                log.warn('hidden-warn')
                log.error('shown-error')
                log.flush()
                return 'threading' in sys.modules, log.level, type(log).__name__
            '''))
        header, value = worker.run_job('log')
        self.assertEqual((header['status'], header['stderr']), (11, ''))
        # Some interpreters import threading at start-up (a site .pth file): the worker
        # must add no import of it.
        bare = subprocess.run([sys.executable, '-c', 'import sys; print("threading" in sys.modules)'],
                              capture_output=True, text=True, check=True, timeout=30).stdout.strip()
        self.assertEqual(value, (bare == 'True', 40, 'Logger'))
        worker.stop()
        log = worker.stderr_text()
        self.assertRegex(log, r'\d{4}-\d\d-\d\d \d\d:\d\d:\d\d dispynode - shown-info 7\n')
        self.assertRegex(log, r'\d\d:\d\d:\d\d\.\d{3} dispynode - shown-debug\n')
        self.assertIn('dispynode - shown-error\n', log)
        for hidden in ('hidden-debug', 'hidden-warning', 'hidden-warn'):
            self.assertNotIn(hidden, log)

    def test_boot_keeps_the_parsers_garbage_out_of_the_worker(self):
        # Compiled in the worker itself, the worker's source leaves megabytes of parser
        # garbage in its heap, which every job's fork and exit then pays for (the boot's
        # docstring).  Booted, the heap holds the code only; jobs see argv as with -c alone.
        def heap_kib(worker):
            kib, current = 0, None
            with open('/proc/%d/smaps' % worker.proc.pid) as fd:
                for line in fd:
                    fields = line.split()
                    if '-' in fields[0] and not fields[0].endswith(':'):
                        current = fields[5] if len(fields) > 5 else None
                    elif fields[0] == 'Rss:' and current == '[heap]':
                        kib += int(fields[1])
            return kib

        booted = self.ready(code='import sys\ndef compute(kind):\n'
                                 '    return sys.argv, max(map(len, sys.orig_argv))\n')
        # The source came on stdin: no copy of it among the interpreter's arguments.
        self.assertEqual(booted.run_job('argv')[1], (['-c'], len(BOOT_SOURCE)))
        direct = WorkerProcess(command=['-c', WORKER_SOURCE])
        self.addCleanup(direct.stderr.close)
        self.addCleanup(direct.stop)
        direct.send(self.config(CODE))
        self.assertEqual(direct.expect('init')[0], {'ev': 'init', 'ok': True})
        self.assertLess(heap_kib(booted) + 1024, heap_kib(direct))

    def test_jobs_and_what_they_start_do_not_inherit_bind_now(self):
        worker = self.ready(code='import os, subprocess\ndef compute(kind):\n'
                                 '    return (os.environ.get("LD_BIND_NOW"), subprocess.check_output(\n'
                                 '        ["sh", "-c", "echo ${LD_BIND_NOW-unset}"]))\n')
        self.assertEqual(worker.run_job('env')[1], (None, b'unset\n'))

    def test_boot_reports_a_source_that_does_not_compile(self):
        proc = subprocess.run([sys.executable, '-c', BOOT_SOURCE],
                              input=source_preamble('def broken(:\n'),
                              capture_output=True, timeout=30)
        self.assertNotEqual(proc.returncode, 0)
        self.assertIn(b'SyntaxError', proc.stderr)

    def test_boot_says_when_stdin_ends_before_the_source(self):
        for stdin in (b'', LEN.pack(100) + b'x = 1\n'):
            proc = subprocess.run([sys.executable, '-c', BOOT_SOURCE], input=stdin,
                                  capture_output=True, timeout=30)
            self.assertEqual(proc.returncode, 1)
            self.assertIn(b'stdin ended before the worker source', proc.stderr)

    def test_output_is_valid_utf8(self):
        worker = self.ready()
        header = worker.run_job('echo', 'h\u00e9llo \udcff')[0]  # lone surrogate
        self.assertEqual(header['stdout'], 'out h\u00e9llo ?\n')  # the test reader decodes strictly

    def test_runs_as_a_script(self):
        worker = self.ready(as_script=True)
        self.assertEqual(worker.run_job('echo', 'script')[1], 'script')

    def test_main_classes_in_setup_args_and_job_args(self):
        worker = self.start(setup='setup', code=CODE + textwrap.dedent('''
            def setup(point):
                global SETUP_POINT
                SETUP_POINT = (type(point).__module__, point.x, isinstance(point, Point))
                return 0
            '''))
        setup_blob = pickle_as_main({'compute_id': 1, 'setup_args': (Point(5),)})
        self.assertTrue(self.setup_worker(worker, setup_blob=setup_blob)['ok'])
        self.assertEqual(worker.run_job('global', 'SETUP_POINT')[1], ('__main__', 5, True))
        args = pickle_as_main(('point', Point(8)))
        self.assertEqual(worker.run_job(args_pickle=args)[1], ('__main__', 'Point', 8, True))

    def test_cgroup_procs(self):
        worker = self.ready()
        procs = os.path.join(self.dest, 'cgroup.procs')
        open(procs, 'w').close()
        self.assertEqual(worker.run_job('echo', 2, cgroup_procs=procs)[1], 2)
        with open(procs) as fd:
            self.assertEqual(fd.read(), '0')
        header, value = worker.run_job('echo', 2, cgroup_procs='/nonexistent/cgroup.procs')
        self.assertEqual((header['status'], value), (9, None))
        self.assertIn('could not join cgroup /nonexistent/cgroup.procs', header['exception'])

    def test_job_before_setup(self):
        worker = self.start()
        header, value = worker.run_job('echo', 1)
        self.assertEqual((header['status'], header['exception'], value),
                         (9, 'computation is not set up', None))


SETUP_CODE = textwrap.dedent('''\
    with open('loads.txt', 'a') as fd:
        fd.write('x')

    def setup(base, status=0):
        global BASE
        BASE = base * 2
        return status

    def failing_setup(base):
        raise RuntimeError('no %s' % base)

    def cleanup(base, status=0):
        with open('cleanup.txt', 'w') as fd:
            fd.write('cleanup %s' % base)

    def failing_cleanup(*args):
        raise OSError('cleanup broke')

    def compute(name):
        return globals().get(name)
    ''')


class SetupAndCloseTests(WorkerTestCase):

    def test_setup_globals_visible_to_jobs(self):
        for status in (0, 1, 2):
            with self.subTest(status=status):
                worker = self.ready(SETUP_CODE, setup='setup', setup_args=(21, status))
                self.assertEqual(worker.run_job('BASE')[1], 42)
                worker.stop()

    def test_jobs_start_in_the_computation_directory_wherever_setup_went(self):
        code = ('import os\ndef setup():\n    os.chdir("/")\n    return 0\n'
                'def compute():\n    return os.getcwd()\n')
        worker = self.ready(code, setup='setup')
        self.assertEqual([worker.run_job()[1] for _ in range(3)],
                         [os.path.realpath(self.dest)] * 3)

    def test_setup_bad_status(self):
        worker = self.start(SETUP_CODE, setup='setup')
        self.assertEqual(self.setup_worker(worker, (1, 5)),
                         {'ev': 'setup', 'ok': False, 'error': '"setup" failed with 5'})

    def test_setup_missing_argument(self):
        worker = self.start(SETUP_CODE, setup='setup')
        self.assertEqual(self.setup_worker(worker, ())['error'],
                         '"setup" failed with TypeError: setup() missing 1 required '
                         "positional argument: 'base'\n")

    def test_setup_exception(self):
        worker = self.start(SETUP_CODE, setup='failing_setup')
        self.assertEqual(self.setup_worker(worker, (7,))['error'],
                         '"setup" failed with Traceback (most recent call last):\n'
                         '  File "<string>", line %d, in failing_setup\nRuntimeError: no 7\n'
                         % line_of(SETUP_CODE, "raise RuntimeError"))

    def test_setup_args_must_be_a_tuple(self):
        worker = self.start(SETUP_CODE, setup='setup')
        blob = pickle.dumps({'compute_id': 1, 'setup_args': [1]})
        self.assertEqual(self.setup_worker(worker, setup_blob=blob)['error'],
                         'invalid computation')

    def test_depends_loading_failure(self):
        code = 'def init_depends():\n    import no_such_module_here\n\ninit_depends()\n'
        worker = self.start(code)
        self.assertEqual(self.setup_worker(worker)['error'],
                         'loading "depends" failed with Traceback (most recent call last):\n'
                         '  File "<string>", line 4, in <module>\n'
                         '  File "<string>", line 2, in init_depends\n'
                         "ModuleNotFoundError: No module named 'no_such_module_here'\n")

    def test_init_syntax_error(self):
        worker = self.new_worker()
        worker.send(self.config('def compute(:\n    pass\n'))
        header, _ = worker.expect('init')
        self.assertFalse(header['ok'])
        self.assertIn('SyntaxError', header['error'])

    def test_resetup_reruns_code_and_setup(self):
        worker = self.ready(SETUP_CODE, setup='setup', setup_args=(1,))
        self.assertEqual(worker.run_job('BASE')[1], 2)
        self.assertTrue(self.setup_worker(worker, (5,))['ok'])
        self.assertEqual(worker.run_job('BASE')[1], 10)
        with open(os.path.join(self.dest, 'loads.txt')) as fd:
            self.assertEqual(fd.read(), 'xx')

    def test_close_runs_cleanup(self):
        worker = self.ready(SETUP_CODE, setup='setup', cleanup='cleanup', setup_args=(3,))
        worker.send({'op': 'close'})
        self.assertEqual(worker.expect('closed')[0], {'ev': 'closed', 'ok': True, 'error': None})
        self.assertEqual(worker.proc.wait(5), 0)
        with open(os.path.join(self.dest, 'cleanup.txt')) as fd:
            self.assertEqual(fd.read(), 'cleanup 3')

    def test_close_kills_running_jobs_first(self):
        worker = self.ready(CODE + '\ndef cleanup():\n    open("cleanup.txt", "w").close()\n',
                            cleanup='cleanup')
        header, blob = job(3, 'window', 30)
        worker.send(header, blob)
        worker.expect('started')
        worker.send({'op': 'close'})
        done, _ = worker.expect('done')
        self.assertEqual((done['id'], done['signal']), (3, 9))
        self.assertTrue(worker.expect('closed')[0]['ok'])
        self.assertEqual(worker.proc.wait(5), 0)
        self.assertTrue(os.path.exists(os.path.join(self.dest, 'cleanup.txt')))

    def test_cleanup_failure_is_reported(self):
        worker = self.ready(SETUP_CODE, setup='setup', cleanup='failing_cleanup', setup_args=(1,))
        worker.send({'op': 'close'})
        header, _ = worker.expect('closed')
        self.assertFalse(header['ok'])
        self.assertTrue(header['error'].startswith('"cleanup" failed with Traceback'))
        self.assertTrue(header['error'].endswith('OSError: cleanup broke\n'))
        self.assertEqual(worker.proc.wait(5), 0)

    def test_cleanup_flag_is_not_a_function(self):
        worker = self.ready(SETUP_CODE, cleanup=True)
        worker.send({'op': 'close'})
        self.assertTrue(worker.expect('closed')[0]['ok'])
        self.assertFalse(os.path.exists(os.path.join(self.dest, 'cleanup.txt')))

    def test_eof_kills_jobs_and_exits(self):
        worker = self.ready()
        header, blob = job(1, 'spawn_and_sleep')
        worker.send(header, blob)
        pid = worker.expect('started')[0]['pid']
        pid_file = os.path.join(self.dest, 'sleep.pid')
        self.assertTrue(wait_until(lambda: os.path.exists(pid_file) and os.path.getsize(pid_file)))
        with open(pid_file) as fd:
            sleep_pid = int(fd.read())
        worker.proc.stdin.close()
        self.assertEqual(worker.proc.wait(5), 0)
        self.assertIsNone(worker.messages.get(timeout=5))  # no done, no closed
        self.assertTrue(process_gone(pid))
        self.assertTrue(wait_until(lambda: process_gone(sleep_pid)))


# A self-signed certificate (CA:TRUE, valid 2000-2100) for the TLS test only.
TEST_CERT = '''-----BEGIN CERTIFICATE-----
MIIBYzCCAQmgAwIBAgIBATAKBggqhkjOPQQDAjAgMR4wHAYDVQQDDBVkaXNweW5v
ZGUtd29ya2VyLXRlc3QwIBcNMDAwMTAxMDAwMDAwWhgPMjEwMDAxMDEwMDAwMDBa
MCAxHjAcBgNVBAMMFWRpc3B5bm9kZS13b3JrZXItdGVzdDBZMBMGByqGSM49AgEG
CCqGSM49AwEHA0IABK0ZA5yxtrEJBJHvTUpYa2jR3a1n5LltveNf7V66+V13/dLy
zLjoIahkMDJuPWyQnbVcGgwby0oLgHsxYWRgcJOjMjAwMA8GA1UdEwEB/wQFMAMB
Af8wHQYDVR0OBBYEFA7qKSR1AENSLWDzbjr8e1uiae0yMAoGCCqGSM49BAMCA0gA
MEUCIQDVn2e8xCZtfV4cwEceL0qkX5mtekfrKLPdAOCRFBCm8wIgYKeXUyVDJQg7
kVWJ9GrCbqgASLg25oom42i+m3IqNtQ=
-----END CERTIFICATE-----
'''
TEST_KEY = '''-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgz9zmtvMNUFELyMb2
kP+5OX3QWzBiHJPnwagr93hBqcWhRANCAAStGQOcsbaxCQSR701KWGto0d2tZ+S5
bb3jX+1euvldd/3S8sy46CGoZDAybj1skJ21XBoMG8tKC4B7MWFkYHCT
-----END PRIVATE KEY-----
'''


class _JobReply:
    pass


class _XferFile:
    pass


class StubDispyUnpickler(pickle.Unpickler):
    """Unpickles what the node sends with stub dispy classes, the way a
    client with the dispy module would."""

    def find_class(self, module, name):
        if module == 'dispy':
            return {'_JobReply': _JobReply, '_XferFile': _XferFile}[name]
        return super().find_class(module, name)


def stub_loads(data):
    return StubDispyUnpickler(io.BytesIO(data)).load()


def recv_exact(sock, size):
    data = bytearray()
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError('short read')
        data += chunk
    return bytes(data)


def recv_frame(sock):
    return recv_exact(sock, LEN.unpack(recv_exact(sock, 4))[0])


def send_frame(sock, payload):
    sock.sendall(LEN.pack(len(payload)) + payload)


class FakeClient:
    """The job-reply port of a dispy client: acknowledges JOB_REPLY with
    `reply` and receives FILEXFER the way dispy's file_xfer_process does
    (ack the byte count, read min(rest, 1024000) raw bytes, repeat)."""

    def __init__(self, reply=b'ACK', ssl_context=None):
        self.reply = reply
        self.ssl_context = ssl_context
        self.events = queue.Queue()
        self.sock = socket.socket()
        self.sock.bind(('127.0.0.1', 0))
        self.sock.listen(8)
        self.sock.settimeout(0.05)  # lets the serving thread notice stop()
        self.addr = list(self.sock.getsockname())
        self.stopping = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while not self.stopping:
            try:
                conn, _ = self.sock.accept()
            except socket.timeout:
                continue
            try:
                conn.settimeout(10)
                if self.ssl_context:
                    conn = self.ssl_context.wrap_socket(conn, server_side=True)
                with conn:
                    self._handle(conn)
            except Exception as exc:
                self.events.put(('error', repr(exc)))

    def _handle(self, conn):
        msg = recv_frame(conn)
        if msg.startswith(b'JOB_REPLY:'):
            reply = stub_loads(msg[len(b'JOB_REPLY:'):])
            send_frame(conn, self.reply)
            self.events.put(('JOB_REPLY', reply))
        elif msg.startswith(b'FILEXFER:'):
            xfer = stub_loads(msg[len(b'FILEXFER:'):])
            job_reply = stub_loads(recv_frame(conn))
            size = xfer.stat_buf.st_size
            data, chunks = bytearray(), []
            while len(data) < size:
                send_frame(conn, pickle.dumps(len(data)))
                chunk = recv_exact(conn, min(size - len(data), FILE_CHUNK))
                chunks.append(len(chunk))
                data += chunk
            send_frame(conn, pickle.dumps(len(data)))
            self.events.put(('FILEXFER', xfer, job_reply, bytes(data), chunks))
        else:
            self.events.put(('error', 'unexpected message %r' % msg[:40]))

    def next_event(self, timeout=5.0):
        return self.events.get(timeout=timeout)

    def stop(self):
        self.stopping = True
        self.thread.join(5)
        self.sock.close()


class ClientLinkTests(WorkerTestCase):
    """dispy_provisional_result and dispy_send_file against a fake client."""

    def client(self, **kwargs):
        client = FakeClient(**kwargs)
        self.addCleanup(client.stop)
        return client

    def assert_reply(self, reply, status, result):
        state = vars(reply)
        self.assertEqual(sorted(state), sorted(['uid', 'hash', 'ip_addr', 'status', 'result',
                                                'stdout', 'stderr', 'exception',
                                                'start_time', 'end_time']))
        self.assertEqual((state['uid'], state['hash'], state['ip_addr'], state['status']),
                         (140000000001, 'hash1', '127.0.0.2', status))
        self.assertEqual(state['result'] if result is None else pickle.loads(state['result']),
                         result)
        self.assertEqual((state['stdout'], state['stderr'], state['exception']),
                         (None, None, None))

    def test_provisional_result(self):
        client = self.client()
        worker = self.ready(client_addr=client.addr)
        header, value = worker.run_job('provisional', ('provisional', 2))
        self.assertEqual((header['status'], value), (11, 0))
        kind, reply = client.next_event()
        self.assertEqual(kind, 'JOB_REPLY')
        self.assert_reply(reply, 7, ('provisional', 2))
        self.assertTrue(reply.result.startswith(b'\x80\x04'))
        self.assertGreaterEqual(reply.end_time, reply.start_time)

    def test_provisional_relay_and_refusal(self):
        client = self.client()
        scheduler = self.client(reply=b'NAK')
        worker = self.ready(client_addr=client.addr, scheduler_addr=scheduler.addr)
        self.assertEqual(worker.run_job('provisional', 1, relay=True)[1], -1)
        self.assertEqual(scheduler.next_event()[0], 'JOB_REPLY')
        self.assertTrue(client.events.empty())

    def test_provisional_unreachable_client(self):
        unused = socket.socket()
        unused.bind(('127.0.0.1', 0))  # bound, not listening: connection refused
        self.addCleanup(unused.close)
        worker = self.ready(client_addr=list(unused.getsockname()))
        self.assertEqual(worker.run_job('provisional', 1)[1], -1)

    def test_provisional_over_tls(self):
        cert = os.path.join(self.dest, 'cert.pem')
        key = os.path.join(self.dest, 'key.pem')
        with open(cert, 'w') as fd:
            fd.write(TEST_CERT)
        with open(key, 'w') as fd:
            fd.write(TEST_KEY)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        client = self.client(ssl_context=context)
        worker = self.ready(client_addr=client.addr, certfile=cert, keyfile=key)
        self.assertEqual(worker.run_job('provisional', 'secure')[1], 0)
        kind, reply = client.next_event()
        self.assertEqual(kind, 'JOB_REPLY')
        self.assert_reply(reply, 7, 'secure')

    def write(self, relpath, data):
        path = os.path.join(self.dest, relpath)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, 'wb') as fd:
            fd.write(data)
        return path

    def test_send_file(self):
        client = self.client()
        worker = self.ready(client_addr=client.addr)
        path = self.write('out.txt', b'file from job 2\n')
        self.assertEqual(worker.run_job('send_file', 'out.txt')[1], 0)
        kind, xfer, reply, data, chunks = client.next_event()
        self.assertEqual(kind, 'FILEXFER')
        self.assertEqual(xfer.name, os.path.realpath(path))
        self.assertEqual((xfer.dest_path, xfer.compute_id, xfer.sep), ('', None, os.sep))
        self.assertIsInstance(xfer.stat_buf, os.stat_result)
        self.assertEqual(xfer.stat_buf.st_size, 16)
        self.assertEqual((data, chunks), (b'file from job 2\n', [16]))
        self.assert_reply(reply, 6, None)

    def test_send_file_without_nagle(self):
        # TCP_NODELAY: the short last segment of each chunk must not wait for the client's
        # (possibly delayed) ACK of the ones before it; it made half of the benchmark's
        # 100 MiB sends 3-4x slower (bench/README.md, "Files").
        client = self.client()
        worker = self.ready(client_addr=client.addr)
        self.write('two-chunks.bin', os.urandom(FILE_CHUNK + 10))
        rc, calls = worker.run_job('send_file_sockopts', 'two-chunks.bin')[1]
        self.assertEqual(rc, 0)
        self.assertIn((socket.IPPROTO_TCP, socket.TCP_NODELAY, 1), [tuple(c) for c in calls])
        self.assertEqual(client.next_event()[4], [FILE_CHUNK, 10])

    def test_send_file_after_provisional_and_in_subdirectory(self):
        client = self.client()
        worker = self.ready(client_addr=client.addr)
        self.write('sub/dir/part.bin', b'\x00\x01')
        self.assertEqual(worker.run_job('provisional_then_file', 'sub/dir/part.bin')[1], (0, 0))
        self.assertEqual(client.next_event()[0], 'JOB_REPLY')
        _, xfer, reply, data, _ = client.next_event()
        self.assertEqual((xfer.dest_path, data), (os.path.join('sub', 'dir'), b'\x00\x01'))
        self.assert_reply(reply, 7, 'partial')  # the reply as last set by the job

    def test_send_file_outside_cwd_and_empty(self):
        client = self.client()
        worker = self.ready(client_addr=client.addr)
        outside = tempfile.NamedTemporaryFile(prefix='outside-')
        self.addCleanup(outside.close)
        self.assertEqual(worker.run_job('send_file', outside.name)[1], 0)
        _, xfer, _, data, chunks = client.next_event()
        self.assertEqual((xfer.dest_path, data, chunks), ('.', b'', []))

    def test_send_large_file_in_chunks(self):
        client = self.client()
        worker = self.ready(client_addr=client.addr)
        content = os.urandom(2 * FILE_CHUNK + 12345)
        self.write('big.bin', content)
        self.assertEqual(worker.run_job('send_file', 'big.bin')[1], 0)
        _, _, _, data, chunks = client.next_event()
        self.assertEqual(chunks, [FILE_CHUNK, FILE_CHUNK, 12345])
        self.assertTrue(data == content)  # not assertEqual: no 2 MB diff on failure

    def test_send_file_refusals(self):
        client = self.client()
        worker = self.ready(client_addr=client.addr, max_file_size=100)
        self.write('small.txt', b's' * 100)
        self.write('large.txt', b'l' * 101)
        os.mkdir(os.path.join(self.dest, 'adir'))
        for path in ('large.txt', 'missing.txt', 'adir'):
            with self.subTest(path=path):
                self.assertEqual(worker.run_job('send_file', path)[1], -1)
        self.assertTrue(client.events.empty())  # refused before connecting
        self.assertEqual(worker.run_job('send_file', 'small.txt')[1], 0)
        self.assertEqual(client.next_event()[3], b's' * 100)


if __name__ == '__main__':
    unittest.main()
