"""A program job's output, in two corner cases:
  * held: the script starts a process that leaves its group (setsid) and keeps the script's
    stdout open, prints two lines and exits 3. The node stops reading a short grace time
    after the script's exit; the two lines must still come back (they used to be dropped);
  * big: the script writes more than the node keeps of a stream (64 MiB), then a last line.
    The client gets the first 64 MiB, and stderr says the rest was dropped and how much.

argv: PORT MARK   (MARK: the held process's `sleep` argument, unique to the test)
"""
import os
import subprocess

import common
import dispy

PROG = r'''#!/bin/sh
case "$1" in
held) echo "line before"; setsid sleep "$2" & sleep 0.2; echo "line after"; exit 3 ;;
big) head -c 68157440 /dev/zero | tr '\0' 'o'; echo "END-OF-OUTPUT" ;;
esac
'''
KEPT = 64 << 20

if __name__ == '__main__':
    mark = common.arg(2, '37.5')
    with open('prog.sh', 'w') as fd:
        fd.write(PROG)
    os.chmod('prog.sh', 0o755)
    c = common.cluster(os.path.abspath('prog.sh'))
    held = common.submit(c, 'held', mark)
    ok = common.wait_job(held, 30)
    common.check_eq('held_output', ok and (common.status_name(held.status), held.result,
                                           held.stdout),
                    (common.status_name(dispy.DispyJob.Finished), 3,
                     b'line before\nline after\n'))
    subprocess.run(['pkill', '-f', 'sleep %s' % mark])
    big = common.submit(c, 'big')
    ok = common.wait_job(big, 60)
    out = big.stdout if isinstance(big.stdout, bytes) else b''
    common.check('big_kept', ok and len(out) == KEPT and out.count(b'o') == KEPT,
                 (common.status_name(big.status), len(out), out[-20:]))
    note = b'dispynode: stdout truncated: the first 64 MiB kept, %d more bytes dropped' % (
        68157440 + len(b'END-OF-OUTPUT\n') - KEPT)
    common.check('big_noted', isinstance(big.stderr, bytes) and note in big.stderr,
                 (big.stderr, note))
    common.check('closed', common.close(c), 'close reported pending jobs')
    common.finish()
