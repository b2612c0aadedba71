"""The limits for the file workloads: copies of the same bytes over loopback TCP,
plain Python, sender and receiver in two processes (one per core).

    python rawcopy.py MODE MIB DIR

MODE:
    raw     memory -> memory: sendall() of 4 MiB buffers, recv_into() on the other side
    stream  file -> file: the sender reads a file, the receiver writes one (no acks)
    acked   file -> file with the dispy protocol's flow control: the receiver acks every
            1 024 000-byte chunk with a framed pickled int (the byte count so far) and
            the sender waits for the ack before the next chunk (stop-and-wait)

Prints one JSON line {"mode", "bytes", "seconds", "mb_per_s"}; the time runs
from accept() to the last byte received (and, for `acked`, the last ack sent).
DIR holds the files (removed afterwards).
"""

import json
import os
import pickle
import socket
import struct
import sys
import time

CHUNK = 1024000
MIB = 1 << 20
BUF = 4 << 20


def make_file(path, mib):
    block = os.urandom(MIB)
    with open(path, 'wb') as fd:
        for i in range(mib):
            fd.write(block[:-8] + i.to_bytes(8, 'big'))


def recv_exact(sock, n):
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError('closed')
        buf += chunk
    return bytes(buf)


def sender(mode, port, size, src):
    s = socket.create_connection(('127.0.0.1', port))
    try:
        if mode == 'raw':
            buf = os.urandom(BUF)
            sent = 0
            while sent < size:
                n = min(BUF, size - sent)
                s.sendall(buf[:n] if n < BUF else buf)
                sent += n
        elif mode == 'stream':
            with open(src, 'rb') as fd:
                while True:
                    data = fd.read(MIB)
                    if not data:
                        break
                    s.sendall(data)
        else:
            with open(src, 'rb') as fd:
                recvd = pickle.loads(recv_exact(s, struct.unpack('>L', recv_exact(s, 4))[0]))
                while recvd < size:
                    data = fd.read(CHUNK)
                    s.sendall(data)
                    recvd = pickle.loads(recv_exact(s, struct.unpack('>L', recv_exact(s, 4))[0]))
        s.shutdown(socket.SHUT_WR)
        s.recv(1)
    finally:
        s.close()


def receiver(mode, conn, size, dst):
    if mode == 'raw':
        buf = bytearray(BUF)
        view = memoryview(buf)
        got = 0
        while got < size:
            n = conn.recv_into(view, min(BUF, size - got))
            if not n:
                raise ConnectionError('closed')
            got += n
        return got
    with open(dst, 'wb') as fd:
        got = 0
        if mode == 'stream':
            while got < size:
                data = conn.recv(min(MIB, size - got))
                if not data:
                    raise ConnectionError('closed')
                fd.write(data)
                got += len(data)
            return got
        while got < size:
            ack = pickle.dumps(got)
            conn.sendall(struct.pack('>L', len(ack)) + ack)
            data = recv_exact(conn, min(CHUNK, size - got))
            fd.write(data)
            got += len(data)
        ack = pickle.dumps(got)
        conn.sendall(struct.pack('>L', len(ack)) + ack)
        return got


def main():
    mode, mib, d = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    assert mode in ('raw', 'stream', 'acked') and 0 < mib <= 4096
    size = mib * MIB
    src, dst = os.path.join(d, 'rawcopy.src'), os.path.join(d, 'rawcopy.dst')
    if mode != 'raw':
        make_file(src, mib)
    lsock = socket.socket()
    lsock.bind(('127.0.0.1', 0))
    lsock.listen(1)
    port = lsock.getsockname()[1]
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            lsock.close()
            sender(mode, port, size, src)
            code = 0
        finally:
            os._exit(code)
    lsock.settimeout(60)
    conn, _ = lsock.accept()
    conn.settimeout(60)
    t0 = time.perf_counter()
    got = receiver(mode, conn, size, dst)
    secs = time.perf_counter() - t0
    conn.sendall(b'k')
    conn.close()
    os.waitpid(pid, 0)
    for p in (src, dst):
        try:
            os.unlink(p)
        except OSError:
            pass
    print(json.dumps({'mode': mode, 'bytes': got, 'seconds': secs, 'mb_per_s': got / secs / 1e6}))


if __name__ == '__main__':
    main()
