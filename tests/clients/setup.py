"""setup / cleanup functions with setup_args given through NodeAllocate.

setup(base, token) sets globals and writes a file in the computation's
directory that the jobs read; cleanup(base, token) only logs (it writes
nothing): through dispynode_logger when the node provides it, else to
stderr.  The harness looks for "INTEROP_CLEANUP_RAN <token>" in the node's
log after the client has closed.

argv: PORT TOKEN
"""
import common
import dispy


def setup(base, token):
    global node_base, node_token
    node_base = base
    node_token = token
    with open('setup_file.txt', 'w') as fd:
        fd.write('written by setup %s\n' % token)
    return 0


def cleanup(base, token):
    msg = 'INTEROP_CLEANUP_RAN %s base=%s' % (token, base)
    try:
        dispynode_logger.info(msg)
    except NameError:
        import sys
        sys.stderr.write(msg + '\n')
        sys.stderr.flush()


def compute(n):
    import os
    with open('setup_file.txt') as fd:
        setup_text = fd.read()
    return (node_base * n, node_token, setup_text, os.getcwd())


if __name__ == '__main__':
    token = common.arg(2, 'tok')
    c = common.cluster(compute, nodes=[common.node_alloc(setup_args=(10, token))],
                       depends=[], setup=setup, cleanup=cleanup)
    jobs = [common.submit(c, i) for i in (1, 2, 3)]
    ok = all(common.wait_job(j, 60) for j in jobs)
    common.check('replied', ok, [common.status_name(j.status) for j in jobs])
    fin = common.status_name(dispy.DispyJob.Finished)
    common.check_eq('status', [(common.status_name(j.status), j.exception) for j in jobs], [(fin, None)] * 3)
    res = [j.result if isinstance(j.result, tuple) else (None, None, None, None) for j in jobs]
    common.check_eq('setup_args_global', [r[0] for r in res], [10, 20, 30])
    common.check_eq('setup_token_global', [r[1] for r in res], [token] * 3)
    common.check_eq('setup_file', [r[2] for r in res], ['written by setup %s\n' % token] * 3)
    common.info('dest_dir', res[0][3])
    common.check('closed', common.close(c), 'close reported pending jobs')
    common.finish()
