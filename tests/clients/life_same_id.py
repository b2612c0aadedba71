"""Saved results of two computations with the same id stay each one's own.

dispy's computation ids come from the client's clock (int(1000 * time) at its start), so two
clients can send the same id; the computation's `auth` is what tells them apart. Two clients,
one after the other, run a computation with one id; each job's result cannot be delivered (its
job_result_port points at a port nobody listens on), so the node saves it. Then, with each
client's auth: PENDING_JOBS lists only its own job, RETRIEVE_JOB hands out its own result and
not the other's, and RESEND_JOB_RESULTS counts only its own.

argv: PORT                          (the harness)
      PORT --client N ID OUT.json   (one client, run by this script)
"""
import json
import os
import socket
import subprocess
import sys
import time

import common
import dispy
import life_common as lc
from pycos import serialize, deserialize


def compute(n):
    return ('answer', n * 10)


def closed_port():
    """A loopback port with no listener (bound, never listening, kept open meanwhile)."""
    s = socket.socket()
    s.bind((lc.HOST, 0))
    return s, s.getsockname()[1]


def one_client(port, n, compute_id, out):
    _holder, nobody = closed_port()
    orig = dispy._Cluster.add_cluster

    def add_cluster(self, cluster, task=None):
        self.compute_id = compute_id  # what the client sends as compute.id
        cluster._compute.job_result_port = nobody
        result = yield orig(self, cluster, task=task)
        return result

    dispy._Cluster.add_cluster = add_cluster
    c = lc.cluster_at(compute, port, port - 1)
    job = common.submit(c, n)
    _job = job._dispy_job_
    def saved_here():
        listed = lc.raw_request(c, b'PENDING_JOBS:', lc.compute_req(c))
        return isinstance(listed, dict) and _job.uid in (listed.get('done') or [])

    saved = common.wait_until(saved_here, 30, step=0.3)
    rec = {'compute_id': c._compute.id, 'auth': c._compute.auth, 'uid': _job.uid,
           'hash': _job.hash, 'node_auth': lc.node_of(c).auth.decode(), 'saved': bool(saved)}
    with open(out, 'w') as fd:
        json.dump(rec, fd)
    c.close(timeout=common.budget(10), terminate=True)


def raw(port, node_auth, tag, req, ack=False):
    return lc.raw_to(port, node_auth.encode(), tag + serialize(req), ack=ack)


def result_of(reply):
    if isinstance(reply, dispy._JobReply):
        return (reply.uid, deserialize(reply.result))
    return reply


if __name__ == '__main__':
    port = common.port()
    if common.arg(2) == '--client':
        one_client(port, int(sys.argv[3]), int(sys.argv[4]), sys.argv[5])
        sys.exit(0)
    compute_id = int(time.time() * 1000) - 10 ** 7  # not what either client would pick itself
    recs = []
    for n in (1, 2):
        out = os.path.abspath('client%d.json' % n)
        proc = subprocess.run([sys.executable, os.path.abspath(__file__), str(port), '--client',
                               str(n), str(compute_id), out], timeout=common.budget(40),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            with open(out) as fd:
                recs.append(json.load(fd))
        except (OSError, ValueError):
            recs.append(None)
            common.info('client%d_output' % n, proc.stdout.decode(errors='replace')[-2000:])
    a, b = recs
    common.check('both_saved', a and b and a['saved'] and b['saved'] and
                 a['compute_id'] == b['compute_id'] == compute_id and a['auth'] != b['auth'],
                 (a, b))
    if a and b:
        node_auth = a['node_auth']

        def req(rec, **extra):
            return dict({'compute_id': rec['compute_id'], 'auth': rec['auth']}, **extra)

        for name, me, other in (('a', a, b), ('b', b, a)):
            listed = raw(port, node_auth, b'PENDING_JOBS:', req(me))
            common.check('pending_own_only_%s' % name,
                         isinstance(listed, dict) and listed.get('done') == [me['uid']],
                         (listed, me['uid'], other['uid']))
            theirs = raw(port, node_auth, b'RETRIEVE_JOB:', req(me, uid=other['uid'],
                                                                 hash=other['hash']))
            common.check('retrieve_not_other_%s' % name, theirs is None, result_of(theirs))
            counted = raw(port, node_auth, b'RESEND_JOB_RESULTS:', req(me))
            common.check_eq('resend_counts_own_%s' % name, counted, 1)
        # Last, each takes its own result (and ACKs it).
        for name, me, n in (('a', a, 1), ('b', b, 2)):
            mine = raw(port, node_auth, b'RETRIEVE_JOB:', req(me, uid=me['uid'], hash=me['hash']),
                       ack=True)
            common.check_eq('retrieve_own_%s' % name, result_of(mine), (me['uid'], ('answer', n * 10)))
    common.finish()
