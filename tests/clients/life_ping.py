"""One TCP PING to the node, as a client discovering it sends it (the dummy auth prefix that
PINGs may carry), with a listener of our own as the reply port: the node answers a free,
open node's PING with a PONG on a new connection to that port.

With --expect relay the PING has no sign, as dispynetrelay forwards a client's: the node
answers with a PING of its own (its address, port and sign), as the reference does, so that
the scheduler PINGs it.

argv: PORT --expect pong|none|relay [--wait SECS]
Checks: pong (a PONG came within --wait, default 3 s), no_pong (nothing came) or relayed
(the node's PING came)
"""
import socket

import common
import dispy
from pycos import AsyncSocket, deserialize, serialize


if __name__ == '__main__':
    port = common.port()
    expect = common.opt('--expect', 'pong')
    wait = float(common.opt('--wait', '3'))
    listener = socket.socket()
    listener.bind(('127.0.0.1', 0))
    listener.listen(8)
    listener.settimeout(common.budget(wait))
    ping = {'version': dispy._dispy_version, 'sign': 'p' * 40,
            'port': listener.getsockname()[1], 'ip_addrs': ['127.0.0.1']}
    if expect == 'relay':
        ping.update(sign=None, relay=True)
    sock = AsyncSocket(socket.socket(), blocking=True)
    sock.settimeout(5)
    sock.connect(('127.0.0.1', port))
    sock.sendall(b'x' * 40)
    sock.send_msg(b'PING:' + serialize(ping))
    sock.close()
    got = b''
    try:
        conn, _ = listener.accept()
        conn = AsyncSocket(conn, blocking=True)
        conn.settimeout(5)
        got = conn.recv_msg() or b''
        conn.close()
    except (socket.timeout, OSError):
        pass
    if expect == 'pong':
        common.check('pong', got.startswith(b'PONG:'), got[:40])
    elif expect == 'relay':
        try:
            info = deserialize(got[len(b'PING:'):]) if got.startswith(b'PING:') else None
        except Exception:
            info = None
        common.check('relayed', isinstance(info, dict) and info.get('port') == port and
                     info.get('ip_addr') == '127.0.0.1' and bool(info.get('sign')), got[:200])
    else:
        common.check('no_pong', not got, got[:40])
    common.finish()
