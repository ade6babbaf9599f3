"""Compiled templates kept between runs: a new process's first use of every bundled template,
with Jinja's bytecode cache emptied before each run (the baseline, as every run was before)
and with it filled by the run before.

Each run is a fresh `python` that builds the renderer's environment and loads every bundled
template; its CPU time (user + system, from `os.wait4`) includes the interpreter's start and
the imports, which both cases share.

    .venv/bin/python bench/bench_templates.py [--runs N]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

LOAD_ALL = """
from bot.render.messages import Renderer, _template, bundled_templates_dir
env = Renderer().env
root = bundled_templates_dir()
for path in sorted(root.rglob("*.j2")):
    _template(env, path.relative_to(root).as_posix())
"""


def cpu_seconds(env: dict[str, str]) -> float:
    proc = subprocess.Popen([sys.executable, "-c", LOAD_ALL], env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit("the template run failed")
    return usage.ru_utime + usage.ru_stime


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    temp = Path(tempfile.mkdtemp(prefix="bench-templates-"))
    env = {**os.environ, "TMPDIR": str(temp)}  # Jinja's cache folder goes under it
    try:
        cold, warm = [], []
        for _ in range(args.runs):  # alternated, so that a slower minute hits both
            for entry in temp.iterdir():
                shutil.rmtree(entry)
            cold.append(cpu_seconds(env))
            warm.append(cpu_seconds(env))
        c, w = statistics.median(cold), statistics.median(warm)
        print(f"every bundled template in a new process, median of {args.runs} (CPU):")
        print(f"  compiled (cache empty, the baseline)  {c * 1000:7.1f} ms")
        print(f"  loaded from the cache                 {w * 1000:7.1f} ms  ratio {w / c:.2f}")
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
