"""The client's own limit for the file workloads: dispy's real client code moving the
same bytes, against a peer that costs next to nothing.

    python clientbound.py MODE MIB DIR        (the venv's python: needs dispy and pycos)

MODE:
    depends   client -> node: dispy's own `_Node.xfer_file` (what `depends` runs) sends the
              file to a receiver that reads each 1 024 000-byte chunk into one buffer, acks
              it at once and only then writes it to its file (so the client's next chunk is
              on its way while the receiver writes).
    sendfile  node -> client: dispy's own `_Cluster.file_xfer_process` (what receives a
              job's `dispy_send_file`) receives the file from a sender that answers each
              ack with sendfile(2) of the next chunk.

No node can do better than its client lets it: a node's rate over this one is the
share of the client's limit it reaches (bench/README.md, "Against the targets").
Timed as bench/client.py times the real workloads: `depends` around xfer_file on the
client, `sendfile` on the sender from connect to the last ack (dispy_send_file's span in
the job). Prints one JSON line {"mode", "bytes", "seconds", "mb_per_s"}.
"""

import json
import os
import pickle
import socket
import struct
import sys
import time
import types

import dispy
import pycos

from rawcopy import CHUNK, MIB, make_file  # this directory: the same bytes as the raw copies

_LEN = struct.Struct('>L')


def recv_exact(sock, n):
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = sock.recv_into(view[got:])
        if not k:
            raise ConnectionError('closed')
        got += k
    return buf


def send_msg(sock, data):
    sock.sendall(_LEN.pack(len(data)) + data)


def recv_msg(sock):
    return bytes(recv_exact(sock, _LEN.unpack(recv_exact(sock, 4))[0]))


def fast_receiver(lsock, auth_len, dst):
    """The node side of FILEXFER with nothing in the way: returns the bytes written."""
    conn, _ = lsock.accept()
    with conn, open(dst, 'wb') as fd:
        recv_exact(conn, auth_len)
        xf = pickle.loads(recv_msg(conn)[len(b'FILEXFER:'):])
        size = xf.stat_buf.st_size
        buf = bytearray(CHUNK)
        view = memoryview(buf)
        got = 0
        send_msg(conn, pickle.dumps(got))
        while got < size:
            n = min(CHUNK, size - got)
            k = 0
            while k < n:
                r = conn.recv_into(view[k:n])
                if not r:
                    raise ConnectionError('closed')
                k += r
            got += n
            send_msg(conn, pickle.dumps(got))  # ack first: the next chunk comes meanwhile
            fd.write(view[:n])
        return got


def fast_sender(port, src):
    """The job side of dispy_send_file with nothing in the way: returns its seconds."""
    size = os.stat(src).st_size
    t0 = time.perf_counter()
    with socket.create_connection(('127.0.0.1', port)) as sock, open(src, 'rb') as fd:
        # No Nagle: each chunk's last, short segment goes out without waiting for the
        # client's ACK of the ones before it (which a delayed ACK can hold up).
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        while True:
            recvd = pickle.loads(recv_msg(sock))
            if recvd >= size:
                break
            count = min(size - recvd, CHUNK)
            sent = 0
            while sent < count:
                sent += os.sendfile(sock.fileno(), fd.fileno(), recvd + sent, count - sent)
    return time.perf_counter() - t0


def in_child(fn, *args):
    """Run fn(*args) in a forked process (the peer gets a core of its own, like a node)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.close(r)
            os.write(w, json.dumps(fn(*args)).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(w)
    return pid, r


def child_result(pid, r):
    with os.fdopen(r, 'rb') as fd:
        data = fd.read()
    _, status = os.waitpid(pid, 0)
    if status != 0 or not data:
        raise RuntimeError('peer process failed (status %d)' % status)
    return json.loads(data)


def run_depends(mib, d):
    src, dst = os.path.join(d, 'bound_dep.bin'), os.path.join(d, 'bound_dep.out')
    make_file(src, mib)
    node = dispy._Node('127.0.0.1', 0, 1, 'sign', 'secret')
    lsock = socket.socket()
    lsock.bind(('127.0.0.1', 0))
    lsock.listen(1)
    node.port = lsock.getsockname()[1]
    pid, r = in_child(fast_receiver, lsock, len(node.auth), dst)
    lsock.close()
    xf = dispy._XferFile(src, 1)

    def timed(task=None):
        t0 = time.perf_counter()
        resp = yield node.xfer_file(xf, task=task)
        return resp, time.perf_counter() - t0

    resp, secs = pycos.Task(timed).value()
    got = child_result(pid, r)
    size = mib * MIB
    if resp != size or got != size or os.path.getsize(dst) != size:
        raise RuntimeError('transfer incomplete: client %r, receiver %r' % (resp, got))
    return size, secs


def run_sendfile(mib, d):
    src = os.path.join(d, 'bound_send.bin')
    make_file(src, mib)
    out_dir = os.path.join(d, 'client')
    os.mkdir(out_dir)
    lsock = socket.socket()
    lsock.bind(('127.0.0.1', 0))
    lsock.listen(1)
    port = lsock.getsockname()[1]
    # What file_xfer_process looks up on the client (a job it knows, no node or cluster records).
    uid, job_hash = 1, 'h'
    client = types.SimpleNamespace(_sched_jobs={uid: types.SimpleNamespace(hash=job_hash, compute_id=1)},
                                   _nodes={}, _clusters={}, dest_path=out_dir)
    reply = types.SimpleNamespace(uid=uid, hash=job_hash, ip_addr='127.0.0.1')
    xf = types.SimpleNamespace(name=src, dest_path='.', sep=os.sep, stat_buf=os.stat(src))

    def serve(task=None):
        sock = pycos.AsyncSocket(lsock)
        conn, addr = yield sock.accept()
        yield dispy._Cluster.file_xfer_process(client, reply, xf, conn, addr)
        conn.close()

    server = pycos.Task(serve)
    pid, r = in_child(fast_sender, port, src)
    secs = child_result(pid, r)
    server.value()
    size = mib * MIB
    if os.path.getsize(os.path.join(out_dir, 'bound_send.bin')) != size:
        raise RuntimeError('transfer incomplete')
    return size, secs


def main():
    mode, mib, d = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    assert mode in ('depends', 'sendfile') and 0 < mib <= 4096
    size, secs = (run_depends if mode == 'depends' else run_sendfile)(mib, d)
    print(json.dumps({'mode': mode, 'bytes': size, 'seconds': secs, 'mb_per_s': size / secs / 1e6}))
    sys.stdout.flush()
    os._exit(0)  # pycos's scheduler threads would keep the process


if __name__ == '__main__':
    main()
