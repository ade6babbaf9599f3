"""Benchmark: storing history in PostgreSQL, many rows per statement against one row per
statement (executemany's way), in the same run on the same server.

    .venv/bin/python bench/bench_pg_writes.py [--keys 50] [--days 60] [--rounds 3]

A throw-away server is started as the tests start theirs (tests/pg_server.py). Two scenarios,
each round once each way, alternating so that a busier machine slows both:

- a first sync: key x model x day rows from the analytics API (`UsageBatch.analytics`:
  INSERT ... ON CONFLICT DO UPDATE) into a new schema;
- a daily sync: every key's last 30 days from /activity (`UsageBatch.key_activity`) stored
  again over the same days, one row in ten changed (INSERT ... DO NOTHING, then UPDATE of
  the changed rows, the days' coverage, and DELETE of analytics rows /activity covers).
 The figures
are the wall time, this process's CPU time, and the server's (its backends' CPU, read from
/proc once the session has ended): with one row per statement the server's work overlaps the
client's, so the wall time alone hides it, but on a busy machine it competes for the cores.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import os
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bot.models import ActivityRow  # noqa: E402
from bot.store import Store, backend, connect  # noqa: E402
from tests.pg_server import PgServer  # noqa: E402

MODELS = [f"vendor/model-{i}" for i in range(9)]
AS_OF = dt.datetime(2026, 11, 26, 12, tzinfo=dt.UTC)


def rows(keys: int, days: int) -> list[ActivityRow]:
    first = AS_OF.date() - dt.timedelta(days=days)
    return [
        ActivityRow(date=first + dt.timedelta(days=d), model=m, model_permaslug=m,
                    endpoint_id="", provider="", usage=Decimal(f"0.{k:03d}{d:03d}1"),
                    byok_usage=Decimal(0), requests=k + d, prompt_tokens=1000 + k,
                    completion_tokens=200 + d, reasoning_tokens=0, key_hash=f"{k:064x}")
        for d in range(days) for k in range(keys) for m in MODELS
    ]


def server_cpu(server: PgServer) -> float:
    """CPU seconds the server's ended sessions have used (the postmaster reaps them)."""
    pid = (server.data / "postmaster.pid").read_text().split()[0]
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")


PLANS = (backend.MultiRowInsert, backend.MultiRowDelete, backend.MultiRowUpdate)


def first_sync(store: Store, data: list[ActivityRow]) -> None:
    batch = store.usage_batch(AS_OF)
    batch.analytics(data)
    batch.flush()


def daily_sync(store: Store, data: list[ActivityRow]) -> None:
    batch = store.usage_batch(AS_OF)
    by_key: dict[str, list[ActivityRow]] = {}
    for row in data:
        by_key.setdefault(row.key_hash, []).append(row)
    first, last = min(r.date for r in data), max(r.date for r in data)
    for key_hash, rows in by_key.items():
        batch.key_activity(key_hash, rows, first, last)
    batch.flush()


def changed(data: list[ActivityRow]) -> list[ActivityRow]:
    return [dataclasses.replace(r, requests=r.requests + 1) if i % 10 == 0 else r
            for i, r in enumerate(data)]


def store_once(server: PgServer, scenario: str, data: list[ActivityRow],
               row_by_row: bool) -> tuple[float, float, float]:
    url = server.create_schema()
    store = Store(connect(url))
    if scenario == "daily":
        daily_sync(store, data)  # the days as the day before stored them (not measured)
        data = changed(data)
    plans = [plan.of for plan in PLANS]
    if row_by_row:
        for plan in PLANS:
            plan.of = lambda sql: None  # type: ignore[assignment,method-assign]
    try:
        before = server_cpu(server)
        cpu, wall = time.process_time(), time.perf_counter()
        (first_sync if scenario == "first" else daily_sync)(store, data)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    finally:
        for plan, of in zip(PLANS, plans, strict=True):
            plan.of = of  # type: ignore[method-assign]
        store.conn.close()
    time.sleep(0.2)  # the session's backend exits and is reaped
    return wall, cpu, server_cpu(server) - before


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keys", type=int, default=50)
    parser.add_argument("--days", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    data = rows(args.keys, args.days)
    recent = [r for r in data if r.date > AS_OF.date() - dt.timedelta(days=31)]
    run_dir = Path(tempfile.mkdtemp(prefix="openrouter-usage-bench-pg-"))
    run_dir.chmod(0o755)
    server = PgServer.shared(run_dir)
    scenarios = {"first": data, "daily": recent}
    results: dict[tuple[str, bool], list[tuple[float, float, float]]] = {
        (s, w): [] for s in scenarios for w in (True, False)}
    try:
        store_once(server, "first", data[:1000], False)  # warm up: imports, a first connection
        for _ in range(args.rounds):
            for scenario, rows_of in scenarios.items():
                for row_by_row in (True, False):
                    results[(scenario, row_by_row)].append(
                        store_once(server, scenario, rows_of, row_by_row))
    finally:
        server.close()
        PgServer.stop_shared(run_dir)

    titles = {"first": f"first sync: {len(data):,} analytics rows ({args.keys} keys, "
                       f"{len(MODELS)} models, {args.days} days)",
              "daily": f"daily sync: {len(recent):,} /activity rows stored again, "
                       "one in ten changed"}
    for scenario, title in titles.items():
        print(f"{title}, best of {args.rounds}:")
        best = {way: tuple(min(r[i] for r in results[(scenario, way)]) for i in range(3))
                for way in (True, False)}
        for way, label in ((True, "one row per statement  "),
                           (False, "many rows per statement")):
            wall, cpu, srv = best[way]
            print(f"  {label} {wall:6.2f} s wall, {cpu:6.2f} s client CPU, {srv:6.2f} s "
                  f"server CPU, {cpu + srv:6.2f} s CPU in all")
        (old_wall, old_cpu, old_srv), (new_wall, new_cpu, new_srv) = best[True], best[False]
        print(f"  ratio: wall {new_wall / old_wall:.3f}x, CPU in all "
              f"{(new_cpu + new_srv) / (old_cpu + old_srv):.3f}x")


if __name__ == "__main__":
    main()
