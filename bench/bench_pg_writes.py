"""Benchmark: storing analytics history in PostgreSQL, an INSERT of many rows per statement
against one row per statement (executemany's way), in the same run on the same server.

    .venv/bin/python bench/bench_pg_writes.py [--keys 50] [--days 60] [--rounds 3]

A throw-away server is started as the tests start theirs (tests/pg_server.py). Each round
stores the same key x model x day rows (`UsageBatch.analytics`, the first `sync`'s path) into
a new schema, once each way, alternating so that a busier machine slows both. The figures
are the wall time, this process's CPU time, and the server's (its backends' CPU, read from
/proc once the session has ended): with one row per statement the server's work overlaps the
client's, so the wall time alone hides it, but on a busy machine it competes for the cores.
"""

from __future__ import annotations

import argparse
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


def store_once(server: PgServer, data: list[ActivityRow],
               row_by_row: bool) -> tuple[float, float, float]:
    url = server.create_schema()
    store = Store(connect(url))
    plan = backend.MultiRowInsert.of
    if row_by_row:
        backend.MultiRowInsert.of = lambda sql: None  # type: ignore[assignment,method-assign]
    try:
        before = server_cpu(server)
        cpu, wall = time.process_time(), time.perf_counter()
        batch = store.usage_batch(AS_OF)
        batch.analytics(data)
        batch.flush()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    finally:
        backend.MultiRowInsert.of = plan  # type: ignore[method-assign]
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
    run_dir = Path(tempfile.mkdtemp(prefix="openrouter-usage-bench-pg-"))
    run_dir.chmod(0o755)
    server = PgServer.shared(run_dir)
    results: dict[bool, list[tuple[float, float, float]]] = {True: [], False: []}
    try:
        store_once(server, data[:1000], False)  # warm up: imports, the first connection
        for _ in range(args.rounds):
            for row_by_row in (True, False):
                results[row_by_row].append(store_once(server, data, row_by_row))
    finally:
        server.close()
        PgServer.stop_shared(run_dir)

    print(f"{len(data):,} key x model x day rows ({args.keys} keys, {len(MODELS)} models, "
          f"{args.days} days), best of {args.rounds}:")
    best = {way: tuple(min(r[i] for r in results[way]) for i in range(3)) for way in results}
    for way, label in ((True, "one row per statement  "), (False, "many rows per statement")):
        wall, cpu, srv = best[way]
        print(f"  {label} {wall:6.2f} s wall, {cpu:6.2f} s client CPU, {srv:6.2f} s server "
              f"CPU, {cpu + srv:6.2f} s CPU in all")
    (old_wall, old_cpu, old_srv), (new_wall, new_cpu, new_srv) = best[True], best[False]
    print(f"  ratio: wall {new_wall / old_wall:.3f}x, CPU in all "
          f"{(new_cpu + new_srv) / (old_cpu + old_srv):.3f}x")


if __name__ == "__main__":
    main()
