"""Shared helpers for the interop client scripts.

Every script takes the node's TCP port P as argv[1]; the client listens on
P-1 (dispy_port=P-1) and reaches the node with nodes=[('127.0.0.1', P)].

Protocol between a script and the Rust harness (tests/support/mod.rs):
  * one line per check: "CHECK <name> ok" or "CHECK <name> FAIL <detail>";
  * informational lines: "INFO <key>=<value>" (the harness may read them);
  * a final line "RESULT ok" once the script ran to its end.
The Rust test lists the CHECK names it expects, so a silently skipped check
fails the test.  Checks never raise: a script keeps going after a failed
check so the harness shows every problem at once.
"""

import faulthandler
import os
import sys
import threading
import time

# Hard watchdog inside the client: dump every thread's stack and exit if the
# script hangs.  The harness has its own, longer, hard timeout that kills us.
_WATCHDOG = float(os.environ.get('INTEROP_CLIENT_WATCHDOG', '80'))
faulthandler.dump_traceback_later(_WATCHDOG, exit=True)
# Every bounded wait below is also capped by this deadline, so that a script
# whose node never answers still reaches its end (and prints all its CHECK
# lines) before the watchdog fires.
_DEADLINE = time.time() + max(_WATCHDOG - 15, _WATCHDOG * 0.8)

import dispy  # noqa: E402

NODE_HOST = '127.0.0.1'

# Set by the harness: 'ours' or 'reference'.  Scripts use it only to work
# around documented bugs of the reference node (each use says which), so
# that a run against the reference validates the rest of the script.
REFERENCE = os.environ.get('INTEROP_NODE_IMPL') == 'reference'
_failed = []


def port():
    return int(sys.argv[1])


def arg(i, default=None):
    return sys.argv[i] if len(sys.argv) > i else default


def _one_line(text):
    return str(text).replace('\\', '\\\\').replace('\n', '\\n')


def check(name, cond, detail=''):
    if cond:
        print('CHECK %s ok' % name, flush=True)
    else:
        _failed.append(name)
        print('CHECK %s FAIL %s' % (name, _one_line(detail)), flush=True)
    return bool(cond)


def check_eq(name, got, want):
    return check(name, got == want, 'got %r, want %r' % (got, want))


def workaround(text):
    """Announces a workaround for a reference bug (only under the reference)."""
    info('reference_workaround', text)


def info(key, value):
    print('INFO %s=%s' % (key, _one_line(value)), flush=True)


def finish():
    print('RESULT ok', flush=True)
    sys.stdout.flush()


def loglevel():
    return dispy.logger.DEBUG if os.environ.get('INTEROP_CLIENT_DEBUG') else dispy.logger.INFO


def cluster(computation, nodes=None, **kwargs):
    """A JobCluster bound to the node under test.  Never pass job_status or
    cluster_status: dispy 4.15.2 rejects them on Python 3.11 (getargspec)."""
    p = port()
    if nodes is None:
        nodes = [(NODE_HOST, p)]
    return dispy.JobCluster(computation, nodes=nodes, host=NODE_HOST, dispy_port=p - 1,
                            loglevel=loglevel(), **kwargs)


# dispy 4.15.2 / pycos 4.12.2 races: JobCluster.submit() waits for its scheduler task with
# pycos' Task.value() and returns `_job.job`. When the task has already ended before value()
# is called, pycos may return None ('task ... is not suitable for "value"'); and
# `_DispyJob_.finish()` sets `job` to None once the reply arrives. A node fast enough to run
# and answer the job before the submitting thread gets the CPU back makes submit() return
# None for a job that ran; it happened in CI with our node (bench/client.py has the same
# recovery). The job object the client made is still complete (status, result, finish
# event): `submit` below recovers it, without changing anything the client does.
_created = threading.local()
_DispyJobInit = dispy._DispyJob_.__init__


def _remember_job(self, *args, **kwargs):
    _DispyJobInit(self, *args, **kwargs)
    _created.job = self.job


dispy._DispyJob_.__init__ = _remember_job


def submit(c, *args, **kwargs):
    """c.submit(*args, **kwargs), or the job it made if the race above hid it."""
    return _submitted(c.submit, *args, **kwargs)


def submit_node(c, node, *args, **kwargs):
    """c.submit_node(node, *args, **kwargs), recovered from the same race."""
    return _submitted(c.submit_node, node, *args, **kwargs)


def _submitted(submit_call, *args, **kwargs):
    _created.job = None
    job = submit_call(*args, **kwargs)
    if job is None and _created.job is not None:
        info('client_submit_race', 'submit() returned None for a job that had already '
             'finished; using the job the client made')
        job = _created.job
    return job


def check_normal_program_job(c, arg, stdout):
    """After the probes, a plain program job still runs (check `normal_job`)."""
    again = submit(c, arg)
    ok = wait_job(again, 60)
    check('normal_job', ok and again.result == 0 and again.stdout == stdout,
          (status_name(again.status), again.result, again.stdout, again.stderr))


def opt(name, default=None):
    """The value after `name` on the command line, else `default`."""
    if name in sys.argv:
        i = sys.argv.index(name)
        if i + 1 < len(sys.argv):
            return sys.argv[i + 1]
    return default


def write_to_writable_pipes(data):
    """Job-side (pass it in `depends`): writes `data` into every pipe the job holds open for
    writing beyond fds 0-2 (its worker's stream to the daemon among them); how many."""
    import fcntl
    import os
    import stat

    written = 0
    for name in os.listdir('/proc/self/fd'):
        fd = int(name)
        if fd < 3:
            continue
        try:
            if not stat.S_ISFIFO(os.fstat(fd).st_mode):
                continue
            if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE != os.O_WRONLY:
                continue
            os.write(fd, data)
            written += 1
        except OSError:
            pass
    return written


def node_alloc(**kwargs):
    return dispy.NodeAllocate(NODE_HOST, port=port(), **kwargs)


def budget(timeout):
    """`timeout` capped by what is left of the script's time budget."""
    return max(min(timeout, _DEADLINE - time.time()), 0.05)


def wait_job(job, timeout):
    """Bounded wait for a job's final reply; True if it arrived."""
    return job.finish.wait(budget(timeout))


def wait_until(pred, timeout, step=0.05):
    deadline = time.time() + budget(timeout)
    while time.time() < deadline:
        if pred():
            return True
        time.sleep(step)
    return bool(pred())


def wait_node(c, timeout=30):
    """Wait until the cluster has the node (discovery + COMPUTE + SETUP done)."""
    def ready():
        try:
            st = c.status()
        except Exception:
            return False
        return any(n.ip_addr == NODE_HOST and n.cpus > 0 for n in st.nodes)
    return wait_until(ready, timeout, step=0.1)


def close(c, timeout=30):
    """Close bounded: returns True if all jobs were done when closing."""
    return c.close(timeout=budget(timeout), terminate=True)


def client_has_it_running(job):
    """Whether the client itself counts `job` as running.  It does so only once it has
    handled the node's ACK, which can come after the job's processes are visible on the node
    (slow machines, the VM); a cancel of a job the client still counts as Created only
    removes it on the client's side (dispy's cancel_job) and the node never hears of it."""
    return job.status in (dispy.DispyJob.Running, dispy.DispyJob.ProvisionalResult)


def status_name(s):
    names = {5: 'Created', 6: 'Running', 7: 'ProvisionalResult', 8: 'Cancelled',
             9: 'Terminated', 10: 'Abandoned', 11: 'Finished'}
    return '%s(%s)' % (names.get(s, '?'), s)
