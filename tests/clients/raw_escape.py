"""Raw protocol client (no JobCluster): path escapes must be refused.

It speaks the node protocol directly, building messages with dispy's own
classes (dispy._Compute, dispy._XferFile) pickled like the real client:
  1. listen on P-1; TCP PING (dummy 40-byte prefix) to the node; the node's
     PONG arrives on P-1 and carries its sign;
  2. auth prefix = sha1(secret + node_sign).hexdigest().encode();
  3. COMPUTE with dest_path escaping the node's directory (relative "..",
     absolute, ".." in the middle) must be refused: the reply must not
     unpickle to an int > 0;
  4. with a legitimate computation registered, FILEXFER with xf.dest_path or
     xf.name escaping (also via the Windows separator) must be refused:
     pickle(-1) or the connection closed, never a request for data.
Positive controls (a legitimate COMPUTE and FILEXFER) prove the messages are
well formed.  The harness checks from outside that nothing was written
outside the node's prefix and that no escape_* file exists anywhere.

Escape targets are all inside ESCAPE_DIR (the test's temp dir) as long as
the node's prefix is at least 4 levels below it.

argv: PORT SECRET ESCAPE_DIR
"""
import hashlib
import os
import pickle
import random
import socket
import struct
import threading
import time

import common
import dispy

PORT = common.port()
SECRET = common.arg(2, '')
ESCAPE_DIR = common.arg(3)
HOST = '127.0.0.1'


def frame(data):
    return struct.pack('>L', len(data)) + data


def recv_exact(sock, n):
    buf = b''
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return buf


def recv_frame(sock):
    """A framed message; b'' when the peer closed (like pycos recv_msg)."""
    try:
        head = recv_exact(sock, 4)
        if head is None:
            return b''
        (n,) = struct.unpack('>L', head)
        if n == 0:
            return b''
        data = recv_exact(sock, n)
        return data if data is not None else b''
    except (socket.timeout, ConnectionError, OSError):
        return b''


def auth_code(secret, sign):
    return hashlib.sha1((secret + sign).encode()).hexdigest().encode()


class Listener(object):
    """Accepts every connection on P-1 and keeps the first framed message."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((HOST, PORT - 1))
        self.sock.listen(16)
        self.messages = []
        self.cond = threading.Condition()
        t = threading.Thread(target=self.run, daemon=True)
        t.start()

    def run(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            conn.settimeout(10)
            msg = recv_frame(conn)
            conn.close()
            with self.cond:
                self.messages.append(msg)
                self.cond.notify_all()

    def wait_for(self, prefix, timeout):
        deadline = time.time() + timeout
        with self.cond:
            while True:
                for m in self.messages:
                    if m.startswith(prefix):
                        return m
                left = deadline - time.time()
                if left <= 0:
                    return None
                self.cond.wait(left)


def connect():
    sock = socket.create_connection((HOST, PORT), timeout=15)
    sock.settimeout(15)
    return sock


def request(prefix40, msg):
    sock = connect()
    try:
        sock.sendall(prefix40 + frame(msg))
        return recv_frame(sock)
    finally:
        sock.close()


def unpickle(data):
    try:
        return pickle.loads(data)
    except Exception:
        return data


def make_compute(dest_path):
    c = dispy._Compute(dispy._Compute.func_type, 'compute')
    c.id = random.randint(10 ** 12, 10 ** 13)
    c.code = 'def compute(n):\n    return n\n'
    c.dest_path = dest_path
    c.xfer_files = []
    c.reentrant = False
    c.exclusive = True
    c.setup = None
    c.cleanup = True
    c.setup_args_count = 0
    c.scheduler_ip_addr = HOST
    c.scheduler_port = PORT - 1
    c.node_ip_addr = HOST
    c.auth = hashlib.sha1(os.urandom(20)).hexdigest()
    c.job_result_port = PORT - 1
    c.pulse_interval = None
    c.client_reply_addr = None
    return c


def close_compute(auth, c):
    req = {'compute_id': c.id, 'auth': c.auth, 'node_ip_addr': HOST,
           'terminate_pending': True, 'close': True}
    return request(auth, b'CLOSE:' + pickle.dumps(req, protocol=pickle.HIGHEST_PROTOCOL))


def try_compute(auth, dest_path):
    """Returns (accepted, reply); an accepted computation is closed again."""
    c = make_compute(dest_path)
    reply = request(auth, b'COMPUTE:' + pickle.dumps(c, protocol=pickle.HIGHEST_PROTOCOL))
    value = unpickle(reply)
    accepted = isinstance(value, int) and not isinstance(value, bool) and value > 0
    return accepted, reply, c


def make_xfer(local_path, name, dest_path, compute_id, sep):
    xf = dispy._XferFile.__new__(dispy._XferFile)
    xf.name = name
    xf.dest_path = dest_path
    xf.compute_id = compute_id
    xf.stat_buf = os.stat(local_path)
    xf.sep = sep
    return xf


def try_xfer(auth, xf, local_path):
    """Follows the FILEXFER ack/chunk loop as the client does.  Returns
    ('refused', detail) or ('accepted', detail)."""
    with open(local_path, 'rb') as fd:
        data = fd.read()
    sock = connect()
    try:
        sock.sendall(auth + frame(b'FILEXFER:' + pickle.dumps(xf, protocol=pickle.HIGHEST_PROTOCOL)))
        reply = recv_frame(sock)
        if not reply:
            return 'refused', 'connection closed'
        recvd = unpickle(reply)
        if not isinstance(recvd, int) or recvd < 0:
            return 'refused', 'reply %r' % (recvd,)
        sent = 0
        while sent == recvd and sent < len(data):
            chunk = data[sent:sent + 1024000]
            sock.sendall(chunk)
            sent += len(chunk)
            reply = recv_frame(sock)
            if not reply:
                return 'refused', 'closed after %d bytes' % sent
            recvd = unpickle(reply)
        if recvd == len(data):
            return 'accepted', 'node acknowledged all %d bytes' % len(data)
        return 'refused', 'final ack %r' % (recvd,)
    finally:
        sock.close()


if __name__ == '__main__':
    listener = Listener()
    my_sign = hashlib.sha1(os.urandom(20)).hexdigest()
    ping = {'version': '4.15.2', 'sign': my_sign, 'port': PORT - 1, 'node_ip_addr': HOST,
            'ip_addrs': [HOST]}
    sock = connect()
    sock.sendall(b'x' * 40 + frame(b'PING:' + pickle.dumps(ping, protocol=pickle.HIGHEST_PROTOCOL)))
    sock.close()
    pong = listener.wait_for(b'PONG:', 20)
    common.check('pong', pong is not None, 'no PONG within 20 s; got %r' % listener.messages)
    info = unpickle(pong[len(b'PONG:'):]) if pong else {}
    if not isinstance(info, dict):
        info = {}
    common.check_eq('pong_auth', info.get('auth'), auth_code(SECRET, my_sign))
    node_sign = info.get('sign') or ''
    auth = auth_code(SECRET, node_sign)

    # a wrong auth prefix gets no reply at all
    bad = request(b'y' * 40, b'COMPUTE:' + pickle.dumps(make_compute(None), protocol=pickle.HIGHEST_PROTOCOL))
    common.check_eq('bad_auth_no_reply', bad, b'')

    for name, dest in (('compute_rel_refused', '../../escape_compute_rel'),
                       ('compute_abs_refused', os.path.join(ESCAPE_DIR, 'escape_compute_abs')),
                       ('compute_mid_refused', 'sub/../../../escape_compute_mid'),
                       ('compute_dotdot_refused', '..')):
        accepted, reply, c = try_compute(auth, dest)
        common.check(name, not accepted, 'dest_path %r accepted, reply %r' % (dest, unpickle(reply)))
        if accepted:
            close_compute(auth, c)

    accepted, reply, comp = try_compute(auth, None)
    common.check('compute_legit_accepted', accepted, 'reply %r' % (unpickle(reply),))

    local = 'payload.txt'
    with open(local, 'w') as fd:
        fd.write('escaped!\n')
    cases = (
        ('xfer_up_refused', '/client/escape_xfer_up.txt', '../../..', '/'),
        ('xfer_abs_refused', '/client/escape_xfer_abs.txt', ESCAPE_DIR, '/'),
        ('xfer_mid_refused', '/client/escape_xfer_mid.txt', 'sub/../../../..', '/'),
        ('xfer_name_backslash_refused', 'C:\\client\\../../../escape_xfer_name.txt', '', '\\'),
        ('xfer_dest_backslash_refused', 'C:\\client\\escape_xfer_dest.txt', '..\\..\\..', '\\'),
        ('xfer_name_dotdot_refused', '/client/..', '', '/'),
    )
    for name, xname, xdest, sep in cases:
        outcome, detail = try_xfer(auth, make_xfer(local, xname, xdest, comp.id, sep), local)
        common.check(name, outcome == 'refused',
                     'name %r dest_path %r: %s' % (xname, xdest, detail))
    # escaped files may be deleted again at close (the reference does): look now
    found = []
    for dirpath, dirnames, filenames in os.walk(ESCAPE_DIR):
        found.extend(os.path.join(dirpath, n) for n in dirnames + filenames if n.startswith('escape_'))
    common.check('no_escape_files_written', not found, 'found %r' % sorted(found))
    outcome, detail = try_xfer(auth, make_xfer(local, '/client/legit.txt', 'legit_sub', comp.id, '/'), local)
    common.check('xfer_legit_accepted', outcome == 'accepted', detail)

    common.check_eq('close_ack', close_compute(auth, comp), b'ACK')
    common.finish()
