"""Helpers shared by the life_*.py client scripts (tests/lifecycle.rs).

* ResultProxy: the job-result port the node pushes JOB_REPLY to, made
  unreachable and reachable again at will.  The real client listens on its
  port (P-1) for everything (PONG, PULSE, TERMINATED, JOB_REPLY); the node
  pushes results to `compute.job_result_port`, which the real client sets to
  that same port.  `use_result_port(proxy.port)` patches the client so that
  its computations announce the proxy's port instead; the proxy forwards to
  the client's real port when 'forward', accepts and drops every connection
  (counting them: the node's delivery attempts) when 'reject', accepts and
  then neither reads nor writes (a stalled client; it records how long the
  node took to give up and close) when 'stall', and has no listener at all
  (connection refused) when 'closed'.  Everything else
  (discovery, PULSE, TERMINATED, the client's own requests to the node)
  keeps working: only the results cannot reach the client.
* raw requests to the node with the client's own auth (like the protocol
  study's sessF.py), for JOBS / PENDING_JOBS / RETRIEVE_JOB /
  RESEND_JOB_RESULTS.
* stdin lines from the Rust harness (it restarts the node, then says so).
* the process table (/proc).
"""
import os
import select
import socket
import struct
import sys
import threading
import time

import common
import dispy
from pycos import AsyncSocket, serialize, deserialize

HOST = '127.0.0.1'


class ResultProxy(object):
    def __init__(self, target_port, mode='forward'):
        self.target = (HOST, target_port)
        self.lock = threading.Condition()
        self.want = mode
        self.applied = None
        self.rejected = 0
        self.forwarded = 0
        self.stalled = []   # seconds until the node closed, None while open
        self.sock = self._listen(0)
        self.port = self.sock.getsockname()[1]
        self.applied = 'open'
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        self.set_mode(mode)

    def _listen(self, port):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # small receive buffer (inherited by accepted sockets): a stalled
        # peer fills up quickly, so the node's writes block
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.bind((HOST, port))
        s.listen(64)
        return s

    def set_mode(self, mode):
        """'forward', 'reject' or 'closed'; returns once in effect."""
        assert mode in ('forward', 'reject', 'stall', 'closed')
        with self.lock:
            self.want = mode
            self.lock.notify_all()
            deadline = time.time() + 10
            while self.applied != (mode if mode == 'closed' else 'open') or \
                    (mode != 'closed' and self.sock is None):
                left = deadline - time.time()
                if left <= 0:
                    raise RuntimeError('proxy could not switch to %s' % mode)
                self.lock.wait(left)

    def _run(self):
        while True:
            with self.lock:
                want = self.want
                if want == 'closed' and self.sock is not None:
                    self.sock.close()
                    self.sock = None
                    self.applied = 'closed'
                    self.lock.notify_all()
                elif want != 'closed' and self.sock is None:
                    for _ in range(50):
                        try:
                            self.sock = self._listen(self.port)
                            break
                        except OSError:
                            time.sleep(0.1)
                    self.applied = 'open'
                    self.lock.notify_all()
                sock = self.sock
            if sock is None:
                time.sleep(0.05)
                continue
            try:
                r, _, _ = select.select([sock], [], [], 0.05)
            except (OSError, ValueError):
                continue
            if not r:
                continue
            try:
                conn, _ = sock.accept()
            except OSError:
                continue
            with self.lock:
                mode = self.want
                if mode == 'forward':
                    self.forwarded += 1
                elif mode == 'stall':
                    self.stalled.append(None)
                    index = len(self.stalled) - 1
                else:
                    self.rejected += 1
                self.lock.notify_all()
            if mode == 'forward':
                threading.Thread(target=self._forward, args=(conn,), daemon=True).start()
            elif mode == 'stall':
                threading.Thread(target=self._stall, args=(conn, index), daemon=True).start()
            else:
                try:
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack('ii', 1, 0))
                except OSError:
                    pass
                conn.close()

    def _stall(self, conn, index):
        """Reads nothing and writes nothing for 6 s, noting when the node
        hangs up.  A node that gave up while its reply was still queued in
        its send buffer cannot get its FIN through a full window: then drain
        the socket at 6 s; an end of stream within a second means the node
        had already given up."""
        t0 = time.time()
        p = select.poll()
        p.register(conn, select.POLLRDHUP | select.POLLHUP | select.POLLERR)
        closed_at = None
        while time.time() - t0 < 6:
            if p.poll(100):
                closed_at = time.time() - t0
                break
        if closed_at is None:
            conn.settimeout(0.2)
            drain_start = time.time()
            while time.time() - t0 < 60:
                try:
                    data = conn.recv(1 << 20)
                except socket.timeout:
                    continue
                except OSError:
                    data = b''
                if not data:
                    # closed by the node: before the drain if it ends at once
                    closed_at = time.time() - t0
                    if time.time() - drain_start <= 1:
                        closed_at = min(closed_at, 6.0)
                    break
        with self.lock:
            self.stalled[index] = closed_at
            self.lock.notify_all()
        conn.close()

    def wait_stalled(self, n, timeout):
        """Bounded wait until n stalled connections were seen and closed by
        the node; returns the list of their durations (None: still open)."""
        deadline = time.time() + common.budget(timeout)
        with self.lock:
            while len(self.stalled) < n or None in self.stalled[:n]:
                left = deadline - time.time()
                if left <= 0:
                    break
                self.lock.wait(left)
            return list(self.stalled)

    def _forward(self, conn):
        try:
            up = socket.create_connection(self.target, timeout=10)
        except OSError:
            conn.close()
            return

        def pump(a, b):
            try:
                while True:
                    data = a.recv(65536)
                    if not data:
                        break
                    b.sendall(data)
            except OSError:
                pass
            finally:
                try:
                    b.shutdown(socket.SHUT_WR)
                except OSError:
                    pass

        t = threading.Thread(target=pump, args=(up, conn), daemon=True)
        t.start()
        pump(conn, up)
        t.join(30)
        conn.close()
        up.close()

    def wait_rejected(self, n, timeout):
        """Bounded wait until at least n connections were rejected."""
        deadline = time.time() + common.budget(timeout)
        with self.lock:
            while self.rejected < n:
                left = deadline - time.time()
                if left <= 0:
                    return False
                self.lock.wait(left)
            return True


def use_result_port(port):
    """Makes every computation created from now on announce `port` as its
    job_result_port (where the node pushes JOB_REPLY)."""
    orig = dispy._Cluster.add_cluster

    def add_cluster(self, cluster, task=None):
        if not getattr(cluster, 'shared', False):
            cluster._compute.job_result_port = port
        result = yield orig(self, cluster, task=task)
        return result

    dispy._Cluster.add_cluster = add_cluster


def cluster_at(computation, node_port, client_port, **kwargs):
    """A JobCluster for the node on node_port, the client listening on
    client_port (any port: the node need not know it in advance)."""
    return dispy.JobCluster(computation, nodes=[(HOST, node_port)], host=HOST,
                            dispy_port=client_port, loglevel=common.loglevel(), **kwargs)


def node_of(c):
    """The client's _Node record of the node (auth, port)."""
    return c._cluster._nodes.get(HOST)


def raw_request(c, tag, req, keep=False, timeout=10):
    """One request to the node with the client's auth: tag + pickle(req).
    Returns the deserialized reply (or the raw bytes, or None when nothing
    came); with keep=True returns (reply, socket) and leaves the socket open."""
    node = node_of(c)
    sock = AsyncSocket(socket.socket(socket.AF_INET, socket.SOCK_STREAM), blocking=True,
                       keyfile=c._cluster.keyfile, certfile=c._cluster.certfile)
    sock.settimeout(timeout)
    reply = None
    try:
        sock.connect((HOST, node.port))
        sock.sendall(node.auth)
        sock.send_msg(tag + serialize(req))
        msg = sock.recv_msg()
        if msg:
            try:
                reply = deserialize(msg)
            except Exception:
                reply = msg
    except Exception as exc:
        reply = ('exception', repr(exc))
    if keep:
        return reply, sock
    sock.close()
    return reply


def raw_to(port, node_auth, msg, ack=False, timeout=10):
    """One request (`msg` = tag + pickle) with the auth prefix `node_auth` (bytes), without a
    live client: the deserialized reply (the raw bytes if not a pickle, None if none came,
    ('exception', ...) on an error); with `ack`, a _JobReply is acknowledged."""
    sock = AsyncSocket(socket.socket(socket.AF_INET, socket.SOCK_STREAM), blocking=True)
    sock.settimeout(timeout)
    try:
        sock.connect((HOST, port))
        sock.sendall(node_auth)
        sock.send_msg(msg)
        reply = sock.recv_msg()
        try:
            reply = deserialize(reply) if reply else None
        except Exception:
            pass
        if ack and isinstance(reply, dispy._JobReply):
            sock.send_msg(b'ACK')
        return reply
    except Exception as exc:
        return ('exception', repr(exc))
    finally:
        sock.close()


def compute_req(c, **extra):
    req = {'compute_id': c._compute.id, 'auth': c._compute.auth}
    req.update(extra)
    return req


def read_stdin_line(timeout):
    """A line from the harness (stripped), or None after `timeout` s."""
    deadline = time.time() + common.budget(timeout)
    buf = b''
    fd = sys.stdin.fileno()
    while time.time() < deadline:
        r, _, _ = select.select([fd], [], [], max(deadline - time.time(), 0.01))
        if not r:
            continue
        data = os.read(fd, 1)
        if not data:
            return None
        if data == b'\n':
            return buf.decode().strip()
        buf += data
    return None


def proc_state(pid):
    try:
        with open('/proc/%d/stat' % pid) as fd:
            return fd.read().rsplit(')', 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def alive(pid):
    """True while the process exists and is not a zombie."""
    if not pid:
        return False
    st = proc_state(pid)
    return st is not None and st not in ('Z', 'X')


def processes():
    """[(pid, ppid, cmdline, cwd)] of live processes."""
    out = []
    for name in os.listdir('/proc'):
        if not name.isdigit():
            continue
        pid = int(name)
        try:
            with open('/proc/%d/stat' % pid) as fd:
                rest = fd.read().rsplit(')', 1)[1].split()
            if rest[0] in ('Z', 'X'):
                continue
            ppid = int(rest[1])
            with open('/proc/%d/cmdline' % pid, 'rb') as fd:
                cmd = fd.read().replace(b'\0', b' ').decode(errors='replace').strip()
        except (OSError, IndexError, ValueError):
            continue
        try:
            cwd = os.readlink('/proc/%d/cwd' % pid)
        except OSError:
            cwd = None
        out.append((pid, ppid, cmd, cwd))
    return out


def with_token(token):
    return [p for p in processes() if token in p[2]]


def descendants(pid):
    table = processes()
    out, frontier = [], [pid]
    while frontier:
        p = frontier.pop()
        for q in table:
            if q[1] == p and q not in out:
                out.append(q)
                frontier.append(q[0])
    return out
