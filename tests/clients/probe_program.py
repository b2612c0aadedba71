"""Confinement probe (issue 4) as a program computation: a shell script
that writes inside its directory (allowed) and outside it (refused by
Landlock: the shell prints "Permission denied" on stderr).

argv: PORT TOKEN TARGET...
  Each TARGET is a path outside the computation's directory (absolute, or
  relative to it such as ../escape-TOKEN); the script tries `echo > TARGET`
  for each one.

CHECKs: replied, status (Finished), exit_code (0: the script goes on after
a refused write), inside (its own file was written), one
denied_<i> per target (stderr has a line naming the target with
"Permission denied"), normal_job (a second, harmless run of the same
program on the same node), closed.
"""
import os
import sys

import common
import dispy

PROG = r'''#!/bin/sh
token="$1"; shift
if [ "$token" = normal ]; then echo "normal run"; exit 0; fi
echo inside > "inside-$token.txt" && echo "inside ok: $(cat inside-$token.txt)"
for target in "$@"; do
    if echo escaped > "$target"; then echo "WROTE $target"; fi
done
exit 0
'''


def main():
    token = common.arg(2)
    targets = sys.argv[3:]
    with open('probe_prog.sh', 'w') as fd:
        fd.write(PROG)
    os.chmod('probe_prog.sh', 0o755)
    c = common.cluster(os.path.abspath('probe_prog.sh'))
    job = common.submit(c, token, *targets)
    replied = common.wait_job(job, 60)
    common.check('replied', replied, common.status_name(job.status))
    common.check_eq('status', common.status_name(job.status),
                    common.status_name(dispy.DispyJob.Finished))
    stdout = (job.stdout or b'').decode(errors='replace')
    stderr = (job.stderr or b'').decode(errors='replace')
    common.info('stdout', stdout)
    common.info('stderr', stderr)
    common.check_eq('exit_code', job.result, 0)
    common.check('inside', 'inside ok: inside' in stdout, 'stdout %r' % stdout)
    lines = stderr.splitlines()
    for i, target in enumerate(targets):
        hit = [ln for ln in lines if target in ln and 'Permission denied' in ln]
        common.check('denied_%d' % i, hit and 'WROTE %s' % target not in stdout,
                     'target %s: stdout %r stderr %r' % (target, stdout, stderr))
    common.check_normal_program_job(c, 'normal', b'normal run\n')
    common.check('closed', common.close(c), 'close reported pending jobs')
    common.finish()


if __name__ == '__main__':
    main()
