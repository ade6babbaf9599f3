"""The benchmarks' report: each way's median and its ratio to the first way's (the baseline)."""

from __future__ import annotations

import statistics


def print_medians(title: str, timings: dict[str, list[float]], decimals: int) -> None:
    """`title`, then a line per way: its median in ms and that over the baseline's median."""
    base = statistics.median(next(iter(timings.values())))
    width = max(map(len, timings)) + 1
    print(title)
    for name, seconds in timings.items():
        median = statistics.median(seconds)
        print(f"  {name:{width}} {median * 1000:6.{decimals}f} ms  {median / base:.2f}x")
