#!/usr/bin/env python3
"""Seed corpora for the dispynode fuzz targets, built with the real dispy 4.15.2 classes.

The messages are the ones of the decoded captures in
shared/docs/dispy-protocol-artifacts/transcripts/ (sessA: PING, PONG, COMPUTE, SETUP, JOB,
JOB_REPLY, CLOSE; sessD: depends with _XferFile and os.stat_result; sessF: program
computations; sessB/sessR: secrets, setup failures, ...), rebuilt here from dispy's own classes
(dispy._Compute, dispy._XferFile, dispy._DispyJob_, dispy._JobReply) and pickled the way the
client does (pycos.serialize: pickle.dumps with HIGHEST_PROTOCOL), plus older protocols and
hand-made edge cases.

Run it with the dispy venv's python (the interop tests' venv, target/dispy-venv, or any venv
with `pip install dispy==4.15.2`):

    $VENV/bin/python fuzz/seeds/make_seeds.py            # -> fuzz/corpus/<target>/ (not committed)
    $VENV/bin/python fuzz/seeds/make_seeds.py fuzz/seeds # -> the committed seed set

Output is deterministic (fixed ids, signs, hashes and stat values), so re-running it does not
change the committed seeds. File names starting with `dispy-` are exactly what a dispy 4.15.2
client sends; tests/fuzz_smoke.rs requires those to decode into their message type.
"""

import collections
import hashlib
import os
import pickle
import struct
import sys

try:
    import dispy
    import pycos
except ImportError:
    sys.exit('make_seeds.py needs dispy 4.15.2: run it with the dispy venv\'s python')

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.abspath(sys.argv[1]) if len(sys.argv) > 1 else os.path.join(os.path.dirname(HERE), 'corpus')

# fuzz/src/lib.rs REQUEST_SIGN; auth = sha1(secret + sign) with the empty secret.
REQUEST_SIGN = 'ebc0978aa007a6ea136a1bd14ea5ab697dcc1da2'
NODE_AUTH = hashlib.sha1(('' + REQUEST_SIGN).encode()).hexdigest().encode()
assert NODE_AUTH == b'ce6483473731ce76075c52bc458f09e757cb3ccb'

HOST = '127.0.0.1'
COMPUTE_ID = 1795759741648
CLIENT_SIGN = 'c61aac91af7735f0f2ab2c4e22a282438a3696c3'
COMPUTE_AUTH = '2b326447e86a3281c7ae5e0791dc9569efb63522'

written = collections.Counter()


def dumps(obj, protocol=None):
    # pycos.serialize is pickle.dumps(obj, protocol=PickleProtocolVersion)
    if protocol is None:
        return pycos.serialize(obj)
    return pickle.dumps(obj, protocol=protocol)


def write(target, name, data):
    d = os.path.join(OUT, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), 'wb') as fd:
        fd.write(data)
    written[target] += 1


def frame(data):
    return struct.pack('>L', len(data)) + data


# --- dispy objects ---------------------------------------------------------------------------

def stat_result(size, mode=0o100644):
    """An os.stat_result like the capture's (REDUCE(os.stat_result, (10-tuple, dict)))."""
    t = 1795759602
    ns = t * 10 ** 9
    return os.stat_result((mode, 10011358, 64768, 1, 0, 0, size, t, t, t + 7),
                          {'st_atime': float(t), 'st_mtime': float(t), 'st_ctime': t + 7.25,
                           'st_atime_ns': ns, 'st_mtime_ns': ns, 'st_ctime_ns': ns + 7250000000,
                           'st_blksize': 4096, 'st_blocks': 8, 'st_rdev': 0})


def xfer(name, dest_path, size=8, sep='/', mode=0o100644, compute_id=COMPUTE_ID):
    xf = dispy._XferFile.__new__(dispy._XferFile)
    xf.name = name
    xf.dest_path = dest_path
    xf.compute_id = compute_id
    xf.stat_buf = stat_result(size, mode)
    xf.sep = sep
    return xf


def compute(kind=dispy._Compute.func_type, name='compute', dest_path=None, xfer_files=(),
            setup=None, cleanup=True, code='def compute(n):\n    return n\n',
            client_reply_addr=None, pulse_interval=None):
    c = dispy._Compute(kind, name)
    c.id = COMPUTE_ID
    c.code = code
    c.dest_path = dest_path
    c.xfer_files = list(xfer_files)
    c.reentrant = False
    c.exclusive = True
    c.setup = setup
    c.cleanup = cleanup
    c.setup_args_count = 0
    c.scheduler_ip_addr = HOST
    c.scheduler_port = 51347
    c.node_ip_addr = HOST
    c.auth = COMPUTE_AUTH
    c.job_result_port = 51347
    c.pulse_interval = pulse_interval
    c.client_reply_addr = client_reply_addr
    return c


def job(args, kwargs=None, xfer_files=(), code='', uid=140226816986800):
    j = dispy._DispyJob_(COMPUTE_ID, None, args, dict(kwargs or {}))
    j.uid = uid
    j.hash = 'e86ed7b6db29558f9cf'
    j.xfer_files = list(xfer_files)
    j.code = code
    return j


class _Uid(object):
    def __init__(self, uid, hash):
        self.uid = uid
        self.hash = hash


def job_reply(result, stdout='', stderr='', exception=None, status=dispy.DispyJob.Finished):
    r = dispy._JobReply(_Uid(140226816986240, '8fa2c36e9401fd98ea'), HOST, status=status)
    r.result = pycos.serialize(result)
    r.stdout = stdout
    r.stderr = stderr
    r.exception = exception
    r.start_time = 1795759577.747429
    r.end_time = 1795759578.752107
    return r


def pings():
    """(name, dict) of the PINGs of the captures."""
    tcp = {'version': '4.15.2', 'sign': CLIENT_SIGN, 'port': 51347, 'node_ip_addr': HOST,
           'ip_addrs': [HOST]}
    udp = {'version': '4.15.2', 'sign': CLIENT_SIGN, 'port': 51347, 'ip_addrs': [HOST]}
    udp6 = {'version': '4.15.2', 'sign': CLIENT_SIGN, 'port': 51347, 'ip_addrs': ['::1', 'fe80::1%eth0']}
    relay = {'version': '4.15.2', 'sign': None, 'port': 51347, 'ip_addrs': [HOST], 'relay': 'y'}
    node = {'ip_addr': HOST, 'port': 51348, 'sign': REQUEST_SIGN, 'version': '4.15.2',
            'scheduler_ip_addr': None}
    many = dict(udp, ip_addrs=['127.0.0.%d' % i for i in range(1, 40)])
    old = dict(udp, version='4.14.0')
    return [('tcp', tcp), ('udp', udp), ('udp6', udp6), ('relay', relay), ('node', node),
            ('many-addrs', many), ('old-version', old)]


def computes():
    deps = [xfer('/tmp/vec/sub/subdata.txt', 'sub'), xfer('/tmp/vec/data.txt', '.')]
    win = [xfer('C:\\Users\\me\\proj\\data.txt', 'proj', sep='\\')]
    return [
        ('func', compute()),
        ('func-depends', compute(dest_path='mydest', xfer_files=deps, setup='setup',
                                 cleanup='cleanup')),
        ('func-keep', compute(dest_path='a/b/c', cleanup=False, pulse_interval=10)),
        ('func-reply-addr', compute(client_reply_addr=(HOST, 51347))),
        ('program', compute(kind=dispy._Compute.prog_type, name='/tmp/prog.sh', code='',
                            xfer_files=[xfer('/tmp/prog.sh', '', size=120, mode=0o100755)])),
        ('windows', compute(xfer_files=win, dest_path='proj')),
    ]


def xfers():
    return [
        ('plain', xfer('/tmp/vec/sub/subdata.txt', 'sub')),
        ('top', xfer('/home/me/data.txt', '.')),
        ('nested', xfer('/home/me/a/b/c/d.bin', 'a/b/c', size=1 << 20)),
        ('windows', xfer('C:\\Users\\me\\proj\\data.txt', 'proj\\sub', sep='\\')),
        ('program', xfer('/tmp/prog.sh', '', size=120, mode=0o100755)),
    ]


def jobs():
    return [
        ('func', job((2,))),
        ('func-kwargs', job((1, 'two', 3.0), {'k': [1, 2], 'flag': True})),
        ('func-depends', job((5,), xfer_files=[xfer('/tmp/vec/job.txt', '.', size=3)],
                             code='\ndef helper(x):\n    return x\n')),
        ('program', job(['-c', 'echo hi', 'a b'])),
        ('bigarg', job((b'\x00' * 3000, list(range(200))))),
    ]


def compute_requests():
    return [
        ('setup', {'compute_id': COMPUTE_ID, 'setup_args': ()}),
        ('setup-args', {'compute_id': COMPUTE_ID, 'setup_args': (1, 'x')}),
        ('close', {'compute_id': COMPUTE_ID, 'auth': COMPUTE_AUTH, 'node_ip_addr': HOST,
                   'terminate_pending': True, 'close': True}),
        ('close-resetup', {'compute_id': COMPUTE_ID, 'auth': COMPUTE_AUTH, 'node_ip_addr': HOST,
                           'terminate_pending': False, 'close': False}),
        ('jobs', {'compute_id': COMPUTE_ID, 'auth': COMPUTE_AUTH}),
        ('pending-jobs', {'compute_id': COMPUTE_ID, 'auth': COMPUTE_AUTH}),
        ('retrieve-job', {'compute_id': COMPUTE_ID, 'uid': 140226816986240,
                          'hash': '8fa2c36e9401fd98ea', 'auth': COMPUTE_AUTH}),
    ]


def job_replies():
    return [
        ('finished', job_reply(('vm', 2), stdout='hello from job 1\n')),
        ('exception', job_reply(None, stderr='Traceback ...\n', exception='ZeroDivisionError',
                                status=dispy.DispyJob.Terminated)),
        ('program', job_reply(0, stdout=b'out\n', stderr=b'')),
        ('provisional', job_reply([1, 2, 3], status=dispy.DispyJob.ProvisionalResult)),
    ]


def data_pickles():
    """Plain data in every protocol, the shapes a decoder must get right."""
    shared = [1, 2]
    rec = []
    rec.append(rec)
    values = [
        ('none', None),
        ('ints', [0, 1, -1, 255, 256, 65535, 65536, 2 ** 31 - 1, -2 ** 31, 2 ** 63 - 1, -2 ** 63,
                  2 ** 64, -2 ** 100, 10 ** 50]),
        ('floats', [0.0, -0.0, 1.5, 1e308, float('inf'), float('-inf'), float('nan')]),
        ('strs', ['', 'a', 'caf\xe9', '\u20ac', '\U0001f600', 'a\nb\\c', 'x' * 300]),
        ('bytes', [b'', b'\x00\xff', b'x' * 300, bytearray(b'ba')]),
        ('containers', ((), (1,), (1, 2), (1, 2, 3), (1, 2, 3, 4), [], {}, {'a': 1, 2: 'b'},
                        set(), {1, 2}, frozenset(), frozenset({'x'}))),
        ('memo-shared', [shared, shared, {'k': shared}]),
        ('recursive', rec),
        ('ordered', collections.OrderedDict([('a', 1), ('b', 2)])),
        ('defaultdict', collections.defaultdict(list, {'a': [1]})),
        ('exception', ValueError('bad', 3)),
        ('stat', stat_result(10)),
        ('complex', complex(1, 2)),
        ('nested', [[[[[[[[[[1]]]]]]]]]]),
    ]
    out = []
    for name, v in values:
        for proto in range(0, pickle.HIGHEST_PROTOCOL + 1):
            try:
                out.append(('%s-p%d' % (name, proto), pickle.dumps(v, protocol=proto)))
            except Exception:
                pass
    return out


def hand_made():
    """Edge cases no Python pickler writes."""
    return [
        ('empty', b''),
        ('stop-only', b'.'),
        ('trailing', b'\x80\x04N.junk'),
        ('deep-tuple', b'\x80\x04N' + b'\x85' * 120 + b'.'),
        ('deep-marks', b'\x80\x04' + b'(' * 120 + b'N.'),
        ('memo-get-missing', b'\x80\x04h\x05.'),
        ('long-binput', b'\x80\x04Nr\xff\xff\xff\xffj\xff\xff\xff\xff.'),
        ('memo-repeat', b'\x80\x04]\x94C\x10abcdefghabcdefgh\x94a' + b'h\x01a' * 8 + b'.'),
        ('laughs', b'\x80\x04]\x94(' + b'N' * 10 + b'e](' + b'h\x00' * 10 + b'e.'),
        ('frame-too-long', b'\x80\x05\x95\xff\xff\xff\xff\xff\xff\xff\x7fN.'),
        ('binbytes8-huge', b'\x80\x05\x8e\xff\xff\xff\xff\xff\xff\xff\xff.'),
        ('next-buffer', b'\x80\x05\x97.'),
        ('global-evil', b"cos\nsystem\n(S'touch /tmp/x'\ntR."),
        ('inst', b'(i__main__\nK\n(dS\'a\'\nI1\nsb.'),
        ('persid', b'Pabc\n.'),
        ('ext', b'\x80\x02\x82\x01\x83\x01\x02\x84\x01\x02\x03\x04\x87.'),
        ('newobj-ex', b'\x80\x04cdispy\n_Compute\n)}\x92}b.'),
        ('bad-proto', b'\x80\x09N.'),
    ]


def regressions():
    """Reproducers of findings (regress-*): kept as seeds so that libFuzzer replays them first
    and tests/fuzz_smoke.rs runs them in cargo test."""
    # Payload expansion (open): 1000 bytes memoized once and referenced 2000 times through
    # BINGET: 3 kB of pickle decode into 2 MB of bytes (the bound is relative to
    # Limits::max_input, 256 MiB, not to the input; a 1 MiB pickle decodes into ~1 GiB).
    memo_repeat = (b'\x80\x04]\x94B' + struct.pack('<I', 1000) + b'x' * 1000 + b'\x94a(' +
                   b'h\x01' * 2000 + b'e.')
    # The same with DUP + TUPLE2 doubling (no memo at all): 2**14 copies of 100 bytes.
    doubling = b'\x80\x04C\x64' + b'y' * 100 + b'2\x86' * 14 + b'.'
    return [('regress-expansion-memo-repeat', memo_repeat),
            ('regress-expansion-dup-doubling', doubling)]


def store_paths():
    # sep \n name \n dest_path, as fuzz/src/lib.rs store_path reads it
    cases = [
        ('/', '/tmp/vec/sub/subdata.txt', 'sub'),
        ('/', '/tmp/data.txt', '.'),
        ('/', '/tmp/data.txt', ''),
        ('/', '/client/escape.txt', '../../..'),
        ('/', '/client/escape.txt', '/etc'),
        ('/', '/client/escape.txt', 'sub/../../..'),
        ('\\', 'C:\\client\\..\\..\\escape.txt', ''),
        ('\\', 'C:\\client\\escape.txt', '..\\..\\..'),
        ('\\', 'C:\\client\\data.txt', 'C:\\windows'),
        ('/', '/client/..', ''),
        ('/', '/client/file', 'a/b'),
        ('/', '/client/file', 'link'),
        ('/', '/client/file', 'a/up'),
        ('/', '/client/x', 'a/b/abs/etc'),
        ('', 'file', 'a//b/./'),
        ('ab', 'xaybz', 'aab..b'),
        ('/', 'nul\x00name', 'a\x00b'),
    ]
    return [('case%02d' % i, ('%s\n%s\n%s' % c).encode('utf-8')) for i, c in enumerate(cases)]


def configs():
    return [
        ('empty', b''),
        ('full', b'''debug = true
cpus = -1
ip_addr = ["127.0.0.1", "::1"]
ext_ip_addr = ["203.0.113.7"]
node_port = 9701
name = "rack3-n7"
secret = "s3cret"
dest_path_prefix = "/var/lib/dispynode/files"
state_dir = "/var/lib/dispynode/state"
scheduler_node = "sched.example"
scheduler_port = 9700
max_file_size = "100m"
zombie_interval = 10
clean = true
msg_timeout = 2.5
service_start = "17:00"
service_stop = "06:00"
service_end = "08:00"
serve = 3
python = "/usr/bin/python3"
user = "dispy"
group = "dispy"
job_memory_max = "2g"
job_pids_max = 256
job_cpu_max = 100
'''),
        ('sizes', b'max_file_size = 10240\njob_memory_max = 1073741824\n'),
        ('relative', b'dest_path_prefix = "files/../x/./y/"\nmsg_timeout = 0.000000001\n'),
        ('unknown-key', b'dest_path = "x"\n'),
        ('bad-types', b'cpus = "two"\nnode_port = 70000\n'),
        ('bad-time', b'service_start = "25:00"\n'),
        ('unicode', 'name = "n\u00f6de \U0001f600"\nsecret = "\\u0000x"\n'.encode('utf-8')),
    ]


def main():
    for name, v in pings():
        body = dumps(v)
        write('ping', 'dispy-%s' % name, body)
        write('pickle_decode', 'ping-%s' % name, body)
        write('request', 'ping-%s' % name, b'x' * 40 + frame(b'PING:' + body))
        write('request', 'ping-authed-%s' % name, NODE_AUTH + frame(b'PING:' + body))
    for name, c in computes():
        body = dumps(c)
        write('compute', 'dispy-%s' % name, body)
        write('pickle_decode', 'compute-%s' % name, body)
        write('request', 'compute-%s' % name, NODE_AUTH + frame(b'COMPUTE:' + body))
        write('compute', 'p2-%s' % name, dumps(c, protocol=2))
        for i, xf in enumerate(c.xfer_files):
            write('request', 'filexfer-%s-%d' % (name, i), NODE_AUTH + frame(b'FILEXFER:' + dumps(xf)))
    for name, xf in xfers():
        body = dumps(xf)
        write('xfer_file', 'dispy-%s' % name, body)
        write('pickle_decode', 'xfer-%s' % name, body)
        write('xfer_file', 'p0-%s' % name, dumps(xf, protocol=0))
    for name, j in jobs():
        body = dumps(j)
        write('job', 'dispy-%s' % name, body)
        write('pickle_decode', 'job-%s' % name, body)
        write('request', 'job-%s' % name, NODE_AUTH + frame(b'JOB:' + body))
    write('request', 'terminate-job', NODE_AUTH + frame(b'TERMINATE_JOB:' + dumps(jobs()[0][1])))
    for name, r in compute_requests():
        body = dumps(r)
        write('compute_request', 'dispy-%s' % name, body)
        write('pickle_decode', 'request-%s' % name, body)
        tag = {'setup': b'SETUP', 'setup-args': b'SETUP', 'close': b'CLOSE',
               'close-resetup': b'CLOSE', 'jobs': b'JOBS', 'pending-jobs': b'PENDING_JOBS',
               'retrieve-job': b'RETRIEVE_JOB'}[name]
        write('request', 'compute-request-%s' % name, NODE_AUTH + frame(tag + b':' + body))
    for name, r in job_replies():
        body = dumps(r)
        write('job_reply', 'dispy-%s' % name, body)
        write('pickle_decode', 'job-reply-%s' % name, body)
    for name, data in data_pickles() + hand_made():
        write('pickle_decode', 'data-%s' % name, data)
    for name, data in regressions():
        write('pickle_decode', name, data)
        write('request', name, NODE_AUTH + frame(b'COMPUTE:' + data))
    # frames: the node's COMPUTE reply of the capture, and a few messages back to back
    write('frame', 'capture-compute-reply', bytes.fromhex('00000005 80054b022e'.replace(' ', '')))
    write('frame', 'ack', frame(b'ACK'))
    write('frame', 'empty', frame(b''))
    write('frame', 'stream', frame(b'PING:' + dumps(pings()[0][1])) + frame(b'ACK') + frame(b'NAK'))
    write('frame', 'huge', b'\xff\xff\xff\xff')
    write('frame', 'truncated', b'\x00\x00\x01\x00' + b'x' * 10)
    write('request', 'unknown', NODE_AUTH + frame(b'BOGUS:' + dumps(1)))
    write('request', 'huge', NODE_AUTH + b'\xff\xff\xff\xff')
    for name, data in store_paths():
        write('store_path', name, data)
    for name, data in configs():
        write('config_toml', name, data)
    for target, n in sorted(written.items()):
        print('%-16s %3d files -> %s' % (target, n, os.path.join(OUT, target)))


if __name__ == '__main__':
    main()
