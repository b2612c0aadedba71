"""Requests with the node's secret that belong to no live computation of theirs, every 2 s
until killed: JOBS and PENDING_JOBS for the computation COMPUTE_ID with a wrong auth, JOBS
for an id nobody registered. None of them may reset the node's zombie clock for that
computation (the harness checks the zombie is still closed in time).

argv: PORT NODE_AUTH COMPUTE_ID
"""
import socket
import sys
import time

import common
from pycos import AsyncSocket, serialize


def send(port, node_auth, msg):
    sock = AsyncSocket(socket.socket(), blocking=True)
    sock.settimeout(5)
    try:
        sock.connect(('127.0.0.1', port))
        sock.sendall(node_auth)
        sock.send_msg(msg)
        return sock.recv_msg()
    except Exception as exc:
        return repr(exc)
    finally:
        sock.close()


if __name__ == '__main__':
    port, node_auth, compute_id = common.port(), sys.argv[2].encode(), int(sys.argv[3])
    wrong = {'compute_id': compute_id, 'auth': '0' * 40}
    requests = [b'JOBS:' + serialize(wrong), b'PENDING_JOBS:' + serialize(wrong),
                b'JOBS:' + serialize({'compute_id': compute_id + 1, 'auth': '0' * 40})]
    common.info('phase', 'keeping')
    sent = 0
    while True:  # the harness kills us
        for msg in requests:
            send(port, node_auth, msg)
            sent += 1
        common.info('sent', sent)
        time.sleep(2)
