"""Start-up of the dispynode Python worker: ``python3 -c <this>``, with the worker's source
first on stdin (``u32 BE length | UTF-8 source``), then the worker's message stream.

Compiling the worker's 1300 lines in the worker itself leaves the parser's
garbage, about 3.5 MiB, in its heap, pinned there page by page by the code
objects allocated in between (``malloc_trim`` releases almost none of it).
Every job process is forked from a copy of the worker: the fork copies the
page table entries of all those pages and the job's exit tears them down
again, about 0.15 ms per job.  So a short-lived child compiles the source and
sends the code back in ``marshal``; the worker's heap then only holds the code.
Where that fails (no fork), the worker compiles the source itself.

The source does not come in argv: the interpreter keeps several copies of its arguments for
its lifetime (``sys.orig_argv`` and its configuration's wide-character lists, 4 bytes a
character), 1.3 MiB of heap for this source, forked and torn down with every job process.
"""

import marshal
import os
import sys


def _compiled_in_child(source):
    """The code object of ``source`` compiled in a child process; None if that fails."""
    try:
        read_fd, write_fd = os.pipe()
    except OSError:
        return None
    try:
        pid = os.fork()
    except OSError:
        os.close(read_fd)
        os.close(write_fd)
        return None
    if pid == 0:
        status = 1
        try:
            os.close(read_fd)
            data = memoryview(marshal.dumps(compile(source, '<string>', 'exec')))
            while data:
                data = data[os.write(write_fd, data):]
            status = 0
        finally:
            os._exit(status)
    os.close(write_fd)
    chunks = []
    while True:
        chunk = os.read(read_fd, 1 << 20)
        if not chunk:
            break
        chunks.append(chunk)
    os.close(read_fd)
    _, status = os.waitpid(pid, 0)
    return marshal.loads(b''.join(chunks)) if status == 0 else None


def _source_from_stdin():
    """The source that precedes the message stream on fd 0, in one buffer, read without
    buffering (what follows it is the worker's)."""
    head = bytearray(4)
    _read_into(head)
    source = bytearray(int.from_bytes(head, 'big'))
    _read_into(source)
    return source


def _read_into(buf):
    view = memoryview(buf)
    while view:
        n = os.readv(0, [view])
        if not n:
            sys.exit('dispynode worker: stdin ended before the worker source')
        view = view[n:]


def _compiled(source):
    return _compiled_in_child(source) or compile(source, '<string>', 'exec')


# The daemon starts the worker with LD_BIND_NOW (src/node/worker.rs, worker_env): the loader has
# bound every symbol by now; what the jobs start must not inherit it.
os.environ.pop('LD_BIND_NOW', None)
exec(_compiled(_source_from_stdin()))  # the source is not kept: it would be in every job's heap
