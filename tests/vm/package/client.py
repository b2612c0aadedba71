"""The dispy client of tests/vm/package/guest-test.sh (runs inside the VM, with the stock
dispy 4.15.2 client and tests/clients/common.py; the node is the installed package's, socket
activated on 127.0.0.1:PORT).

argv: PORT jobs UID MEMORY_MAX PIDS_MAX
    a function job and a program job; the function job reports its cgroup, the cgroup's
    memory.max and pids.max and its uid, which must be the limits of the configuration and
    the dispynode account's uid. CHECK lines as in tests/clients/common.py.
argv: PORT long
    a program job that leaves a setsid'd `sleep` behind and sleeps itself; prints
    "SUBMITTED" and waits (the guest script stops the service under it and kills us).
"""
import os
import sys
import time

import common
import dispy


def compute(n):
    import os
    with open('/proc/self/cgroup') as f:
        cgroup = f.read().strip()
    path = cgroup.split('::', 1)[1] if '::' in cgroup else ''

    def limit(name):
        try:
            with open('/sys/fs/cgroup' + path + '/' + name) as f:
                return f.read().strip()
        except OSError as e:
            return 'ERROR %s' % e
    return (n * n, cgroup, limit('memory.max'), limit('pids.max'), os.getuid())


PROGRAM = r'''#!/bin/sh
echo "program-ok $1"
cat /proc/self/cgroup
'''

LONG = r'''#!/bin/sh
setsid sleep 600 &
sleep 600
'''


def write_program(name, text):
    with open(name, 'w') as f:
        f.write(text)
    os.chmod(name, 0o755)
    return os.path.abspath(name)


def jobs():
    uid, memory_max, pids_max = int(sys.argv[3]), sys.argv[4], sys.argv[5]
    c = common.cluster(compute)
    job = common.submit(c, 7)
    common.check('function_replied', common.wait_job(job, 240), common.status_name(job.status))
    common.check_eq('function_finished', common.status_name(job.status),
                    common.status_name(dispy.DispyJob.Finished))
    result = job.result if isinstance(job.result, tuple) else (None, '', '', '', None)
    common.info('function_result', result)
    common.check_eq('function_value', result[0], 49)
    common.check('function_in_service_cgroup', '/dispynode.service/' in result[1], result[1])
    common.check_eq('function_memory_max', result[2], memory_max)
    common.check_eq('function_pids_max', result[3], pids_max)
    common.check_eq('function_uid', result[4], uid)
    common.check('function_closed', common.close(c), 'close reported pending jobs')

    c = common.cluster(write_program('package_prog.sh', PROGRAM))
    job = common.submit(c, 'hello')
    common.check('program_replied', common.wait_job(job, 240), common.status_name(job.status))
    stdout = (job.stdout or b'').decode(errors='replace')
    common.info('program_stdout', stdout)
    common.check_eq('program_exit_code', job.result, 0)
    common.check('program_output', 'program-ok hello' in stdout, stdout)
    common.check('program_in_service_cgroup', '/dispynode.service/' in stdout, stdout)
    common.check('program_closed', common.close(c), 'close reported pending jobs')
    common.finish()


def long():
    c = common.cluster(write_program('package_long.sh', LONG))
    common.submit(c)
    print('SUBMITTED', flush=True)
    time.sleep(3600)


if __name__ == '__main__':
    {'jobs': jobs, 'long': long}[sys.argv[2]]()
