"""A child process for tests of how deaths are reported: ``python -m tests.support.procs_child HOW``.

It writes a line to stderr without flushing (only unbuffered output keeps it), then ends as ``HOW`` says:
a signal name (``SIGILL``, ``SIGSEGV``...) kills it with that signal, a number exits with that status.
"""

import os
import signal
import sys

if __name__ == "__main__":
    how = sys.argv[1]
    sys.stderr.write(f"evaluating 64 tokens, then {how}\n")
    if how.isdigit():
        sys.exit(int(how))
    os.kill(os.getpid(), getattr(signal, how))
