"""A symlink planted by an earlier job must not lead the node outside its prefix.

mode plant (stock client): a computation with dest_path DEST and cleanup=False
  runs one job that plants, in its directory (the computation's directory
  under the node's prefix), symlinks pointing outside the prefix:
    link_dir   -> OUTSIDE                (a directory)
    victim.txt -> OUTSIDE/victim.txt     (a file)
    sub        -> OUTSIDE/keep           (a directory, used as a dest_path part)
  and tries to plant ../evil_dest -> OUTSIDE next to its own directory (the
  job may not be allowed to; INFO evil_dest says whether it was).
mode transfer (raw protocol, dispy's own classes, as raw_escape.py): a second
  computation with the same dest_path DEST; transfers whose target goes
  through a planted link must be refused (-1 or the connection closed), a
  transfer onto the planted file link may replace the link but never write
  through it, and computations whose dest_path goes through a link are
  refused.  The harness checks OUTSIDE from outside afterwards.

argv: PORT plant|transfer DEST OUTSIDE [evil_planted]
"""
import hashlib
import os
import pickle

import common
import dispy
import raw_escape as raw

MODE = common.arg(2)
DEST = common.arg(3)
OUTSIDE = common.arg(4)
# transfer: whether the plant job managed to put evil_dest next to its directory
EVIL_PLANTED = common.arg(5) == 'evil_planted'


def plant(outside):
    import os
    made = {}
    for name, target in (('link_dir', outside), ('victim.txt', os.path.join(outside, 'victim.txt')),
                         ('sub', os.path.join(outside, 'keep'))):
        os.symlink(target, name)
        made[name] = os.path.islink(name)
    try:
        os.symlink(outside, os.path.join('..', 'evil_dest'))
        made['evil_dest'] = True
    except OSError as e:
        made['evil_dest'] = 'refused: %s' % e
    return (os.getcwd(), made)


def do_plant():
    c = common.cluster(plant, dest_path=DEST, cleanup=False)
    job = common.submit(c, OUTSIDE)
    common.check('plant_replied', common.wait_job(job, 60), common.status_name(job.status))
    common.check_eq('plant_finished', (common.status_name(job.status), job.exception),
                    (common.status_name(dispy.DispyJob.Finished), None))
    made = job.result[1] if isinstance(job.result, tuple) else {}
    common.check_eq('planted', [made.get(n) for n in ('link_dir', 'victim.txt', 'sub')], [True] * 3)
    common.info('dest_dir', job.result[0] if isinstance(job.result, tuple) else '')
    common.info('evil_dest', made.get('evil_dest'))
    common.check('plant_closed', common.close(c), 'close reported pending jobs')


def do_transfer():
    listener = raw.Listener()
    my_sign = hashlib.sha1(os.urandom(20)).hexdigest()
    ping = {'version': '4.15.2', 'sign': my_sign, 'port': raw.PORT - 1, 'node_ip_addr': raw.HOST,
            'ip_addrs': [raw.HOST]}
    s = raw.connect()
    s.sendall(b'x' * 40 + raw.frame(b'PING:' + pickle.dumps(ping, protocol=pickle.HIGHEST_PROTOCOL)))
    s.close()
    pong = listener.wait_for(b'PONG:', 20)
    common.check('pong', pong is not None, 'no PONG within 20 s')
    info = raw.unpickle(pong[len(b'PONG:'):]) if pong else {}
    auth = raw.auth_code('', (info or {}).get('sign') or '')

    cases = [('compute_through_link_refused', DEST + '/link_dir'),
             ('compute_through_sub_refused', DEST + '/sub/x')]
    if EVIL_PLANTED:
        cases.append(('compute_evil_dest_refused', 'evil_dest'))
    for name, dest in cases:
        accepted, reply, c = raw.try_compute(auth, dest)
        common.check(name, not accepted, 'dest_path %r accepted, reply %r' % (dest, raw.unpickle(reply)))
        if accepted:
            raw.close_compute(auth, c)

    accepted, reply, comp = raw.try_compute(auth, DEST)
    common.check('compute_same_dest_accepted', accepted, 'reply %r' % (raw.unpickle(reply),))

    local = 'escape_payload.txt'
    with open(local, 'w') as fd:
        fd.write('written through a symlink!\n')
    for name, xname, xdest in (('xfer_link_dir_refused', '/client/escape_via_link.txt', 'link_dir'),
                               ('xfer_link_dir_deeper_refused', '/client/escape_deeper.txt', 'link_dir/deeper'),
                               ('xfer_sub_refused', '/client/escape_sub.txt', 'sub')):
        outcome, detail = raw.try_xfer(auth, raw.make_xfer(local, xname, xdest, comp.id, '/'), local)
        common.check(name, outcome == 'refused', 'name %r dest_path %r: %s' % (xname, xdest, detail))
    # onto the planted file link: replacing the link is fine, writing through it is not
    outcome, detail = raw.try_xfer(auth, raw.make_xfer(local, '/client/victim.txt', '', comp.id, '/'), local)
    common.info('xfer_onto_file_link', '%s: %s' % (outcome, detail))
    with open(os.path.join(OUTSIDE, 'victim.txt')) as fd:
        common.check_eq('victim_untouched', fd.read(), 'precious\n')
    common.check_eq('close_ack', raw.close_compute(auth, comp), b'ACK')


if __name__ == '__main__':
    if MODE == 'plant':
        do_plant()
    else:
        do_transfer()
    common.finish()
