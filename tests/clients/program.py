"""Program computation: a shell script (sent as a depends file with its exec
bit), run with the job's arguments in the computation's directory; result =
exit code (status Finished even for a non-zero exit), stdout/stderr bytes.

argv: PORT
"""
import os

import common
import dispy

PROG = r'''#!/bin/sh
echo "prog args: $*"
echo "argc=$#"
for a in "$@"; do echo "arg=<$a>"; done
echo "to stderr" 1>&2
[ -x ./prog.sh ] && echo "prog executable in cwd"
cat data.txt
exit "$1"
'''


if __name__ == '__main__':
    with open('prog.sh', 'w') as fd:
        fd.write(PROG)
    os.chmod('prog.sh', 0o755)
    with open('data.txt', 'w') as fd:
        fd.write('data for prog\n')
    c = common.cluster(os.path.abspath('prog.sh'), depends=['data.txt'])
    j3 = common.submit(c, 3, 'a b', 'c')
    if common.REFERENCE:
        # the reference starts programs after a process-wide os.chdir() in a
        # thread, racing with other jobs' chdir(): a program may run in the
        # wrong directory when two start at once (reference bug)
        common.workaround('program jobs one at a time')
        common.wait_job(j3, 60)
    j0 = common.submit(c, 0)
    ok = all(common.wait_job(j, 60) for j in (j3, j0))
    common.check('replied', ok, [common.status_name(j.status) for j in (j3, j0)])
    fin = common.status_name(dispy.DispyJob.Finished)
    common.check_eq('status', [common.status_name(j.status) for j in (j3, j0)], [fin, fin])
    common.check_eq('exit_code_3', j3.result, 3)
    common.check_eq('stdout_3', j3.stdout,
                    b'prog args: 3 a b c\nargc=3\narg=<3>\narg=<a b>\narg=<c>\n'
                    b'prog executable in cwd\ndata for prog\n')
    common.check_eq('stderr_3', j3.stderr, b'to stderr\n')
    common.check_eq('exception_3', j3.exception, None)
    common.check_eq('exit_code_0', j0.result, 0)
    common.check_eq('stdout_0', j0.stdout,
                    b'prog args: 0\nargc=1\narg=<0>\nprog executable in cwd\ndata for prog\n')
    common.check('closed', common.close(c), 'close reported pending jobs')
    common.finish()
