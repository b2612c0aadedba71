"""stdout / stderr of function jobs come back as str, exactly.

argv: PORT
"""
import common
import dispy


def compute(kind):
    import sys
    if kind == 'lines':
        print('line one')
        print('line two', 2, 'ünïcödé €')
        sys.stderr.write('err line\n')
        print('no newline at end', end='')
        return 'lines'
    if kind == 'big':
        for i in range(2000):
            print('%05d %s' % (i, 'x' * 60))
        sys.stderr.write('e' * 10000)
        return 'big'
    return 'silent'


if __name__ == '__main__':
    c = common.cluster(compute)
    jobs = {k: common.submit(c, k) for k in ('lines', 'big', 'silent')}
    ok = all(common.wait_job(j, 60) for j in jobs.values())
    common.check('replied', ok, {k: common.status_name(j.status) for k, j in jobs.items()})
    fin = common.status_name(dispy.DispyJob.Finished)
    common.check_eq('statuses', sorted((k, common.status_name(j.status)) for k, j in jobs.items()),
                    [('big', fin), ('lines', fin), ('silent', fin)])
    j = jobs['lines']
    common.check_eq('lines_result', j.result, 'lines')
    common.check_eq('lines_stdout', j.stdout, 'line one\nline two 2 ünïcödé €\nno newline at end')
    common.check_eq('lines_stderr', j.stderr, 'err line\n')
    common.check_eq('lines_types', (type(j.stdout).__name__, type(j.stderr).__name__), ('str', 'str'))
    j = jobs['big']
    want = ''.join('%05d %s\n' % (i, 'x' * 60) for i in range(2000))
    common.check('big_stdout', j.stdout == want,
                 'len %s want %s' % (len(j.stdout or ''), len(want)))
    common.check_eq('big_stderr', j.stderr, 'e' * 10000)
    j = jobs['silent']
    common.check_eq('silent_output', (j.result, j.stdout, j.stderr, j.exception), ('silent', '', '', None))
    common.check('closed', common.close(c), 'close reported pending jobs')
    common.finish()
