"""Malformed and hostile traffic must not kill or wedge the node.

TCP: connect/close, short prefixes, a wrong auth, a huge frame length, bad
pickles with the right auth, unknown commands, FILEXFER for an unknown
computation.  UDP: random bytes and bad PINGs.  Afterwards the node must
still answer a PING with a PONG.

With --strict (our node only) also: UDP discovery still answers after the
junk (the reference's UDP task dies on a PING dict without 'ip_addrs'), and
pickles whose loading would run
os.system (sent over UDP without any auth, and over TCP with the right auth
as a COMPUTE) must never be executed by the node daemon: the marker files
they would create must not exist.  The reference unpickles both (by design).

argv: PORT SECRET MARKER_DIR [--strict]
"""
import hashlib
import os
import pickle
import socket
import struct
import sys
import time

import common
import raw_escape as raw

PORT = common.port()
SECRET = common.arg(2, '')
MARKER_DIR = common.arg(3)
STRICT = '--strict' in sys.argv


def evil_pickle(path):
    # protocol-0 pickle: os.system('touch <path>')
    return b"cos\nsystem\n(S'touch " + path.encode() + b"'\ntR."


def tcp_raw(data, read=True):
    try:
        s = raw.connect()
    except OSError as e:
        return 'connect failed: %s' % e
    try:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        if read:
            return raw.recv_frame(s)
        return b''
    except OSError:
        return b''
    finally:
        s.close()


def ping_pong(listener, udp=False):
    sign = hashlib.sha1(os.urandom(20)).hexdigest()
    ping = {'version': '4.15.2', 'sign': sign, 'port': PORT - 1, 'node_ip_addr': raw.HOST,
            'ip_addrs': [raw.HOST]}
    with listener.cond:
        listener.messages = []
    if udp:
        # like the client's discovery: no node_ip_addr, unicast and broadcast
        del ping['node_ip_addr']
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        u.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        for target in (raw.HOST, '255.255.255.255'):
            try:
                u.sendto(b'PING:' + pickle.dumps(ping), (target, PORT))
            except OSError:
                pass
        u.close()
    else:
        tcp_raw(b'x' * 40 + raw.frame(b'PING:' + pickle.dumps(ping)), read=False)
    pong = listener.wait_for(b'PONG:', 20)
    if not pong:
        return None, None
    info = pickle.loads(pong[len(b'PONG:'):])
    return info, sign


if __name__ == '__main__':
    listener = raw.Listener()
    info, sign = ping_pong(listener)
    common.check('pong_before', info is not None, 'no PONG')
    node_sign = (info or {}).get('sign', '')
    auth = raw.auth_code(SECRET, node_sign)

    # --- TCP junk
    tcp_raw(b'', read=False)
    tcp_raw(b'short', read=False)
    tcp_raw(b'x' * 39, read=False)
    r = tcp_raw(b'y' * 40 + raw.frame(b'COMPUTE:garbage'))
    common.check_eq('wrong_auth_no_reply', r, b'')
    tcp_raw(b'x' * 40 + struct.pack('>L', 0xFFFFFFF0) + b'abc', read=False)
    tcp_raw(auth + struct.pack('>L', 0x7FFFFFFF) + b'COMPUTE:', read=False)
    tcp_raw(auth + struct.pack('>L', 100) + b'JOB:', read=False)
    r = tcp_raw(auth + raw.frame(b'COMPUTE:\x80\x05garbage'))
    v = raw.unpickle(r)
    common.check('bad_compute_pickle_refused', not (isinstance(v, int) and v > 0), 'reply %r' % (r,))
    r = tcp_raw(auth + raw.frame(b'JOB:' + pickle.dumps({'not': 'a job'})))
    common.check('bad_job_refused', r != b'ACK', 'reply %r' % (r,))
    r = tcp_raw(auth + raw.frame(b'SETUP:' + pickle.dumps({'compute_id': 12345, 'setup_args': ()})))
    common.check('setup_unknown_compute_refused', r != b'ACK', 'reply %r' % (r,))
    tcp_raw(auth + raw.frame(b'BOGUS:' + pickle.dumps(1)))
    tcp_raw(auth + raw.frame(b'TERMINATE_JOB:' + pickle.dumps([1, 2, 3])), read=False)
    tcp_raw(auth + raw.frame(b'CLOSE:' + pickle.dumps('nonsense')))
    with open('payload.txt', 'w') as fd:
        fd.write('x\n')
    xf = raw.make_xfer('payload.txt', '/client/unknown_compute.txt', '', 987654321, '/')
    outcome, detail = raw.try_xfer(auth, xf, 'payload.txt')
    common.check('xfer_unknown_compute_refused', outcome == 'refused', detail)
    marker_tcp = os.path.join(MARKER_DIR, 'pwned_tcp_marker')
    tcp_raw(auth + raw.frame(b'COMPUTE:' + evil_pickle(marker_tcp)))

    # --- UDP junk
    marker_udp = os.path.join(MARKER_DIR, 'pwned_udp_marker')
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
    # unicast, and broadcast like the real client's discovery (the reference
    # binds its UDP socket to 255.255.255.255 and never sees the unicast)
    for d in (b'PING:' + evil_pickle(marker_udp), b'', os.urandom(50), b'PING:', b'PING:' + os.urandom(100),
              b'PING:' + pickle.dumps([1, 2]), b'NODE_INFO:' + os.urandom(20), os.urandom(1500),
              b'PULSE:' + pickle.dumps(None), b'PING:' + pickle.dumps({'version': '4.15.2'})):
        for target in (raw.HOST, '255.255.255.255'):
            try:
                u.sendto(d, (target, PORT))
            except OSError:
                pass
    u.close()
    time.sleep(1.0)

    info2, sign2 = ping_pong(listener)
    common.check('pong_after', info2 is not None, 'no PONG after the junk')
    if info2:
        common.check_eq('pong_after_auth', info2.get('auth'), raw.auth_code(SECRET, sign2))
    if STRICT:
        # the reference's UDP server task dies on a PING without 'ip_addrs'
        info3, sign3 = ping_pong(listener, udp=True)
        common.check('udp_pong_after', info3 is not None and info3.get('auth') == raw.auth_code(SECRET, sign3),
                     'no valid PONG to a UDP PING after the junk: %r' % (info3,))
        common.check('udp_pickle_not_executed', not os.path.exists(marker_udp), marker_udp)
        common.check('tcp_pickle_not_executed', not os.path.exists(marker_tcp), marker_tcp)
    common.finish()
