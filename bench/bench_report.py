"""Benchmark: `report --json --by-key` against the one-request-after-another baseline.

Both run in this script against the same local fake OpenRouter (tests/fake_openrouter.py),
which adds a fixed latency to every request. The baseline does what the original one-file
script did (urllib, one request at a time), extended to the same data: credits, activity,
every page of keys, and each key's activity. Ours is the real CLI in a subprocess, start-up
included. Prints wall times, the ratio, and the CLI's peak memory (max RSS).

    .venv/bin/python bench/bench_report.py            # both scenarios + start-up
    .venv/bin/python bench/bench_report.py --quick    # smaller, for a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from decimal import Decimal
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.fake_openrouter import (  # noqa: E402
    MANAGEMENT_KEY,
    FakeOpenRouter,
    merge_rows,
    running,
)

MODELS = [
    ("openai/gpt-4o", "OpenAI", "ep-1", 0.0123),
    ("anthropic/claude-sonnet-4", "Anthropic", "ep-2", 0.0211),
    ("google/gemini-2.5-flash", "Google", "ep-3", 0.0017),
]


def make_org(n_keys: int, days: int = 30) -> dict[str, Any]:
    """`n_keys` keys (every 10th disabled), each using two models on most days."""
    import datetime as dt

    last = dt.datetime.now(dt.UTC).date() - dt.timedelta(days=1)
    keys, key_activity = [], {}
    for i in range(n_keys):
        h = f"{i:064x}"
        rows = []
        for back in range(days):
            day = last - dt.timedelta(days=back)
            for m, (model, provider, ep, price) in enumerate(MODELS):
                if (i + m + back) % 3 == 0:
                    continue
                reqs = 1 + (i * 7 + back * 3 + m) % 50
                rows.append({
                    "date": f"{day} 00:00:00" if back % 2 else str(day), "model": model,
                    "model_permaslug": model, "endpoint_id": ep, "provider_name": provider,
                    "usage": float(Decimal(str(price)) * reqs), "byok_usage_inference": 0,
                    "requests": reqs, "prompt_tokens": reqs * 900, "completion_tokens": reqs * 200,
                    "reasoning_tokens": None,
                })
        key_activity[h] = rows
        keys.append({"hash": h, "name": f"key-{i}", "label": "", "disabled": i % 10 == 9,
                     "limit": None, "limit_remaining": None, "usage": 1.0, "usage_daily": 0.1})
    return {"credits": {"total_credits": 1000, "total_usage": 400.5},
            "activity": merge_rows(key_activity), "key_activity": key_activity, "keys": keys}


def baseline(base_url: str) -> dict[str, Any]:
    """One request after another, as the original script did, for the same data."""

    def get(path: str) -> Any:
        req = urllib.request.Request(base_url + path,
                                     headers={"Authorization": f"Bearer {MANAGEMENT_KEY}"})
        with urllib.request.urlopen(req, timeout=60) as resp:
            return json.loads(resp.read(), parse_float=Decimal)["data"]

    credits = get("/credits")
    activity = get("/activity")
    keys, offset = [], 0
    while True:
        page = get(f"/keys?include_disabled=true&offset={offset}")
        if not page:
            break
        keys.extend(page)
        offset += len(page)
    by_key = {}
    for k in keys:
        rows = get(f"/activity?api_key_hash={k['hash']}")
        by_key[k["hash"]] = sum((Decimal(str(r["usage"] or 0)) for r in rows), Decimal(0))
    total = sum((Decimal(str(r["usage"] or 0)) for r in activity), Decimal(0))
    return {"credits": credits, "total": total, "by_key": by_key}


def run_cli(base_url: str, state: str) -> tuple[float, float, dict[str, Any]]:
    """Wall seconds, peak RSS in MB, and the parsed JSON of the real CLI."""
    env = dict(os.environ, OPENROUTER_MANAGEMENT_KEY=MANAGEMENT_KEY,
               OPENROUTER_BASE_URL=base_url, XDG_STATE_HOME=state)
    env.pop("OPENROUTER_USAGE_CONFIG", None)
    exe = str(Path(sys.executable).parent / "openrouter-usage")
    started = time.perf_counter()
    proc = subprocess.Popen([exe, "report", "--json", "--by-key"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env, cwd=state)
    assert proc.stdout is not None and proc.stderr is not None
    out = proc.stdout.read()  # stderr stays small: no progress bar on a pipe
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)  # this child's own peak RSS
    proc.returncode = os.waitstatus_to_exitcode(status)
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"CLI failed: {err.decode()}")
    return elapsed, usage.ru_maxrss / 1024, json.loads(out)


def scenario(n_keys: int, latency: float, limit: float | None,
             mem_limit: float | None) -> bool:
    fake = FakeOpenRouter(make_org(n_keys))
    fake.latency = latency
    fake.page_size = 100
    with running(fake), tempfile.TemporaryDirectory() as state:
        t0 = time.perf_counter()
        base = baseline(fake.base_url)
        t_base = time.perf_counter() - t0
        t_cli, rss, doc = run_cli(fake.base_url, state)
    # the two must agree on the figures before their times mean anything
    assert abs(Decimal(str(doc["totals"]["usage"])) - base["total"]) < Decimal("1e-6")
    assert len(doc["by_key"]) == sum(1 for v in base["by_key"].values() if v)
    ratio = t_cli / t_base
    ok = (limit is None or ratio <= limit) and (mem_limit is None or rss < mem_limit)
    target = f"target <= {limit}" if limit is not None else "no target: smoke run"
    print(f"{n_keys:4d} keys @ {latency * 1000:3.0f} ms: sequential {t_base:6.2f}s, "
          f"openrouter-usage {t_cli:5.2f}s, ratio {ratio:.2f} ({target}), "
          f"peak RSS {rss:5.1f} MB{'' if mem_limit is None else f' (target < {mem_limit:.0f})'}"
          f"  {'OK' if ok else 'MISSED'}")
    return ok


def startup(runs: int = 15) -> bool:
    exe = str(Path(sys.executable).parent / "openrouter-usage")

    def timed(cmd: list[str]) -> float:
        samples = []
        for _ in range(runs):
            t0 = time.perf_counter()
            subprocess.run(cmd, stdout=subprocess.DEVNULL, check=True)
            samples.append(time.perf_counter() - t0)
        return statistics.median(samples)

    bare = timed([sys.executable, "-c", "pass"])
    cli = timed([exe, "--help"])
    extra = (cli - bare) * 1000
    ok = extra <= 250
    print(f"start-up: python -c pass {bare * 1000:.0f} ms, openrouter-usage --help "
          f"{cli * 1000:.0f} ms, +{extra:.0f} ms (target <= 250 ms)  {'OK' if ok else 'MISSED'}")
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller scenarios")
    args = parser.parse_args()
    results = []
    if args.quick:
        results.append(scenario(14, 0.05, None, None))
    else:
        results.append(scenario(14, 0.25, 0.45, None))
        results.append(scenario(560, 0.05, 0.25, 200.0))
    results.append(startup(5 if args.quick else 15))
    return 0 if all(results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
