"""Drawing the e-mail's chart: its bars as one collection of rectangles (now) against a patch
per bar (`Axes.bar`, the baseline), in the same process, on the same series; both draw the
whole chart (figure, ticks, layout, PNG) and give the same bytes.

    .venv/bin/python bench/bench_chart.py [--days N] [--runs N]
"""

from __future__ import annotations

import argparse
import datetime as dt
import time
from typing import Any

from medians import print_medians

from bot.render import chart


def patch_bars(ax: Any, values: Any, colours: Any) -> None:
    ax.bar(range(len(values)), values, color=colours, width=chart.BAR_WIDTH, zorder=2)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=28)
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    start = dt.date(2026, 10, 1)
    days = tuple(start + dt.timedelta(days=i) for i in range(args.days))
    draw = chart._drawn.__wrapped__
    collection = chart._bars
    timings: dict[str, list[float]] = {"baseline: a patch per bar": [], "one collection": []}
    for run in range(args.runs + 1):  # the first run of each loads fonts: not counted
        values = tuple(float((i * 37 + run) % 50) + 0.5 for i in range(args.days))
        pngs = []
        for name, bars in zip(timings, (patch_bars, collection), strict=True):
            chart._bars = bars  # type: ignore[assignment]
            began = time.process_time()
            pngs.append(draw(days, values, "Spend by day", days[-7]))
            if run:
                timings[name].append(time.process_time() - began)
        chart._bars = collection  # type: ignore[assignment]
        assert pngs[0] == pngs[1], "the two ways gave different PNGs"
    print_medians(f"chart of {args.days} days, median CPU of {args.runs} draws (same PNG bytes):",
                  timings, 1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
