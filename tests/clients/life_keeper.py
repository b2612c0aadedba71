"""Requests with the node's secret that belong to no live computation of theirs, every 2 s
until killed: JOBS and PENDING_JOBS for the computation COMPUTE_ID with a wrong auth, JOBS
for an id nobody registered. None of them may reset the node's zombie clock for that
computation (the harness checks the zombie is still closed in time).

argv: PORT NODE_AUTH COMPUTE_ID
"""
import sys
import time

import common
import life_common as lc
from pycos import serialize


if __name__ == '__main__':
    port, node_auth, compute_id = common.port(), sys.argv[2].encode(), int(sys.argv[3])
    wrong = {'compute_id': compute_id, 'auth': '0' * 40}
    requests = [b'JOBS:' + serialize(wrong), b'PENDING_JOBS:' + serialize(wrong),
                b'JOBS:' + serialize({'compute_id': compute_id + 1, 'auth': '0' * 40})]
    common.info('phase', 'keeping')
    sent = 0
    while True:  # the harness kills us
        for msg in requests:
            lc.raw_to(port, node_auth, msg, timeout=5)
            sent += 1
        common.info('sent', sent)
        time.sleep(2)
