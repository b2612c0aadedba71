"""Python job worker of the Rust dispynode.

The Rust daemon never unpickles client data, so everything that has to run
user Python (the computation's code, ``setup``, ``cleanup`` and the jobs) lives
here.  The daemon starts one worker per *function* computation, as
``python3 -c <runner/dispynode_boot.py>`` with this source first on its stdin (the boot
compiles it in a short-lived child, to keep the parser's garbage out of the heap
every job process is forked from; ``__file__`` is not available), and drives it
through a private message stream:

* daemon -> worker on the worker's stdin (after the source), worker -> daemon on its stdout;
* every message is ``u32 BE header_len | UTF-8 JSON object | u32 BE blob_len | blob``.

The worker compiles the code on ``init``, execs it and runs ``setup`` on
``setup``, then forks one child per ``job``; jobs inherit the globals that the
code and ``setup`` created, which is what dispy's "setup process" provides.
The next jobs' children are forked ahead of time (two "spares", each waiting on
a pipe for its job and walking the job's code path once with dummy data meanwhile),
so a job rarely waits for a fork; spares are forked by a "zygote", a
quiet copy of the worker made once after setup, so that the worker itself never
forks (a fork write-protects the forking process's memory: every page the
worker touched afterwards would be copied, about 200 faults and 1 ms of CPU
per job).
A child whose ``done`` message fits in one atomic pipe write (PIPE_BUF bytes:
small results and output) writes it to the daemon's stream itself, one hop
less on the job's way back; it holds a POSIX lock on a private memfd while it
writes, and so does the worker for a message longer than PIPE_BUF (a pipe may
split those), so the worker's longer messages are never split by a child's.
Messages of at most PIPE_BUF bytes go in one write, never split.  The child
then tells the worker on its own pipe.
Larger outcomes go over that pipe, and the worker sends the ``done`` as soon
as the outcome is complete (the child's exit and reaping happen off the job's
critical path), or once the child has been reaped if it sent none.

What a fresh job process runs before its job is kept small, because every page it
writes to after the fork is copied (even a reference count is a write): the worker
imports nothing that registers at-fork hooks (``threading``, so no ``logging``), the
child resets its signals through ``_signal`` (``signal`` converts to and from enums),
and its job message comes from the worker in ``marshal`` (both ends are this file in
this interpreter), not JSON.  ``bench/README.md`` has the measurements.

Jobs talk to the client directly for ``dispy_provisional_result`` and
``dispy_send_file``: the wire format there is dispy's (framed pickles of
``dispy._JobReply`` / ``dispy._XferFile``), built by hand because the node has
no ``dispy`` module.

Standard library only, Python 3.7+, single-threaded (it forks).
"""

import array
import fcntl
import io
import json
import linecache
import marshal
import os
import pickle
import _signal
import select
import selectors
import signal
import socket
import stat
import struct
import sys
import time
import traceback
import types

# dispy's file transfer sends exactly this many bytes per acknowledgement.
FILE_CHUNK = 1024000
# dispy job states carried in _JobReply.status.
RUNNING, PROVISIONAL, TERMINATED, FINISHED = 6, 7, 9, 11
# Results are pickled with protocol 4 so Python 3.7 clients can read them.
RESULT_PROTOCOL = 4
READ_SIZE = 1 << 20
# Spares the zygote keeps ready: with one, the next job's child was often still being forked
# or preparing itself when the job came (the fork, the child's set-up and the client compete
# for the CPUs); with two, each has a whole job's time more.
SPARES = 2
_LEN = struct.Struct('>L')
_SIGCHLD, _SIGINT, _SIGTERM = int(signal.SIGCHLD), int(signal.SIGINT), int(signal.SIGTERM)


# ---------------------------------------------------------------- framing

def write_all(fd, data):
    """os.write until everything is written (pipes accept partial writes)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _not_json(value):
    raise TypeError('%s is not JSON serializable' % type(value).__name__)


# One JSON encoder, made once: json.dumps makes a JSONEncoder and a C encoder on every call,
# which in a freshly forked job process means dozens more pages touched (copied).
_JSON_CHUNKS = (json.encoder.c_make_encoder(None, _not_json, json.encoder.encode_basestring, None,
                                            ':', ',', False, False, True)
                if json.encoder.c_make_encoder else None)


def to_json(header):
    if _JSON_CHUNKS is None:
        return json.dumps(header, ensure_ascii=False, separators=(',', ':'))
    return ''.join(_JSON_CHUNKS(header, 0))


def frame_head(header, blob_len, encode=None):
    """Length, header and blob length of one framed message.  The header is JSON (invalid
    UTF-8, lone surrogates in captured output, is replaced: the Rust side requires valid
    UTF-8 JSON), or what ``encode`` makes of it."""
    if encode is None:
        text = to_json(header).encode('utf-8', 'replace')
    else:
        text = encode(header)
    return _LEN.pack(len(text)) + text + _LEN.pack(blob_len)


def write_message(fd, header, blob=b'', encode=None, lock=None):
    """Send one framed message; in one write when it fits in PIPE_BUF bytes (then it is
    atomic on a pipe, and the reader wakes once for it), else in two, holding ``lock`` (a
    StreamLock) if one is given: a pipe may split those, so they need it to keep other
    writers out."""
    head = frame_head(header, len(blob), encode)
    if len(head) + len(blob) <= select.PIPE_BUF:
        write_all(fd, head + blob)
        return
    with lock or StreamLock(None):
        write_all(fd, head)
        write_all(fd, blob)


def _from_json(data):
    return json.loads(data.decode('utf-8'))


def done_header(job_id, reply):
    """The ``done`` message of a job from the reply its child made."""
    header = {'ev': 'done', 'id': job_id}
    header.update(reply)
    return header


def _fd_ids(*fds):
    """(device, inode) of each fd, None for a closed one (or None)."""
    ids = []
    for fd in fds:
        try:
            st = os.fstat(fd)
            ids.append((st.st_dev, st.st_ino))
        except (OSError, TypeError):
            ids.append(None)
    return ids


def make_stream_lock():
    """A private file whose POSIX record lock serialises the writers of the daemon's
    stream (the worker and its job children); None if there is none to be had."""
    try:
        return os.memfd_create('dispynode-stream-lock')
    except (AttributeError, OSError):
        return None


class StreamLock:
    """Holds the stream lock for one message.  POSIX locks belong to the process, so a
    forked child and the worker exclude each other, and the kernel drops a killed
    writer's lock.  Re-entrant within a process (a POSIX lock is not: the inner unlock
    would release it)."""

    def __init__(self, fd):
        self.fd = fd
        self.depth = 0

    def __enter__(self):
        if self.fd is not None and self.depth == 0:
            fcntl.lockf(self.fd, fcntl.LOCK_EX)
        self.depth += 1

    def __exit__(self, *exc):
        self.depth -= 1
        if self.fd is not None and self.depth == 0:
            fcntl.lockf(self.fd, fcntl.LOCK_UN)


class FrameBuffer:
    """Accumulates bytes read from a non-blocking stream and cuts them into
    (header, blob) messages, so the worker never blocks on one peer."""

    def __init__(self, decode=_from_json):
        self._buf = bytearray()
        self._decode = decode

    def feed(self, data):
        self._buf += data

    def pop(self):
        """Return the next complete message, or None if more bytes are needed."""
        buf = self._buf
        if len(buf) < 4:
            return None
        header_len = _LEN.unpack_from(buf, 0)[0]
        if len(buf) < 8 + header_len:
            return None
        blob_start = 8 + header_len
        end = blob_start + _LEN.unpack_from(buf, 4 + header_len)[0]
        if len(buf) < end:
            return None
        header = self._decode(bytes(buf[4:4 + header_len]))
        with memoryview(buf) as view:  # one copy of a possibly huge blob
            blob = bytes(view[blob_start:end])
        del buf[:end]
        return header, blob

    def pending(self):
        """Bytes received after the last complete message."""
        return len(self._buf)


# ---------------------------------------------------------------- dispy pickles

def dispy_pickle(class_name, state):
    """Pickle an instance of ``dispy.<class_name>`` with the given state.

    The node has no dispy module, so the object is assembled from opcodes:
    GLOBAL dispy.<class_name>, EMPTY_TUPLE, NEWOBJ, the state dict, BUILD,
    STOP.  The state is a protocol-3 pickle body (no FRAME, its own memo) so it
    can be spliced into a protocol-4 stream that Python 3.7+ clients load.
    """
    body = pickle.dumps(state, 3)[2:-1]  # strip PROTO 3 and STOP
    return (b'\x80\x04cdispy\n' + class_name.encode('ascii') + b'\n)\x81'
            + body + b'b.')


class _IntOnlyUnpickler(pickle.Unpickler):
    """File-transfer acks are plain ints; refusing globals means a bogus peer
    cannot make the job import or call anything."""

    def find_class(self, module, name):
        raise pickle.UnpicklingError('unexpected global %s.%s' % (module, name))


def _load_ack(data):
    value = _IntOnlyUnpickler(io.BytesIO(data)).load()
    if type(value) is not int:
        raise ValueError('file transfer ack is not an int: %r' % (value,))
    return value


# ---------------------------------------------------------------- user code helpers

def format_user_exception(exc, user_globals):
    """Format ``exc`` the way dispy clients expect: the traceback starts at the
    first frame of user code (code exec'd in ``user_globals``), so the
    worker's own frames never show up in ``job.exception``.  Without user
    frames (e.g. a call with wrong arguments) only the exception line remains,
    as in the reference."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_globals is not user_globals:
        tb = tb.tb_next
    return ''.join(traceback.format_exception(type(exc), exc, tb))


def lookup(user_globals, name):
    """The user function ``name``; NameError (like the reference's exec of
    ``name(...)``) when the code does not define it."""
    try:
        return user_globals[name]
    except KeyError:
        raise NameError('name %r is not defined' % (name,)) from None


# ---------------------------------------------------------------- in-job client link

def _recv_exact(sock, size):
    chunks = []
    while size:
        chunk = sock.recv(min(size, READ_SIZE))
        if not chunk:
            raise ConnectionError('peer closed the connection')
        chunks.append(chunk)
        size -= len(chunk)
    return b''.join(chunks)


def _send_frame(sock, payload):
    sock.sendall(_LEN.pack(len(payload)) + payload)


def _recv_frame(sock):
    return _recv_exact(sock, _LEN.unpack(_recv_exact(sock, 4))[0])


def _dest_dir(abs_path):
    """``_XferFile.dest_path`` as dispy computes it: the file's directory
    relative to the job's cwd ('' directly in it), or '.' for a file outside
    it (the client then stores it in its own top directory)."""
    rel = os.path.relpath(abs_path, os.getcwd())
    if rel == os.pardir or rel.startswith(os.pardir + os.sep):
        return '.'
    return os.path.dirname(rel)


class ClientLink:
    """Implements dispy_provisional_result / dispy_send_file for the job
    running in this process.

    One instance is created at ``init``; each forked job calls begin_job() on
    its own copy, so the _JobReply it sends (status, last provisional result)
    is private to that job, as the reference's per-job reply object is.  The
    reply is made when the job first needs it (most jobs never do: one dict less
    in every job process).
    """

    def __init__(self, config):
        self.client_addr = tuple(config['client_addr'])
        self.scheduler_addr = tuple(config['scheduler_addr'])
        self.reply_ip_addr = config['reply_ip_addr']
        self.certfile = config.get('certfile')
        self.cadata = config.get('cadata')
        self.max_file_size = config.get('max_file_size') or 0
        self.job = None  # the job message's header
        self.reply = None

    def begin_job(self, header):
        self.job = header

    def _reply(self):
        """This job's _JobReply state, made on first use; None outside a job."""
        if self.reply is None and self.job is not None:
            job = self.job
            self.reply = {'uid': job['uid'], 'hash': job['hash'], 'ip_addr': self.reply_ip_addr,
                          'status': RUNNING, 'result': None, 'stdout': None, 'stderr': None,
                          'exception': None, 'start_time': job['start_time'], 'end_time': 0}
        return self.reply

    def _connect(self, relay, timeout):
        addr = self.scheduler_addr if relay else self.client_addr
        sock = socket.create_connection(addr, timeout=timeout)
        # No Nagle: the short last segment of each file chunk would wait for the client's ACK
        # of the ones before it, which a delayed ACK can hold up (bench/README.md, "Files").
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if not (self.certfile or self.cadata):
            return sock
        try:
            import ssl
            # The peer uses the same self-signed certificate; pycos checks the
            # chain against it but never the host name, and sends no client cert.
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname = False
            # The daemon passes the certificate itself ('cadata'): jobs cannot read the
            # node's key or certificate files.
            if self.cadata:
                ctx.load_verify_locations(cadata=self.cadata)
            else:
                ctx.load_verify_locations(self.certfile)
            return ctx.wrap_socket(sock)
        except BaseException:
            sock.close()
            raise

    def provisional_result(self, result, relay, timeout):
        reply = self._reply()
        if reply is None:
            return -1
        # Pickling errors propagate to the caller, as in the reference.
        reply.update(status=PROVISIONAL, end_time=time.time(),
                     result=pickle.dumps(result, RESULT_PROTOCOL))
        try:
            with self._connect(relay, timeout) as sock:
                _send_frame(sock, b'JOB_REPLY:' + dispy_pickle('_JobReply', reply))
                return 0 if _recv_frame(sock) == b'ACK' else -1
        except Exception:
            return -1

    def send_file(self, path, relay, timeout):
        reply = self._reply()
        if reply is None:
            return -1
        try:
            name = os.path.abspath(path)
            stat_buf = os.stat(name)
        except (OSError, TypeError, ValueError):
            return -1
        size = stat_buf.st_size
        if not stat.S_ISREG(stat_buf.st_mode) or 0 < self.max_file_size < size:
            return -1
        xfer = {'name': name, 'dest_path': _dest_dir(name), 'compute_id': None,
                'stat_buf': stat_buf, 'sep': os.sep}
        try:
            with open(name, 'rb') as fd, self._connect(relay, timeout) as sock:
                _send_frame(sock, b'FILEXFER:' + dispy_pickle('_XferFile', xfer))
                _send_frame(sock, dispy_pickle('_JobReply', reply))
                # The client acks how many bytes it has; we send the next chunk.
                while True:
                    recvd = _load_ack(_recv_frame(sock))
                    if recvd == size:
                        return 0
                    if not 0 <= recvd < size:
                        return -1
                    count = min(size - recvd, FILE_CHUNK)
                    # sendfile(2) on plain sockets: no copy through Python (TLS sockets
                    # read and send, as before).
                    if sock.sendfile(fd, recvd, count) != count:  # the file shrank meanwhile
                        return -1
        except Exception:
            return -1


def make_job_api(link, default_timeout):
    """The two functions jobs call, with the reference's signatures (the
    default timeout is the node's msg_timeout)."""

    def dispy_provisional_result(result, relay=False, timeout=default_timeout):
        """Send ``result`` to the client (the scheduler if ``relay``) as a
        provisional result of this job.  Returns 0 if acknowledged, else -1."""
        return link.provisional_result(result, relay, timeout)

    def dispy_send_file(path, relay=False, timeout=default_timeout):
        """Send the file at ``path`` to the client (the scheduler if
        ``relay``), which stores it under the same relative path.
        Returns 0 on success, -1 on failure or if the file is too big."""
        return link.send_file(path, relay, timeout)

    return dispy_provisional_result, dispy_send_file


class Logger:
    """``dispynode_logger`` for user code: the reference's (pycos.Logger) API and line
    format.  It writes to the worker's real stderr (the daemon's log), not to a job's
    captured sys.stderr.  Not the logging module: importing that imports threading,
    whose at-fork hook makes every job process fork slower (bench/README.md)."""

    DEBUG = 10
    INFO = 20
    WARN = WARNING = 30
    ERROR = 40
    CRITICAL = FATAL = 50

    def __init__(self, name, stream=None, level=None, log_ms=False):
        self.name = name
        self.stream = stream if stream is not None else sys.__stderr__
        self.log_ms = log_ms
        self.setLevel(level if level else Logger.INFO)

    def setLevel(self, level):
        self.level = level
        self.debug = self.log if level <= Logger.DEBUG else self.nolog
        self.info = self.log if level <= Logger.INFO else self.nolog
        self.warn = self.warning = self.log if level <= Logger.WARNING else self.nolog
        self.error = self.log if level <= Logger.ERROR else self.nolog
        self.critical = self.fatal = self.log if level <= Logger.FATAL else self.nolog

    def show_ms(self, flag):
        self.log_ms = bool(flag)

    def log(self, message, *args):
        now = time.time()
        if args:
            message = message % args
        stamp = time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(now))
        if self.log_ms:
            stamp += '.%03d' % (1000 * (now - int(now)))
        self.stream.write('%s %s - %s\n' % (stamp, self.name, message))
        self.stream.flush()

    def nolog(self, message, *args):
        return None

    def flush(self):
        self.stream.flush()

    shutdown = flush

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc_value, trace):
        self.shutdown()


# ---------------------------------------------------------------- the worker

# The dummy job message and arguments of a spare's warm-up (Worker._warm_up), made once here:
# making them in each spare would cost it page copies (marshal, the pickler) that its real job,
# whose message and arguments come made, never takes.
_WARM_UP_JOB = frame_head({'op': 'job', 'id': 0, 'uid': 0, 'hash': '', 'start_time': 0.0,
                           'code': None, 'args_len': 0}, 0, marshal.dumps)
_WARM_UP_ARGS = pickle.dumps(((0,), {}), RESULT_PROTOCOL)
# A job child's word to the worker that it sent its ``done`` itself (Worker._send_done).
_SENT = frame_head({'sent': True}, 0)


class RunningJob:
    """A forked job child and the pipe on which it reports its outcome."""

    def __init__(self, job_id, pid, fd, gate=None):
        self.id = job_id
        self.pid = pid
        self.fd = fd
        self.output = FrameBuffer()
        # Write end of the pipe a held child waits on (see the ``release`` op).
        self.gate = gate
        # ``done`` was sent from the complete outcome; the reap only forgets the child.
        self.reported = False
        self.zygote = False  # forked by the zygote, which reports its exit


class Spare:
    """A job child forked ahead of time: it waits for its job message on ``job_w``'s pipe
    and reports on ``result_fd``'s."""

    def __init__(self, pid, job_w, result_fd, zygote=False):
        self.pid = pid
        self.job_w = job_w
        self.result_fd = result_fd
        self.zygote = zygote  # the zygote's child (it reaps it), not ours
        self.placed = False  # the daemon has moved it into a job cgroup of its own (_op_placed)

    def close(self):
        """Close our ends of its pipes."""
        for fd in (self.job_w, self.result_fd):
            try:
                os.close(fd)
            except OSError:
                pass

    def discard(self):
        """EOF on its job pipe makes the spare exit; kill and reap it anyway, so that no
        process outlives its use (the zygote reaps its own)."""
        self.close()
        try:
            os.kill(self.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        if self.zygote:
            return
        try:
            os.waitpid(self.pid, 0)
        except ChildProcessError:
            pass


_ZPID = struct.Struct('>i')
_ZEXIT = struct.Struct('>ii')
_ZFDS = struct.Struct('=ii')  # SCM_RIGHTS data: two C ints


class Zygote:
    """The worker's end of its zygote: a SOCK_SEQPACKET socket on which the zygote sends
    ``s<pid>`` with a new spare's job and result pipes (SCM_RIGHTS) and ``x<pid><status>``
    when it has reaped one; the worker sends ``c<pid>`` when it has taken that spare."""

    def __init__(self, pid, sock):
        self.pid = pid
        self.sock = sock

    def recv(self):
        """(kind, pid, status, fds) of the next message; None at EOF (the zygote is gone);
        raises BlockingIOError when none is waiting."""
        msg, anc, _flags, _addr = self.sock.recvmsg(16, socket.CMSG_SPACE(2 * 4))
        fds = array.array('i')
        for level, kind, data in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds.frombytes(data[:len(data) - len(data) % fds.itemsize])
        if not msg:
            for fd in fds:
                os.close(fd)
            return None
        if msg[:1] == b's' and len(fds) == 2:
            return 's', _ZPID.unpack_from(msg, 1)[0], None, list(fds)
        for fd in fds:
            os.close(fd)
        if msg[:1] == b'x':
            pid, status = _ZEXIT.unpack_from(msg, 1)
            return 'x', pid, status, []
        return '?', 0, None, []


def _kill_group(pid):
    """SIGKILL to a job process and its group: the group takes the job's descendants, the pid
    itself covers the instant before the child's setpgid()."""
    for kill, target in ((os.killpg, pid), (os.kill, pid)):
        try:
            kill(target, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def _reap(pid):
    """(pid, wait status) of an exited child (`pid`, or any with -1), (0, 0) if none has
    exited. Before reaping it, SIGKILL to the rest of its group: what a job started and left
    running (fork, Popen) ends with the job, as a program job's group does (with cgroups the
    daemon kills the job's cgroup too). While unreaped, the child holds its pid, so the group
    id cannot belong to anyone else yet."""
    info = os.waitid(os.P_PID if pid > 0 else os.P_ALL, max(pid, 0),
                     os.WEXITED | os.WNOHANG | os.WNOWAIT)
    if info is None:
        return 0, 0
    try:
        os.killpg(info.si_pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass  # not a group leader (a spare before its job), or its group is empty
    return os.waitpid(info.si_pid, 0)


def _describe_exit(wait_status):
    """(signal, exit_code, explanation) for a child that sent no result."""
    if wait_status is None:
        return None, None, 'job process was reaped by someone else'
    if os.WIFSIGNALED(wait_status):
        sig = os.WTERMSIG(wait_status)
        try:
            sig_name = signal.Signals(sig).name
        except ValueError:
            sig_name = 'unknown'
        return sig, None, 'job process was killed by signal %d (%s)' % (sig, sig_name)
    code = os.WEXITSTATUS(wait_status)
    return None, code, 'job process exited with status %d without a result' % code


class Worker:
    """Serves the daemon's control stream and the job children's pipes from
    one select loop, so a slow or huge result never stalls the other jobs or
    a ``kill``."""

    def __init__(self, ctl_in, ctl_out):
        self.ctl_in = ctl_in
        self.ctl_out = ctl_out
        # Job children write small ``done`` messages to ctl_out themselves (module doc).
        self.stream_lock = StreamLock(make_stream_lock())
        self.inbox = FrameBuffer()
        self.jobs = {}  # pid -> RunningJob
        self.config = None
        self.code = None
        self.link = None
        self.job_api = None
        self.logger = Logger('dispynode')
        self.user_globals = None  # set once setup succeeded
        self.setup_args = ()
        self.spares = []  # the next jobs' children, forked ahead (oldest first)
        self.zygote = None  # forks the spares once setup succeeded
        self.spare_fds = None  # in the zygote: the fds its spares close (see _job_child)
        self.in_job = False  # in a job process, once its job may run
        os.register_at_fork(after_in_child=self._after_fork)

        os.set_blocking(ctl_in, False)
        self.selector = selectors.DefaultSelector()
        self.selector.register(ctl_in, selectors.EVENT_READ, self._on_control)
        # SIGCHLD wakes the select loop through this pipe; children are then
        # reaped by pid (never waitpid(-1), which would steal the exit status
        # of processes that user setup code started).
        self.wakeup_r, self.wakeup_w = os.pipe()
        os.set_blocking(self.wakeup_r, False)
        os.set_blocking(self.wakeup_w, False)
        signal.set_wakeup_fd(self.wakeup_w, warn_on_full_buffer=False)
        signal.signal(signal.SIGCHLD, lambda signum, frame: None)
        self.selector.register(self.wakeup_r, selectors.EVENT_READ, self._on_sigchld)

    def run(self):
        while True:
            # Fork the next job's child when nothing else is waiting: the fork then costs no
            # job any latency.
            want_spare = (self.user_globals is not None and not self.spares
                          and self.zygote is None)
            events = self.selector.select(0 if want_spare else None)
            if not events and want_spare:
                self._add_spare(self._fork_spare())
                continue
            for key, _ in events:
                key.data()

    # ---- daemon stream

    def send(self, header, blob=b''):
        try:
            # Only the longer messages take the stream lock (write_message).
            write_message(self.ctl_out, header, blob, lock=self.stream_lock)
        except OSError:  # the daemon is gone
            self.abort()

    def _on_control(self):
        try:
            data = os.read(self.ctl_in, READ_SIZE)
        except BlockingIOError:
            return
        if not data:
            self.abort()
        self.inbox.feed(data)
        while True:
            msg = self.inbox.pop()
            if msg is None:
                return
            header, blob = msg
            handler = getattr(self, '_op_' + str(header.get('op')), None)
            if handler is None:
                self.logger.warning('worker: ignoring unknown op %r', header.get('op'))
            else:
                handler(header, blob)

    # ---- ops

    def _op_init(self, header, blob):
        self._stop_zygote()
        self._discard_spares()
        try:
            os.chdir(header['dest_path'])
            self.code = compile(header['code'] or '', '<string>', 'exec')
        except (SyntaxError, ValueError, OSError) as exc:
            self.send({'ev': 'init', 'ok': False,
                       'error': ''.join(traceback.format_exception_only(type(exc), exc))})
            return
        # Like the reference's setup process: imports see the computation dir.
        sys.path[:] = ['.'] + [p for p in sys.path if p not in ('', '.')]
        self.config = header
        self.link = ClientLink(header)
        self.job_api = make_job_api(self.link, header.get('msg_timeout'))
        self.send({'ev': 'init', 'ok': True})

    def _op_setup(self, header, blob):
        self._stop_zygote()  # forked from the globals this setup replaces
        self._discard_spares()
        error = self._setup(blob)
        if error is None:
            self._start_zygote()
            self.send({'ev': 'setup', 'ok': True})
        else:
            self.send({'ev': 'setup', 'ok': False, 'error': error})

    def _setup(self, blob):
        """Exec the code in a fresh __main__, unpickle SETUP, run ``setup``.
        Returns None on success, else the error text for the client."""
        self.user_globals = None
        if self.config is None:
            return 'invalid computation'
        config = self.config
        # A fresh __main__ keeps the worker's names out of user globals and
        # lets pickles of the client's __main__ classes resolve to user code.
        module = types.ModuleType('__main__')
        user_globals = module.__dict__
        provisional_result, send_file = self.job_api
        user_globals.update(
            dispy_node_name=config['node_name'], dispy_node_ip_addr=config['node_ip_addr'],
            dispy_job_path=config['dest_path'], dispy_provisional_result=provisional_result,
            dispy_send_file=send_file, dispynode_logger=self.logger,
            # Reference jobs see everything dispynode imported; sloppy code relies on these.
            os=os, sys=sys, time=time, socket=socket, pickle=pickle)
        sys.modules['__main__'] = module
        try:
            os.chdir(config['dest_path'])
            exec(self.code, user_globals)
        except BaseException as exc:
            return 'loading "depends" failed with ' + format_user_exception(exc, user_globals)
        try:
            setup_args = pickle.loads(blob)['setup_args']
        except Exception:
            return 'invalid computation'
        if not isinstance(setup_args, tuple):
            return 'invalid computation'
        if config.get('setup'):
            try:
                status = lookup(user_globals, config['setup'])(*setup_args)
            except BaseException as exc:
                return '"setup" failed with ' + format_user_exception(exc, user_globals)
            # 0, 1 and 2 only differ in how the reference ships globals to
            # jobs; here jobs always fork from this process.
            if status not in (0, 1, 2):
                return '"setup" failed with %s' % (status,)
        try:  # setup may have moved the worker: every job process is forked from here
            os.chdir(config['dest_path'])
        except OSError as exc:
            return 'computation directory is gone: %s' % (exc,)
        self.user_globals = user_globals
        self.setup_args = setup_args
        return None

    def _send_not_started(self, job_id, explanation):
        """``done`` for a job that never got a process (no ``started``)."""
        self.send({'ev': 'done', 'id': job_id, 'status': TERMINATED, 'stdout': None,
                   'stderr': None, 'exception': explanation}, pickle.dumps(None, RESULT_PROTOCOL))

    def _op_job(self, header, blob):
        if self.user_globals is None:
            self._send_not_started(header['id'], 'computation is not set up')
            return
        spare = next((sp for sp in self.spares if sp.placed), None)
        if spare is not None:
            self.spares.remove(spare)
        elif self.spares:
            spare = self.spares.pop(0)
        if spare is None and self.zygote is not None:
            spare = self._zygote_spare(timeout=10)
        for attempt in range(2):
            if spare is None:
                try:
                    spare = self._fork_spare()
                except OSError as exc:
                    self._send_not_started(header['id'], 'could not start job process: %s' % exc)
                    return
            # With ``hold``, a child the daemon has not placed in a cgroup of its own waits
            # before any user code until the daemon has moved it into the job's cgroup (which
            # the sandboxed job itself may not write) and says ``release``: the job pipe stays
            # open as its gate. A placed spare runs at once.
            held = header['hold'] = bool(header.get('hold')) and not spare.placed
            # Before the job reaches the child, which may send its ``done`` straight away (a
            # retry with a fresh spare sends the new pid).
            self.send({'ev': 'started', 'id': header['id'], 'pid': spare.pid, 'held': held})
            try:
                # marshal, not JSON: both ends are this file in this interpreter, and marshal
                # is C alone where json runs Python (and touches, so copies, pages) in the child.
                write_message(spare.job_w, header, blob, marshal.dumps)
                break
            except OSError:  # the spare died meanwhile (killed from outside): take a fresh one
                spare.discard()
                spare = None
        else:
            self._send_not_started(header['id'], 'could not start job process: it died')
            return
        gate = spare.job_w if held else None
        if gate is None:
            os.close(spare.job_w)
        os.set_blocking(spare.result_fd, False)
        job = RunningJob(header['id'], spare.pid, spare.result_fd, gate)
        job.zygote = spare.zygote
        self.jobs[spare.pid] = job
        if spare.zygote and self.zygote is not None:
            try:
                self.zygote.sock.send(b'c' + _ZPID.pack(spare.pid))  # taken: fork the next one
            except OSError:
                self._zygote_gone()
        self.selector.register(spare.result_fd, selectors.EVENT_READ,
                               lambda: self._on_job_output(job))

    def _fork_spare(self):
        """Fork a job child that prepares itself, then waits for its job message."""
        for stream in (sys.stdout, sys.stderr):  # don't fork unflushed output
            stream.flush()
        job_r, job_w = os.pipe()
        read_fd, write_fd = os.pipe()
        try:
            pid = os.fork()
        except OSError:
            for fd in (job_r, job_w, read_fd, write_fd):
                os.close(fd)
            raise
        if pid == 0:
            os.close(read_fd)
            os.close(job_w)
            self._job_child(job_r, write_fd)  # never returns
        os.close(write_fd)
        os.close(job_r)
        return Spare(pid, job_w, read_fd)

    def _add_spare(self, spare):
        """A new spare is ready. With cgroups (``place_spares``) the daemon is told, so that
        it moves the spare into a job cgroup of its own now: that move waits for an RCU grace
        period (several ms) when no other move happened just before, and a job given a placed
        spare does not wait for it."""
        self.spares.append(spare)
        if self.config and self.config.get('place_spares'):
            self.send({'ev': 'spare', 'pid': spare.pid})

    def _op_placed(self, header, blob):
        for spare in self.spares:
            if spare.pid == header.get('pid'):
                spare.placed = True

    def _discard_spares(self, zygote_only=False):
        keep = []
        for spare in self.spares:
            if zygote_only and not spare.zygote:
                keep.append(spare)
            else:
                spare.discard()
        self.spares = keep

    # ---- the zygote

    def _start_zygote(self):
        """Fork the zygote (best effort: without it the worker forks spares itself)."""
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        try:
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        except OSError:
            return
        try:
            pid = os.fork()
        except OSError:
            ours.close()
            theirs.close()
            return
        if pid == 0:
            ours.close()
            self._zygote_main(theirs)  # never returns
        theirs.close()
        ours.setblocking(False)
        self.zygote = Zygote(pid, ours)
        self.selector.register(ours.fileno(), selectors.EVENT_READ, self._on_zygote)

    def _stop_zygote(self, report=True):
        """Kill the jobs the zygote forked and collect their exits (an orphan of a dead
        zygote has none), then close its socket: EOF makes it reap what is left and exit."""
        self._discard_spares(zygote_only=True)
        running = [job for job in self.jobs.values() if job.zygote]
        for job in running:
            self._kill(job)
        exits = {}
        self._zygote_wait(lambda: {job.pid for job in running} <= set(exits), 10, exits)
        for job in running:
            if job.pid in self.jobs:
                self._finish(job, exits.get(job.pid), report)
        if self.zygote is None:
            return
        zygote, self.zygote = self.zygote, None
        self.selector.unregister(zygote.sock.fileno())
        zygote.sock.close()
        try:
            os.waitpid(zygote.pid, 0)
        except ChildProcessError:
            pass

    def _zygote_gone(self, reaped=False):
        """The zygote died (killed from outside): its jobs are orphans whose exit statuses
        will not come; they end with their result pipes (_close_output)."""
        if self.zygote is None:
            return
        zygote, self.zygote = self.zygote, None
        self.selector.unregister(zygote.sock.fileno())
        zygote.sock.close()
        if not reaped:  # whatever is left of it (not reaped yet: its pid is still its own)
            try:
                os.kill(zygote.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            try:
                os.waitpid(zygote.pid, 0)
            except ChildProcessError:
                pass
        self._discard_spares(zygote_only=True)
        for job in list(self.jobs.values()):
            if job.zygote and job.fd is None:
                self._finish(job, None)

    def _zygote_message(self, msg, exits=None):
        """Handle one message; with ``exits``, exit statuses are collected there instead."""
        kind, pid, status, fds = msg
        if kind == 's':
            spare = Spare(pid, fds[0], fds[1], zygote=True)
            if len(self.spares) < SPARES:
                self._add_spare(spare)
            else:
                spare.discard()
        elif kind == 'x':
            if exits is not None:
                exits[pid] = status
            elif pid in self.jobs and self.jobs[pid].zygote:
                self._finish(self.jobs[pid], status)
            else:
                for spare in [sp for sp in self.spares if sp.pid == pid]:
                    spare.close()
                    self.spares.remove(spare)

    def _zygote_recv(self):
        """The zygote's next message; None when none is waiting or the zygote is gone (then
        ``self.zygote`` is None)."""
        try:
            msg = self.zygote.recv()
        except BlockingIOError:
            return None
        except OSError:
            msg = None
        if msg is None:
            self._zygote_gone()
        return msg

    def _on_zygote(self):
        while self.zygote is not None:
            msg = self._zygote_recv()
            if msg is None:
                return
            self._zygote_message(msg)

    def _zygote_wait(self, until, timeout, exits=None):
        """Handle zygote messages until ``until()`` or ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while self.zygote is not None and not until():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            ready, _, _ = select.select([self.zygote.sock], [], [], left)
            if not ready:
                return
            msg = self._zygote_recv()
            if msg is not None:
                self._zygote_message(msg, exits)

    def _zygote_spare(self, timeout):
        """The zygote's next spare (it forks one as soon as one was taken)."""
        self._zygote_wait(lambda: bool(self.spares), timeout)
        return self.spares.pop(0) if self.spares else None

    def _zygote_main(self, sock):
        """Body of the zygote: forks the spares for the worker, reaps them, and
        reports their exit statuses. Never returns."""
        exit_code = 1
        try:
            self._close_worker_fds()
            self.jobs = {}
            self.spares = []
            self.zygote = None
            # ctl_out stays open for the spares (they send small outcomes themselves); the
            # zygote never writes to it.
            signal.set_wakeup_fd(-1)
            wake_r, wake_w = os.pipe()
            os.set_blocking(wake_r, False)
            os.set_blocking(wake_w, False)
            signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
            self.wakeup_w = wake_w
            # poll and plain fd numbers, not a selector: less Python touched per fork here
            # and in every spare (each page written after a fork is copied).
            self.selector = None
            poller = select.poll()
            poller.register(sock.fileno(), select.POLLIN)
            poller.register(wake_r, select.POLLIN)
            self.spare_fds = [sock.fileno(), wake_r, wake_w]  # the spares close these
            children = set()
            try:
                self._zygote_loop(sock, poller, wake_r, children)
            except OSError:  # the worker is gone (its socket closed, a send failed)
                pass
            # The worker is gone: so are its jobs.
            for pid in children:
                _kill_group(pid)
            for pid in children:
                try:
                    os.waitpid(pid, 0)
                except ChildProcessError:
                    pass
            exit_code = 0
        except BaseException:
            traceback.print_exc(file=sys.__stderr__)
        finally:
            os._exit(exit_code)

    def _zygote_loop(self, sock, poller, wake_r, children):
        """Until the worker closes its end: keep SPARES spares ready, report reaped children.

        Every page the zygote writes after a fork is copied while the spare lives (even a
        reference count is a write), so this loop touches as few objects as it can: local
        names, no objects made per spare, the fork inline."""
        ready = set()  # spares sent and not taken
        pipe, fork, close, read, reap = os.pipe, os.fork, os.close, os.read, _reap
        sendmsg, send, recv, poll = sock.sendmsg, sock.send, sock.recv, poller.poll
        pack_pid, pack_fds, pack_exit = _ZPID.pack, _ZFDS.pack, _ZEXIT.pack
        add_child, add_ready, discard_ready = children.add, ready.add, ready.discard
        job_child = self._job_child
        while True:
            while len(ready) < SPARES:
                job_r, job_w = pipe()
                read_fd, write_fd = pipe()
                try:
                    pid = fork()
                except OSError:
                    for fd in (job_r, job_w, read_fd, write_fd):
                        close(fd)
                    raise
                if pid == 0:
                    close(read_fd)
                    close(job_w)
                    job_child(job_r, write_fd)  # never returns
                close(write_fd)
                close(job_r)
                try:
                    sendmsg([b's' + pack_pid(pid)],
                           [(socket.SOL_SOCKET, socket.SCM_RIGHTS, pack_fds(job_w, read_fd))])
                finally:
                    close(job_w)
                    close(read_fd)
                add_child(pid)
                add_ready(pid)
            for fd, _ in poll():
                if fd == wake_r:
                    try:
                        while read(wake_r, 4096):
                            pass
                    except BlockingIOError:
                        pass
                    # Its spares are the zygote's only children (it was forked after setup,
                    # whose processes are the worker's): any pid is one of them.
                    while children:
                        try:
                            pid, status = reap(-1)
                        except ChildProcessError:
                            break
                        if not pid:
                            break
                        children.discard(pid)
                        discard_ready(pid)
                        send(b'x' + pack_exit(pid, status))
                    continue
                data = recv(16)
                if not data:
                    return
                if data[:1] == b'c' and len(data) == 1 + _ZPID.size:
                    discard_ready(_ZPID.unpack_from(data, 1)[0])

    def _op_release(self, header, blob):
        for job in self.jobs.values():
            if job.id == header.get('id') and job.gate is not None:
                os.write(job.gate, b'g')
                os.close(job.gate)
                job.gate = None

    def _op_kill(self, header, blob):
        for job in list(self.jobs.values()):  # _kill may finish (forget) an orphan
            if job.id == header.get('id'):
                self._kill(job)

    def _op_close(self, header, blob):
        self._kill_all(report=True)
        error = self._cleanup()
        self.send({'ev': 'closed', 'ok': error is None, 'error': error})
        self._exit(0)

    def _cleanup(self):
        """Run the computation's cleanup function, if it names one and setup
        succeeded (the reference runs it in the setup process only)."""
        name = self.config.get('cleanup') if self.config else None
        if self.user_globals is None or not isinstance(name, str):
            return None
        try:
            os.chdir(self.config['dest_path'])
            lookup(self.user_globals, name)(*self.setup_args)
        except BaseException as exc:
            return '"cleanup" failed with ' + format_user_exception(exc, self.user_globals)
        return None

    # ---- job children

    def _job_child(self, job_fd, result_fd):
        """Body of the forked job process.  Never returns: whatever happens,
        the process ends here, so it cannot fall back into the worker loop."""
        exit_code = 1
        try:
            # Own process group: kill reaches the job's descendants.  Not a session of its own:
            # the worker's (the jail helper's setsid) has no controlling terminal, so neither has
            # the job, and a session per job made and freed a scheduler autogroup per job.
            os.setpgid(0, 0)
            # _signal, not signal: signal.signal() converts to and from enums, which touches
            # (copies) dozens of pages in every freshly forked job process.
            _signal.set_wakeup_fd(-1)
            _signal.signal(_SIGCHLD, _signal.SIG_DFL)
            if self.spare_fds is not None:
                for fd in self.spare_fds:
                    os.close(fd)
            else:
                self._close_worker_fds()
            _signal.signal(_SIGINT, _signal.default_int_handler)
            _signal.signal(_SIGTERM, _signal.SIG_DFL)
            self.in_job = True  # what this process forks drops the stream (_after_fork)
            ours = _fd_ids(result_fd, self.ctl_out, self.stream_lock.fd)
            self._warm_up()
            job = self._await_job(job_fd)
            if job is None:  # discarded before it got a job
                exit_code = 0
                return
            reply, result = self._run_job(*job)
            # Job code may have closed our fds and opened files that got their numbers: write
            # to them only if they are still our pipes (else exit without an outcome, which the
            # worker reports; never a result into a file of the job's).
            now = _fd_ids(result_fd, self.ctl_out, self.stream_lock.fd)
            if now[0] != ours[0]:
                raise RuntimeError('the job replaced its result pipe (fd %d)' % result_fd)
            if now[1:] != ours[1:]:
                self.ctl_out = None  # not ours any more: the outcome goes through the worker
            if not self._send_done(job[0]['id'], reply, result_fd, result):
                write_message(result_fd, reply, result)
            exit_code = 0
        except BaseException:
            traceback.print_exc(file=sys.__stderr__)
        finally:
            os._exit(exit_code)

    def _warm_up(self):
        """Walk the job's own path once with dummy data while waiting for the job: the
        copy-on-write faults of the objects it touches are taken here, not on the job's way."""
        try:
            lookup(self.user_globals, self.config['name'])
            inbox = FrameBuffer(marshal.loads)
            inbox.feed(_WARM_UP_JOB)
            inbox.pop()
            out = io.StringIO()
            out.write('')
            value = pickle.loads(_WARM_UP_ARGS)
            frame_head({'ev': 'done', 'id': 0, 'status': FINISHED, 'stdout': out.getvalue(),
                        'stderr': '', 'exception': None},
                       len(pickle.dumps(value, RESULT_PROTOCOL)))
        except Exception:
            pass

    def _after_fork(self):
        """What a job forks without exec (multiprocessing) must not hold the daemon's stream:
        it would hide the worker's end from the daemon (exec closes it anyway). Registered once
        in the worker, not per job process: registering costs a job process a dozen page
        copies."""
        if self.in_job:
            self._drop_stream()

    def _drop_stream(self):
        for fd in (self.ctl_out, self.stream_lock.fd):
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self.ctl_out = self.stream_lock.fd = None

    def _send_done(self, job_id, reply, result_fd, result):
        """Send this job's ``done`` to the daemon directly if it fits in one atomic pipe
        write: a write of at most PIPE_BUF bytes is never split or interleaved, not even
        when the job is killed meanwhile, so the shared stream stays whole.  Then tell the
        worker, under the same lock: a worker about to kill this job takes the lock first,
        so it sees either neither or both.  A kill from outside between the two (the
        daemon kills a job's cgroup as soon as its done arrives) makes the worker report the
        job once more; the daemon keeps a job's first done."""
        if self.stream_lock.fd is None or self.ctl_out is None:
            return False
        frame = frame_head(done_header(job_id, reply), len(result)) + result
        if len(frame) > select.PIPE_BUF:
            return False
        with self.stream_lock:
            os.write(self.ctl_out, frame)
            write_all(result_fd, _SENT)
        return True

    @staticmethod
    def _await_job(job_fd):
        """(header, blob) of this child's job, read from its job pipe; with ``hold``, only
        once the gate byte (``release``) or EOF has followed it.  None on EOF before a job."""
        inbox = FrameBuffer(marshal.loads)
        msg = None
        while msg is None:
            data = os.read(job_fd, READ_SIZE)
            if not data:
                return None
            inbox.feed(data)
            msg = inbox.pop()
        # EOF instead of the gate byte: the worker is gone, and the job ends at once in
        # _run_job's pipe write or soon after; running it unplaced would escape the cgroup.
        if msg[0].get('hold') and not inbox.pending() and not os.read(job_fd, 1):
            return None
        os.close(job_fd)
        return msg

    def _close_worker_fds(self):
        for job in self.jobs.values():  # other jobs' gates belong to the worker alone
            if job.gate is not None:
                os.close(job.gate)
        for key in list(self.selector.get_map().values()):
            os.close(key.fd)
        self.selector.close()
        os.close(self.wakeup_w)

    def _run_job(self, header, blob):
        """Run the user function; returns the reply header and result pickle."""
        cgroup_procs = header.get('cgroup_procs')
        if cgroup_procs:
            try:  # join the job's cgroup before any user code runs
                with open(cgroup_procs, 'w') as fd:
                    fd.write('0')
            except OSError as exc:
                return ({'status': TERMINATED, 'stdout': None, 'stderr': None,
                         'exception': 'could not join cgroup %s: %s' % (cgroup_procs, exc)},
                        pickle.dumps(None, RESULT_PROTOCOL))
        self.link.begin_job(header)
        user_globals = self.user_globals
        stdout, stderr = sys.stdout, sys.stderr = io.StringIO(), io.StringIO()
        try:
            if header.get('code'):
                exec(compile(header['code'], '<string>', 'exec'), user_globals)
            args_len = header['args_len']
            args = pickle.loads(blob[:args_len])
            kwargs = pickle.loads(blob[args_len:])
            value = lookup(user_globals, self.config['name'])(*args, **kwargs)
            status, result, exception = FINISHED, pickle.dumps(value, RESULT_PROTOCOL), None
            size, limit = len(result), self.config.get('max_result')
            if limit and size > limit:  # the daemon would not read a frame this big
                status, result = TERMINATED, pickle.dumps(None, RESULT_PROTOCOL)
                exception = ('dispynode: the result pickles to %d bytes, more than this node '
                             'returns (%d)' % (size, limit))
        except BaseException as exc:  # includes KeyboardInterrupt from a cancel
            status, result = TERMINATED, pickle.dumps(None, RESULT_PROTOCOL)
            exception = format_user_exception(exc, user_globals)
        return ({'status': status, 'stdout': stdout.getvalue(), 'stderr': stderr.getvalue(),
                 'exception': exception}, result)

    def _on_job_output(self, job):
        if job.fd is None:  # drained and closed earlier in the same select batch
            return
        try:
            data = os.read(job.fd, READ_SIZE)
        except BlockingIOError:
            return
        if data:
            job.output.feed(data)
            self._report_outcome(job)
        else:
            self._close_output(job)

    def _report_outcome(self, job):
        """Send ``done`` as soon as the child's outcome message is complete: its exit and
        reaping then happen while the daemon already replies to the client."""
        if job.reported:
            return
        msg = job.output.pop()
        if msg is not None:
            reply, result = msg
            job.reported = True
            if reply.get('sent'):  # the child sent its done to the daemon itself
                return
            self.send(done_header(job.id, reply), result)

    def _close_output(self, job):
        self.selector.unregister(job.fd)
        os.close(job.fd)
        job.fd = None
        if job.zygote and self.zygote is None and job.pid in self.jobs:
            self._finish(job, None)  # an orphan of a dead zygote: no exit status will come

    def _drain_output(self, job):
        """Read what an exited child left in its pipe.  Stops at EOF, or when
        the pipe is empty but still held open by a descendant of the job."""
        while job.fd is not None:
            try:
                data = os.read(job.fd, READ_SIZE)
            except BlockingIOError:
                data = b''
            if data:
                job.output.feed(data)
            else:
                self._close_output(job)

    def _on_sigchld(self):
        try:
            while os.read(self.wakeup_r, 4096):
                pass
        except BlockingIOError:
            pass
        for job in list(self.jobs.values()):
            if job.zygote:  # the zygote reports those
                continue
            try:
                pid, wait_status = _reap(job.pid)
            except ChildProcessError:
                pid, wait_status = job.pid, None
            if pid:
                self._finish(job, wait_status)
        if self.zygote is not None:
            try:
                gone = os.waitpid(self.zygote.pid, os.WNOHANG)[0]
            except ChildProcessError:
                gone = True
            if gone:
                self._zygote_gone(reaped=True)
        for spare in [sp for sp in self.spares if not sp.zygote]:  # killed before its job
            try:
                gone = os.waitpid(spare.pid, os.WNOHANG)[0]
            except ChildProcessError:
                gone = True
            if gone:
                spare.close()
                self.spares.remove(spare)

    def _finish(self, job, wait_status, report=True):
        """Forget a reaped child and send its ``done``."""
        del self.jobs[job.pid]
        if job.gate is not None:
            os.close(job.gate)
            job.gate = None
        self._drain_output(job)
        if not report or job.reported:
            return
        self._report_outcome(job)
        if job.reported:
            return
        sig, exit_code, explanation = _describe_exit(wait_status)
        self.send({'ev': 'done', 'id': job.id, 'status': TERMINATED, 'stdout': None,
                   'stderr': None, 'exception': explanation, 'signal': sig,
                   'exit_code': exit_code}, pickle.dumps(None, RESULT_PROTOCOL))

    def _kill(self, job):
        # Under the stream lock, what the child already said comes first: a job that sent
        # its done to the daemon itself is then known as reported and gets no second
        # (Terminated) done (_send_done writes both under the lock).
        with self.stream_lock:
            self._on_job_output(job)
            # The job is still in self.jobs, so not reaped (its exit not reported): neither
            # id can have been reused.
            _kill_group(job.pid)

    def _kill_all(self, report):
        self._discard_spares()
        own = [job for job in self.jobs.values() if not job.zygote]
        for job in own:
            self._kill(job)
        for job in own:
            try:
                wait_status = os.waitpid(job.pid, 0)[1]
            except ChildProcessError:
                wait_status = None
            self._finish(job, wait_status, report)
        self._stop_zygote(report)

    def abort(self, exit_code=0):
        """The daemon is gone (or the worker broke): kill and reap the jobs,
        exit without cleanup."""
        self._kill_all(report=False)
        self._exit(exit_code)

    @staticmethod
    def _exit(code):
        # os._exit: threads or atexit hooks left by user code must not keep
        # the worker alive once the daemon is done with it.
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
        os._exit(code)


def take_control_fds():
    """Move the daemon's streams to private close-on-exec fds and point fd 0
    at /dev/null and fd 1 at stderr, so that fd-level output of user code and
    of its child processes lands in the daemon's log instead of corrupting
    the control stream."""
    ctl_in, ctl_out = os.dup(0), os.dup(1)  # os.dup() fds are non-inheritable
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    os.dup2(2, 1)
    return ctl_in, ctl_out


def main():
    # Python 3.13+ caches the `-c` source as "<string>", the file name of user
    # code too; tracebacks would then quote worker lines as user source.
    linecache.cache.pop('<string>', None)
    # The daemon ends the worker by closing its stdin (or `close`); a Ctrl-C
    # meant for the daemon must not kill the worker before it can kill jobs.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    worker = Worker(*take_control_fds())
    try:
        worker.run()
    except BaseException:
        traceback.print_exc()
        worker.abort(1)


if __name__ == '__main__':
    main()
