"""SIGTERM to the node while jobs run: a function job (which also started
`sleep TOKEN1`) and a program job (a shell script that runs `sleep TOKEN2`
in the background and in the foreground).  Once both run, this script
records every descendant of the node and sends SIGTERM to the node.  Then:
  * the node exits within 10 s;
  * the client sees both jobs end within 20 s: a Terminated reply, or
    Abandoned after the node's TERMINATED message (the real client then
    drops the node and abandons its non-reentrant jobs; job.finish is only
    set by a reply);
  * the node is gone from the client's view (TERMINATED);
  * no process the node had started survives: none of the recorded
    descendants, no `sleep TOKEN*`, no process whose cwd is under the
    node's prefix.

argv: PORT NODE_PID TOKEN PREFIX
"""
import os
import signal
import stat
import time

import common
import dispy
import life_common as lc


def compute(arg):
    import os
    import subprocess
    import time
    p = subprocess.Popen(['sleep', arg])
    dispy_provisional_result((os.getpid(), p.pid))
    time.sleep(100)
    return 'not terminated'


PROGRAM = '#!/bin/sh\nsleep "$1" &\nsleep "$1"\nwait\n'

if __name__ == '__main__':
    port = common.port()
    node_pid = int(common.arg(2))
    token = common.arg(3)
    prefix = os.path.realpath(common.arg(4))
    tok1, tok2 = '100.%s1' % token, '100.%s2' % token
    prog = os.path.abspath('life_prog_%s.sh' % token)
    with open(prog, 'w') as fd:
        fd.write(PROGRAM)
    os.chmod(prog, stat.S_IRWXU)
    c1 = lc.cluster_at(compute, port, port - 1, depends=[])
    c2 = lc.cluster_at(prog, port, port - 1)
    j1 = common.submit(c1, tok1)
    j2 = common.submit(c2, tok2)
    r1 = common.wait_until(lambda: j1.status == dispy.DispyJob.ProvisionalResult, 40)
    r2 = common.wait_until(lambda: len(lc.with_token(tok2)) >= 2 and lc.with_token(tok1)
                           and common.client_has_it_running(j2), 40, step=0.2)
    common.check('jobs_running', r1 and r2,
                 'function job %s, processes %r' % (common.status_name(j1.status),
                                                    lc.with_token(tok1) + lc.with_token(tok2)))
    time.sleep(0.5)
    recorded = lc.descendants(node_pid)
    common.info('node_descendants', [(p[0], p[2]) for p in recorded])
    t0 = time.time()
    os.kill(node_pid, signal.SIGTERM)
    exited = common.wait_until(lambda: not lc.alive(node_pid), 10, step=0.1)
    common.info('node_exit_seconds', '%.1f' % (time.time() - t0))
    common.check('node_exited', exited, 'node pid %d still runs 10 s after SIGTERM' % node_pid)
    ended = set((dispy.DispyJob.Terminated, dispy.DispyJob.Abandoned))
    seen = common.wait_until(lambda: j1.status in ended and j2.status in ended, 20, step=0.1)
    common.info('job_statuses', [common.status_name(j.status) for j in (j1, j2)])
    common.check('jobs_ended', seen, 'statuses %s' % [common.status_name(j.status) for j in (j1, j2)])
    common.check('node_dropped_by_client',
                 common.wait_until(lambda: not [n for n in c1.status().nodes if n.cpus > 0], 10, step=0.2),
                 'the client still has the node: %r' % [(n.ip_addr, n.cpus) for n in c1.status().nodes])

    def survivors():
        alive = [p for p in recorded if lc.alive(p[0])]
        alive += [p for p in lc.processes() if tok1 in p[2] or tok2 in p[2]]
        alive += [p for p in lc.processes() if p[3] and os.path.realpath(p[3]).startswith(prefix)]
        return sorted(dict((p[0], p) for p in alive).values())

    gone = common.wait_until(lambda: not survivors(), 10, step=0.2)
    common.check('no_process_left', gone, 'still running: %r' % (survivors(),))
    for cl in (c1, c2):
        cl.close(timeout=1, terminate=True)
    for p in survivors():
        try:
            os.kill(p[0], signal.SIGKILL)
        except OSError:
            pass
    common.finish()
