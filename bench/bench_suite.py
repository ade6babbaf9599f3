"""Benchmark: the test suite's wall time on this machine, against the serial run in the same
script (so a slower or busier machine moves both figures, not the ratio).

    .venv/bin/python bench/bench_suite.py            # serial, then the workers `make test` uses
    .venv/bin/python bench/bench_suite.py -n 2 -n 4  # serial, then each worker count

Each run is `pytest -p no:cacheprovider` in a subprocess; the figures are its wall time and
the CPU time of the whole machine while it ran (/proc/stat: the PostgreSQL test server and
every subprocess included), so "cpu / wall" shows how busy the cores were kept.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def machine_busy() -> float:
    """Seconds of CPU the whole machine has spent busy since boot (all cores)."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def run(workers: str, extra: list[str]) -> tuple[float, float, str]:
    argv = [str(ROOT / ".venv" / "bin" / "pytest"), "-p", "no:cacheprovider", "-n", workers,
            *extra]
    busy, started = machine_busy(), time.perf_counter()
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True)
    wall, cpu = time.perf_counter() - started, machine_busy() - busy
    summary = (done.stdout.strip().splitlines() or done.stderr.strip().splitlines()
               or ["(no output)"])[-1]
    if done.returncode != 0:
        sys.exit(f"pytest -n {workers} failed: {summary}")
    return wall, cpu, summary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", dest="workers", action="append",
                        help="worker count to measure (repeatable; default: 2 x cores)")
    parser.add_argument("pytest_args", nargs="*", help="passed to pytest (e.g. -m clock)")
    args = parser.parse_args()
    workers = args.workers or [str(2 * (os.cpu_count() or 1) + 1)]
    print(f"{os.cpu_count()} cores; pytest {' '.join(args.pytest_args) or '(whole suite)'}")
    base_wall, base_cpu, summary = run("0", args.pytest_args)
    print(f"  serial      {base_wall:6.1f} s wall  {base_cpu:6.1f} s cpu   {summary}")
    for n in workers:
        wall, cpu, summary = run(n, args.pytest_args)
        print(f"  -n {n:<8} {wall:6.1f} s wall  {cpu:6.1f} s cpu   {wall / base_wall:.2f}x "
              f"serial   {summary}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
