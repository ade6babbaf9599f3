"""Run a command and report its own peak RSS: a small parent, so the figure is the command's.

On Linux a child's ru_maxrss starts at the high-water mark of the process it was forked
from, so a benchmark that holds a big fake in memory cannot measure its CLI child directly.
This script is started by the benchmark, forks the command from its own small process, and
prints one JSON line to stderr: {"rc", "seconds", "maxrss_mb"}. The command's stdout passes
through.

    python bench/measure.py -- openrouter-usage report --json --by-key
"""

from __future__ import annotations

import json
import os
import sys
import time


def main() -> int:
    argv = sys.argv[sys.argv.index("--") + 1 :]
    started = time.perf_counter()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child becomes the command
        try:
            os.execvp(argv[0], argv)
        finally:
            os._exit(127)
    _, status, usage = os.wait4(pid, 0)
    seconds = time.perf_counter() - started
    rc = os.waitstatus_to_exitcode(status)
    report = {"rc": rc, "seconds": seconds, "maxrss_mb": usage.ru_maxrss / 1024}
    sys.stderr.write(json.dumps(report) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
