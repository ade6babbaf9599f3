"""Benchmark: memory and speed at scale, against the local fake OpenRouter with latency.

An org of N keys (two workspaces, two keys sharing a name), 12 model endpoints (9 models)
per key every day, a year of data behind the analytics API. Each figure is the real CLI in a
subprocess, start-up included; its peak RSS is measured by bench/measure.py (a small parent,
so the number is the CLI's own). Scenarios:

- `report --json --by-key` (the /activity path) against the sequential way (the original
  script's: one request after another, urllib) in the same run: ratio target <= 0.15;
- a first `sync` that fills a year of history from the analytics API: target < 60 s;
- `report --by-key --from` a year back from that history: target < 5 s;
- peak RSS < 100 MB for each, at 560 keys and at 5,600 keys; the history database's size
  per key-year.

    .venv/bin/python bench/bench_history.py             # 560 keys, then 5,600 keys
    .venv/bin/python bench/bench_history.py --keys 560  # one size
    .venv/bin/python bench/bench_history.py --quick     # 40 keys, a smoke run
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.fake_openrouter import MANAGEMENT_KEY, FakeOpenRouter, running  # noqa: E402

# model, permaslug, endpoint, provider, price per request in micro-dollars
ENDPOINTS = [
    ("openai/gpt-4o", "openai/gpt-4o-2024-08-06", "ep-01", "OpenAI", 12_345),
    ("openai/gpt-4o", "openai/gpt-4o-2024-08-06", "ep-02", "Azure", 12_345),
    ("anthropic/claude-sonnet-4", "anthropic/claude-4-sonnet-20250522", "ep-03", "Anthropic",
     21_001),
    ("anthropic/claude-sonnet-4", "anthropic/claude-4-sonnet-20250522", "ep-04",
     "Amazon Bedrock", 21_001),
    ("google/gemini-2.5-flash", "google/gemini-2.5-flash", "ep-05", "Google", 1_701),
    ("google/gemini-2.5-flash", "google/gemini-2.5-flash", "ep-06", "Google Vertex", 1_701),
    ("deepseek/deepseek-r1", "deepseek/deepseek-r1", "ep-07", "DeepSeek", 3_301),
    ("meta-llama/llama-3.3-70b", "meta-llama/llama-3.3-70b", "ep-08", "Together", 901),
    ("mistralai/mistral-small", "mistralai/mistral-small", "ep-09", "Mistral", 301),
    ("qwen/qwen3-235b", "qwen/qwen3-235b", "ep-10", "Alibaba", 2_201),
    ("x-ai/grok-4", "x-ai/grok-4", "ep-11", "xAI", 30_003),
    ("moonshotai/kimi-k2", "moonshotai/kimi-k2", "ep-12", "Moonshot", 5_501),
]
WORKSPACES = [
    {"id": "0df9e665-d932-5740-b2c7-b52af166bc11", "name": "Default", "slug": "default"},
    {"id": "6a1f0c2e-0000-4000-8000-00000000c001", "name": "Contractors", "slug": "contr"},
]
LATENCY = 0.05
DAY = dt.timedelta(days=1)


def requests_of(key: int, back: int, endpoint: int) -> int:
    return 1 + (key * 7 + back * 3 + endpoint * 5) % 50


class BenchOpenRouter(FakeOpenRouter):
    """The fake with an org computed from a formula, not stored: any number of keys and days
    in little memory."""

    def __init__(self, n_keys: int, today: dt.date) -> None:
        self.n_keys = n_keys
        keys = [{
            "hash": f"{i:064x}", "name": "staging" if i < 2 else f"key-{i}", "label": "",
            "disabled": i % 10 == 9, "limit": None, "limit_remaining": None, "usage": 1.0,
            "usage_daily": 0.1, "workspace_id": WORKSPACES[i % 2]["id"],
        } for i in range(n_keys)]
        super().__init__({"credits": {"total_credits": 100_000, "total_usage": 40_000.5},
                          "activity": [], "key_activity": {}, "keys": keys,
                          "workspaces": WORKSPACES})
        self.today = today
        self.page_size = 100
        self.index_of = {k["hash"]: i for i, k in enumerate(keys)}
        self._key_bodies: dict[str, bytes] = {}
        self.activity_rows = self._org_rows()

    def _row(self, back: int, e: int, requests: int) -> dict[str, Any]:
        model, slug, endpoint, provider, price = ENDPOINTS[e]
        day = self.today - DAY * back
        return {"date": f"{day} 00:00:00" if back % 2 else str(day), "model": model,
                "model_permaslug": slug, "endpoint_id": endpoint, "provider_name": provider,
                "usage": requests * price / 1e6, "byok_usage_inference": 0,
                "requests": requests, "prompt_tokens": requests * 900,
                "completion_tokens": requests * 200, "reasoning_tokens": None}

    def key_rows(self, key_hash: str) -> list[dict[str, Any]]:
        i = self.index_of.get(key_hash)
        if i is None:
            return []
        return [self._row(back, e, requests_of(i, back, e))
                for back in range(1, 31) for e in range(len(ENDPOINTS))]

    def _org_rows(self) -> list[dict[str, Any]]:
        rows = []
        for back in range(1, 31):
            for e in range(len(ENDPOINTS)):
                total = sum(requests_of(i, back, e) for i in range(self.n_keys))
                rows.append(self._row(back, e, total))
        return rows

    def facts(self, first: dt.date, last: dt.date) -> Iterator[tuple[Any, ...]]:
        space = {k["hash"]: k["workspace_id"] for k in self.keys}
        micro = Decimal("0.000001")
        day = first
        while day <= last:
            back = (self.today - day).days
            if 1 <= back <= 366:
                for i in range(self.n_keys):
                    key_hash = f"{i:064x}"
                    for e, (_, slug, _, provider, price) in enumerate(ENDPOINTS):
                        requests = requests_of(i, back, e)
                        yield (day, key_hash, slug, provider, space[key_hash],
                               Decimal(requests * price) * micro, Decimal(0), requests,
                               requests * 900, requests * 200, 0)
            day += DAY

    def answer_analytics(self, body: Any) -> tuple[int, Any]:
        """The queries by day the way a fast server would: rows written straight as JSON text
        (the generic fake sums Decimals in Python, slower than the client it serves), a key
        filter (`in` / `not_in` hashes) looked up by index, never scanned per row, and answers
        past `analytics_max_rows` truncated. Everything else goes through the generic fake."""
        dims = body.get("dimensions") if isinstance(body, dict) else None
        filters = body.get("filters") or [] if isinstance(body, dict) else []
        simple = not filters or (
            len(filters) == 1 and filters[0].get("field") == "api_key_id"
            and filters[0].get("operator") in ("in", "not_in")
            and isinstance(filters[0].get("value"), list) and dims == ["api_key_id", "model"])
        if (dims not in (["api_key_id", "model"], ["model", "provider"]) or not simple
                or body.get("granularity") != "day"):
            return super().answer_analytics(body)
        self.analytics_queries.append(body)
        start = dt.date.fromisoformat(body["time_range"]["start"][:10])
        end = dt.date.fromisoformat(body["time_range"]["end"][:10])
        if "provider" in dims and (end - start).days > 31:
            return 400, {"error": {"code": 400, "message": "provider: 31-day windows only"}}
        keys: Iterable[int] = range(self.n_keys)
        warnings = []
        if filters:
            values = filters[0]["value"]
            named = {self.index_of[v] for v in values if v in self.index_of}
            if filters[0]["operator"] == "in":
                keys = sorted(named)
                if len(named) < len(set(values)):
                    warnings.append(f'"Could not resolve api_key_id values: '
                                    f'{len(set(values)) - len(named)}"')
            else:
                keys = [i for i in keys if i not in named]
        parts = []
        day = start
        while day < end:
            back = (self.today - day).days
            if 1 <= back <= 366:
                parts.extend(self._day_rows(day, back, dims[1] == "provider", keys))
            day += DAY
        truncated = len(parts) > self.analytics_max_rows
        del parts[self.analytics_max_rows :]
        text = (f'{{"data": {{"data": [{", ".join(parts)}], "metadata": {{"query_time_ms": 9, '
                f'"row_count": {len(parts)}, "truncated": {str(truncated).lower()}}}, '
                f'"warnings": [{", ".join(warnings)}]}}}}')
        return 200, text.encode()

    def _day_rows(self, day: dt.date, back: int, by_provider: bool, keys: Iterable[int]
                  ) -> list[str]:
        stamp = f"{day}T00:00:00.000Z"
        rows = []
        if by_provider:
            for e, (_, slug, _, provider, price) in enumerate(ENDPOINTS):
                n = sum(requests_of(i, back, e) for i in range(self.n_keys))
                rows.append(_json_row(stamp, f'"model": "{slug}", "provider": "{provider}"',
                                      n, n * price))
            return rows
        for i in keys:
            name = "staging" if i < 2 else f"key-{i}"
            sums: dict[str, list[int]] = {}
            for e, (_, slug, _, _, price) in enumerate(ENDPOINTS):
                n = requests_of(i, back, e)
                s = sums.setdefault(slug, [0, 0])
                s[0] += n
                s[1] += n * price
            for slug, (n, micro) in sums.items():
                rows.append(_json_row(stamp, f'"api_key_id": "{name}", "model": "{slug}"', n,
                                      micro))
        return rows

    def answer_activity(self, query: dict[str, str]) -> tuple[int, Any]:
        key_hash = query.get("api_key_hash")
        if key_hash is None or set(query) != {"api_key_hash"}:
            return super().answer_activity(query)
        body = self._key_bodies.get(key_hash)
        if body is None:  # the same bytes every time: the fake's own cost stays out of it
            body = json.dumps({"data": self.key_rows(key_hash)}).encode()
            self._key_bodies[key_hash] = body
        return 200, body


def _json_row(stamp: str, dims: str, requests: int, micro: int) -> str:
    usage = f"{micro // 1_000_000}.{micro % 1_000_000:06d}"
    return (f'{{"date__day": "{stamp}", {dims}, "total_usage": {usage}, "credits_usage": '
            f'{usage}, "byok_usage": null, "request_count": "{requests}", "tokens_prompt": '
            f'"{requests * 900}", "tokens_completion": "{requests * 200}", '
            f'"reasoning_tokens": null}}')


def sequential(base_url: str) -> tuple[float, Decimal]:
    """The original script's way, one request after another: credits, activity, every
    workspace's keys, each key's activity. Returns seconds and the total usage seen."""
    def get(path: str) -> Any:
        req = urllib.request.Request(base_url + path,
                                     headers={"Authorization": f"Bearer {MANAGEMENT_KEY}"})
        with urllib.request.urlopen(req, timeout=60) as resp:
            return json.loads(resp.read(), parse_float=Decimal)

    started = time.perf_counter()
    get("/credits")
    total = sum((Decimal(str(r["usage"] or 0)) for r in get("/activity")["data"]), Decimal(0))
    keys = []
    for workspace in get("/workspaces?limit=100")["data"]:
        offset = 0
        while True:
            page = get(f"/keys?include_disabled=true&workspace_id={workspace['id']}"
                       f"&offset={offset}")["data"]
            if not page:
                break
            keys.extend(page)
            offset += len(page)
    for key in keys:
        get(f"/activity?api_key_hash={key['hash']}")
    return time.perf_counter() - started, total


def cli(state: Path, base_url: str, *args: str) -> tuple[float, float, bytes]:
    """Seconds, peak RSS in MB and stdout of `openrouter-usage ARGS`, measured from a small
    parent (bench/measure.py)."""
    env = dict(os.environ, OPENROUTER_MANAGEMENT_KEY=MANAGEMENT_KEY,
               OPENROUTER_BASE_URL=base_url, XDG_STATE_HOME=str(state))
    env.pop("OPENROUTER_USAGE_CONFIG", None)
    exe = str(Path(sys.executable).parent / "openrouter-usage")
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "measure.py"), "--", exe, *args],
                          capture_output=True, env=env, cwd=state, check=False)
    report = json.loads(proc.stderr.decode().strip().splitlines()[-1])
    if report["rc"] != 0:
        raise SystemExit(f"openrouter-usage {' '.join(args)} failed:\n{proc.stderr.decode()}")
    return report["seconds"], report["maxrss_mb"], proc.stdout


def verdict(ok: bool) -> str:
    return "OK" if ok else "MISSED"


def run(n_keys: int, today: dt.date, *, report_target: float | None, backfill: int = 365,
        baseline: bool = True) -> bool:
    fake = BenchOpenRouter(n_keys, today)
    fake.latency = LATENCY
    results = []
    with running(fake), tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp)
        t_seq, total = sequential(fake.base_url) if baseline else (float("nan"), None)
        t_cli, rss, out = cli(state, fake.base_url, "report", "--json", "--by-key")
        doc = json.loads(out)
        if total is not None:
            assert abs(Decimal(str(doc["totals"]["usage"])) - total) <= total * Decimal("1e-9")
        assert len(doc["by_key"]) == n_keys
        ratio = t_cli / t_seq
        ok = (report_target is None or ratio <= report_target) and rss < 100
        target = f"<= {report_target}" if report_target else "no target"
        print(f"{n_keys:5d} keys  report --json --by-key   sequential {t_seq:6.2f}s  "
              f"openrouter-usage {t_cli:6.2f}s  ratio {ratio:.3f} ({target})  "
              f"peak RSS {rss:5.1f} MB (< 100)  {verdict(ok)}", flush=True)
        results.append(ok)

        t_sync, rss, out = cli(state, fake.base_url, "sync", "--backfill", f"{backfill}d")
        db = state / "openrouter-usage" / "history.db"
        size = sum(p.stat().st_size for p in db.parent.glob("history.db*"))
        ok = (t_sync < 60 or backfill != 365) and rss < 100
        print(f"{n_keys:5d} keys  first sync, {backfill:3d} days     {t_sync:6.2f}s (< 60)  "
              f"peak RSS {rss:5.1f} MB (< 100)  {verdict(ok)}  "
              f"[{len(fake.analytics_queries)} analytics queries]", flush=True)
        print(f"{'':11}{out.decode().strip()}")
        print(f"{'':11}history database {size / 1e6:.1f} MB: "
              f"{size / n_keys / 1e3 * 365 / backfill:.0f} KB per key-year "
              f"({len(ENDPOINTS)} endpoints, 9 models, every day)", flush=True)
        results.append(ok)

        start = str(today - DAY * 365)
        t_year, rss, out = cli(state, fake.base_url, "report", "--by-key", "--from", start,
                               "--json")
        doc = json.loads(out)
        assert len(doc["by_key"]) == n_keys
        assert backfill != 365 or doc["missing_days"] == []
        ok = (t_year < 5 or backfill != 365) and rss < 100
        print(f"{n_keys:5d} keys  report --by-key --from {start}  {t_year:6.2f}s (< 5)  "
              f"peak RSS {rss:5.1f} MB (< 100)  {verdict(ok)}", flush=True)
        results.append(ok)
    return all(results)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, action="append", help="org size (repeatable)")
    parser.add_argument("--quick", action="store_true", help="40 keys, no targets")
    parser.add_argument("--backfill", type=int, default=365, help="days the sync fills")
    parser.add_argument("--no-baseline", action="store_true",
                        help="skip the sequential run (5,600 keys take 5 minutes that way)")
    args = parser.parse_args()
    today = dt.datetime.now(dt.UTC).date()
    if args.quick:
        return 0 if run(40, today, report_target=None) else 1
    sizes = args.keys or [560, 5600]
    ok = [run(n, today, report_target=0.15 if n == 560 else None, backfill=args.backfill,
              baseline=not args.no_baseline) for n in sizes]
    return 0 if all(ok) else 1


if __name__ == "__main__":
    raise SystemExit(main())
