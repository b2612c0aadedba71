"""A function job raising ValueError: status Terminated and the exact
traceback text the reference produces (frames of the node's own wrapper
trimmed, file "<string>", line numbers counted within the shipped code).

argv: PORT
"""
import inspect

import common
import dispy


def compute(n):
    import sys
    print('before raise', n)
    sys.stderr.write('stderr %s\n' % n)
    if n == 3:
        raise ValueError('bad value %s' % n)
    if n == 4:
        return helper(n)
    return n * 10


def helper(n):
    return 1 // (n - n)


def line_in_code(func_and_deps, needle):
    """1-based line number of `needle` in the code dispy ships for
    compute + depends (each function's source, joined by newlines, with
    compute first)."""
    code = ''
    for f in func_and_deps:
        lines = inspect.getsourcelines(f)[0]
        lines[0] = lines[0].lstrip()
        code += ''.join(lines) + '\n'
    for i, line in enumerate(code.split('\n')):
        if needle in line:
            return i + 1
    raise AssertionError('needle not found: %s' % needle)


if __name__ == '__main__':
    c = common.cluster(compute, depends=[helper])
    j1, j3, j4 = common.submit(c, 1), common.submit(c, 3), common.submit(c, 4)
    ok = all(common.wait_job(j, 60) for j in (j1, j3, j4))
    common.check('replied', ok, 'statuses %s' % [common.status_name(j.status) for j in (j1, j3, j4)])

    common.check_eq('ok_job_status', common.status_name(j1.status), common.status_name(dispy.DispyJob.Finished))
    common.check_eq('ok_job_result', j1.result, 10)
    common.check_eq('ok_job_exception', j1.exception, None)

    n = line_in_code([compute, helper], "raise ValueError")
    want = ('Traceback (most recent call last):\n'
            '  File "<string>", line %d, in compute\n'
            'ValueError: bad value 3\n' % n)
    common.check_eq('exc_status', common.status_name(j3.status), common.status_name(dispy.DispyJob.Terminated))
    common.check_eq('exc_result', j3.result, None)
    common.check_eq('exc_text', j3.exception, want)
    common.check_eq('exc_stdout_kept', j3.stdout, 'before raise 3\n')
    common.check_eq('exc_stderr_kept', j3.stderr, 'stderr 3\n')

    # exception raised in a depends function called from compute: two frames
    n1 = line_in_code([compute, helper], "return helper(n)")
    n2 = line_in_code([compute, helper], "return 1 // (n - n)")
    want4 = ('Traceback (most recent call last):\n'
             '  File "<string>", line %d, in compute\n'
             '  File "<string>", line %d, in helper\n'
             'ZeroDivisionError: integer division or modulo by zero\n' % (n1, n2))
    common.check_eq('exc_nested_status', common.status_name(j4.status),
                    common.status_name(dispy.DispyJob.Terminated))
    common.check_eq('exc_nested_text', j4.exception, want4)

    # the node is still usable after exceptions
    j5 = common.submit(c, 5)
    common.check('after_exc_replied', common.wait_job(j5, 60), common.status_name(j5.status))
    common.check_eq('after_exc_result', (common.status_name(j5.status), j5.result),
                    (common.status_name(dispy.DispyJob.Finished), 50))
    common.check('closed', common.close(c), 'close reported pending jobs')
    common.finish()
