"""A year of history from the first sync (analytics API), against the local fake: limits,
identities, agreement with /activity, fallback."""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Iterable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from bot.cli import main
from bot.config import MAX_BACKFILL
from bot.errors import ApiError
from bot.jobs.report import gather_report, resolve_period
from bot.jobs.sync import history_ranges, run_sync
from bot.models import placeholder_hash
from bot.openrouter import OpenRouterClient
from bot.render.text import to_json
from bot.store import Store, connect
from tests.conftest import no_wait
from tests.fake_openrouter import MANAGEMENT_KEY, FakeOpenRouter, year_org

TODAY = dt.date(2026, 3, 11)
NOW = dt.datetime(2026, 3, 11, 6, 0, tzinfo=dt.UTC)
YESTERDAY = TODAY - dt.timedelta(days=1)
DAY = dt.timedelta(days=1)


class FakeClock:
    """A monotonic clock and a sleep that only moves it: waits take no time in tests."""

    def __init__(self) -> None:
        self.t = 1000.0
        self.sleeps: list[float] = []

    def now(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.t += max(seconds, 0.0)


@pytest.fixture()
def fake(fake_openrouter: FakeOpenRouter) -> FakeOpenRouter:
    org = year_org(TODAY)
    fake_openrouter.credits = org["credits"]
    fake_openrouter.activity_rows = org["activity"]
    fake_openrouter.key_activity = org["key_activity"]
    fake_openrouter.keys = org["keys"]
    fake_openrouter.workspaces = org["workspaces"]
    fake_openrouter.deleted_keys = org["deleted_keys"]
    fake_openrouter.keyless_rows = org["keyless"]
    fake_openrouter.today = TODAY
    fake_openrouter.page_size = 100
    fake_openrouter.reindex()
    return fake_openrouter


@pytest.fixture()
def clock(fake: FakeOpenRouter) -> FakeClock:
    clock = FakeClock()
    fake.clock = clock.now  # the fake enforces 64 queries a minute on the same clock
    return clock


@pytest.fixture()
def store(db_target: str) -> Iterator[Store]:
    """The history in SQLite, then in PostgreSQL."""
    conn = connect(db_target)
    yield Store(conn)
    conn.close()


def client_for(fake: FakeOpenRouter, clock: FakeClock) -> OpenRouterClient:
    return OpenRouterClient(MANAGEMENT_KEY, fake.base_url, timeout=5.0, sleep=clock.sleep,
                            clock=clock.now)


def D(value: Any) -> Decimal:
    return Decimal(str(value)) if value is not None else Decimal(0)


def truth(fake: FakeOpenRouter, first: dt.date, last: dt.date) -> list[dict[str, Any]]:
    """Every row the server knows in `first`..`last`: every key's, deleted and keyless too."""
    rows = [r for rs in fake.key_activity.values() for r in rs] + fake.keyless_rows
    return [r for r in rows if str(first) <= str(r["date"])[:10] <= str(last)]


def cost(rows: Iterable[dict[str, Any]]) -> Decimal:
    return sum((D(r["usage"]) + D(r["byok_usage_inference"]) for r in rows), Decimal(0))


def close(a: float | Decimal, b: Decimal) -> bool:
    return abs(Decimal(str(a)) - b) <= abs(b) * Decimal("1e-9") + Decimal("1e-9")


def assert_every_key_matches_the_server(store: Store, fake: FakeOpenRouter, first: dt.date,
                                        last: dt.date) -> None:
    """Each key's stored cost over `first`..`last`, and their sum, are the server's."""
    got = key_costs(store, first, last)
    for key in fake.keys:
        want = cost(truth_of(fake.key_activity[key["hash"]], first, last))
        assert close(got.get(key["hash"], Decimal(0)), want), key["name"]
    assert close(sum(got.values(), Decimal(0)), cost(truth(fake, first, last)))


def key_costs(store: Store, first: dt.date, last: dt.date) -> dict[str, Decimal]:
    out: dict[str, Decimal] = {}
    for row in store.key_period_rows(first, last):
        out[row.key_hash] = out.get(row.key_hash, Decimal(0)) + row.cost
    return out


# -- the done-when check, through the CLI ------------------------------------------------------


def test_fresh_install_after_one_sync_reports_200_days_like_the_server(
    fake: FakeOpenRouter, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    for var in ("OPENROUTER_API_KEY", "OPENROUTER_USAGE_CONFIG"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("OPENROUTER_MANAGEMENT_KEY", MANAGEMENT_KEY)
    monkeypatch.setenv("OPENROUTER_BASE_URL", fake.base_url)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    assert main(["sync"], now=lambda: NOW, sleep=no_wait) == 0
    out = capsys.readouterr().out
    assert "History: 365 days" in out and "from the analytics API" in out and "rows kept in" in out

    first = TODAY - DAY * 200
    code = main(["report", "--from", str(first), "--to", str(YESTERDAY), "--json"],
                now=lambda: NOW, sleep=no_wait)
    captured = capsys.readouterr()
    assert code == 0, captured.err
    doc = json.loads(captured.out)
    assert doc["missing_days"] == [] and captured.err == ""
    server = truth(fake, first, YESTERDAY)
    assert close(doc["totals"]["cost"], cost(server))
    by_date = {d["date"]: d for d in doc["by_date"]}
    assert len(by_date) == 200
    server_days: dict[str, list[dict[str, Any]]] = {}
    for r in server:
        server_days.setdefault(str(r["date"])[:10], []).append(r)
    for day in (str(first + DAY * i) for i in range(200)):
        rows = server_days.get(day, [])
        assert close(by_date[day]["cost"], cost(rows)), day
        assert by_date[day]["requests"] == sum(r["requests"] for r in rows), day
    by_model = {m["model"]: m for m in doc["by_model"]}
    assert set(by_model) == {r["model"] for r in server}  # /activity's names, old days too
    for model, item in by_model.items():
        assert close(item["cost"], cost(r for r in server if r["model"] == model)), model
    # providers for the last 31 days (the API's limit); older days keep the model alone
    by_provider = {p["provider"]: p["cost"] for p in doc["by_provider"]}
    assert set(by_provider) == {"OpenAI", "Anthropic", "Amazon Bedrock", "unknown"}
    recent = [r for r in server if str(r["date"])[:10] >= str(YESTERDAY - DAY * 30)]
    for provider, value in by_provider.items():
        if provider != "unknown":
            assert close(value, cost(r for r in recent if r["provider_name"] == provider))
    assert close(by_provider["unknown"], cost(server) - cost(recent))


# -- keys: hashes, shared names, deleted keys, spend without a key -----------------------------


def test_history_per_key_never_merges_keys_and_keeps_the_unknown(
    fake: FakeOpenRouter, clock: FakeClock, store: Store
) -> None:
    with client_for(fake, clock) as client:
        run_sync(client, store, now=NOW)
    first, last = TODAY - DAY * 365, YESTERDAY
    got = key_costs(store, first, last)
    for key in fake.keys:
        assert close(got.get(key["hash"], Decimal(0)),
                     cost(truth_of(fake.key_activity[key["hash"]], first, last))), key["name"]
    deleted_hash = next(iter(fake.deleted_keys))
    assert close(got[placeholder_hash("old-key")],
                 cost(truth_of(fake.key_activity[deleted_hash], first, last)))
    assert close(got[placeholder_hash("")], cost(truth_of(fake.keyless_rows, first, last)))
    assert close(sum(got.values(), Decimal(0)), cost(truth(fake, first, last)))
    names = store.key_names()
    assert names[placeholder_hash("old-key")] == "old-key (deleted key)"
    assert names[placeholder_hash("")] == "(no key)"
    # the two keys named "staging" were asked for by hash, one per query
    staging = {k["hash"] for k in fake.keys if k["name"] == "staging"}
    filtered = [q["filters"][0]["value"] for q in fake.analytics_queries
                if q.get("filters") and q["filters"][0]["operator"] == "in"]
    assert filtered and all(len(set(v) & staging) <= 1 for v in filtered)
    assert set().union(*map(set, filtered)) >= staging


def truth_of(rows: list[dict[str, Any]], first: dt.date, last: dt.date) -> list[dict[str, Any]]:
    return [r for r in rows if str(first) <= str(r["date"])[:10] <= str(last)]


# -- the API's limits ----------------------------------------------------------------------------


@pytest.mark.parametrize("cap", [40, 5])  # 5: even one day is cut, so the key set is split
def test_truncated_answers_are_split_and_never_summed(
    fake: FakeOpenRouter, clock: FakeClock, store: Store, cap: int
) -> None:
    fake.analytics_max_rows = cap
    with client_for(fake, clock) as client:
        run_sync(client, store, now=NOW, backfill=dt.timedelta(days=60))
    first, last = TODAY - DAY * 60, YESTERDAY
    assert_every_key_matches_the_server(store, fake, first, last)
    org = store.activity(first, last, "")
    assert close(sum((r.cost for r in org), Decimal(0)), cost(truth(fake, first, last)))
    assert store.missing_days(first, last) == []
    if cap == 5:
        split = [q for q in fake.analytics_queries if q.get("filters")
                 and q["filters"][0]["operator"] == "not_in"]
        assert split  # a single day was cut: split by key set, unknown keys asked apart


def test_64_queries_a_minute_on_our_side_and_retry_after(
    fake: FakeOpenRouter, clock: FakeClock, store: Store
) -> None:
    fake.analytics_max_rows = 30  # many small answers: well over 64 queries
    with client_for(fake, clock) as client:
        result = run_sync(client, store, now=NOW, backfill=dt.timedelta(days=120))
    assert result.history is not None and result.history.queries > 64
    assert fake.rate_limited == 0  # the fake never had to refuse one
    assert clock.t - 1000.0 >= 60 * ((len(fake.analytics_queries) - 1) // 64)

    fake.fail_next("/analytics/query", 429, headers={"Retry-After": "7"})
    before = len(clock.sleeps)
    with client_for(fake, clock) as client:
        run_sync(client, store, now=NOW, refill=dt.timedelta(days=3))
    assert 7.0 in clock.sleeps[before:]


def test_408_narrows_the_window(fake: FakeOpenRouter, clock: FakeClock, store: Store) -> None:
    fake.analytics_timeout_days = 5  # longer windows time out
    with client_for(fake, clock) as client:
        run_sync(client, store, now=NOW, backfill=dt.timedelta(days=40))
    first = TODAY - DAY * 40
    assert close(sum(key_costs(store, first, YESTERDAY).values(), Decimal(0)),
                 cost(truth(fake, first, YESTERDAY)))
    spans = [_days(q) for q in fake.analytics_queries]
    assert max(spans) > 5 and any(s <= 5 for s in spans)


def _days(query: dict[str, Any]) -> float:
    span = query["time_range"]
    start = dt.datetime.fromisoformat(span["start"].replace("Z", "+00:00"))
    end = dt.datetime.fromisoformat(span["end"].replace("Z", "+00:00"))
    return (end - start) / DAY


def test_queries_stay_within_the_api_limits(
    fake: FakeOpenRouter, clock: FakeClock, store: Store
) -> None:
    with client_for(fake, clock) as client:
        run_sync(client, store, now=NOW)
        with pytest.raises(ApiError) as err:  # what a third dimension gets
            client.analytics_query({"metrics": ["total_usage"], "dimensions": [
                "model", "provider", "api_key_id"], "granularity": "day", "time_range": {
                "start": "2026-03-01T00:00:00Z", "end": "2026-03-02T00:00:00Z"}})
    assert err.value.status == 400
    for query in fake.analytics_queries[:-1]:
        assert len(query["dimensions"]) <= 2 and query["granularity"] == "day"
        assert query["limit"] <= 10_000 and len(query.get("filters") or []) <= 20
        if "provider" in query["dimensions"]:
            assert _days(query) <= 31
        assert _days(query) <= 366


def test_provider_refused_for_old_windows_falls_back_to_models_alone(
    fake: FakeOpenRouter, clock: FakeClock, store: Store
) -> None:
    fake.provider_days_back = 31  # a server that splits by provider only for recent days
    with client_for(fake, clock) as client:
        run_sync(client, store, now=NOW, backfill=dt.timedelta(days=120))
    first = TODAY - DAY * 120
    assert store.missing_days(first, YESTERDAY) == []
    org = store.activity(first, YESTERDAY, "")
    assert close(sum((r.cost for r in org), Decimal(0)), cost(truth(fake, first, YESTERDAY)))
    providers = {r.provider for r in org if r.date < TODAY - DAY * 60}
    assert providers == {"unknown"}
    assert {r.model for r in org} == {"openai/gpt-4o", "anthropic/claude-sonnet-4"}


def test_string_counts_null_components_and_both_bucket_prefixes(
    fake: FakeOpenRouter, clock: FakeClock
) -> None:
    day = YESTERDAY - DAY * 40
    answer = {"data": {"data": [
        {"date__day": f"{day}T00:00:00.000Z", "api_key_id": "api", "model": "openai/gpt-4o",
         "total_usage": 0.75, "credits_usage": None, "byok_usage": None,
         "request_count": "12", "tokens_prompt": "1200", "tokens_completion": "300",
         "reasoning_tokens": None},
        {"created_at__day": f"{day}T00:00:00Z", "api_key_id": "byok", "model": "openai/gpt-4o",
         "total_usage": "0.5", "credits_usage": 0, "byok_usage": 0.5,
         "request_count": 3, "tokens_prompt": None, "tokens_completion": "7",
         "reasoning_tokens": "2"},
    ], "metadata": {"query_time_ms": 3, "row_count": 2, "truncated": False}}}
    fake.fail_next("/analytics/query", 200, body=answer)
    got: list[Any] = []
    with client_for(fake, clock) as client:
        keys = [k for k in client.inventory().keys if k.name in ("api", "byok")]
        client.key_model_days(day, day, keys, lambda a, b, rows: got.extend(rows))
    by_key = {r.key_hash: r for r in got}
    api = next(k["hash"] for k in fake.keys if k["name"] == "api")
    byok = next(k["hash"] for k in fake.keys if k["name"] == "byok")
    assert (by_key[api].usage, by_key[api].byok_usage) == (Decimal("0.75"), Decimal(0))
    assert (by_key[api].requests, by_key[api].prompt_tokens) == (12, 1200)
    assert by_key[api].reasoning_tokens == 0
    assert (by_key[byok].usage, by_key[byok].byok_usage) == (Decimal(0), Decimal("0.5"))
    assert (by_key[byok].completion_tokens, by_key[byok].reasoning_tokens) == (7, 2)
    assert {r.date for r in got} == {day}


# -- when, and how much ---------------------------------------------------------------------------


def test_later_syncs_ask_only_for_new_days_plus_the_last_two(
    fake: FakeOpenRouter, clock: FakeClock, store: Store
) -> None:
    with client_for(fake, clock) as client:
        run_sync(client, store, now=NOW, backfill=dt.timedelta(days=30))
    later = NOW + DAY * 3
    fake.today = TODAY + DAY * 3
    fake.analytics_queries.clear()
    with client_for(fake, clock) as client:
        result = run_sync(client, store, now=later, backfill=dt.timedelta(days=30))
    assert result.history is not None
    assert result.history.ranges == [(YESTERDAY - DAY, YESTERDAY + DAY * 3)]
    starts = {q["time_range"]["start"][:10] for q in fake.analytics_queries}
    assert min(starts) == str(YESTERDAY - DAY)
    # a longer backfill later asks for the older days only (and the top-up)
    fake.analytics_queries.clear()
    with client_for(fake, clock) as client:
        result = run_sync(client, store, now=later, backfill=dt.timedelta(days=45))
    assert result.history is not None
    assert (TODAY + DAY * 3 - DAY * 45, TODAY - DAY * 31) in result.history.ranges


def test_history_ranges() -> None:
    latest = YESTERDAY
    year = MAX_BACKFILL
    assert history_ranges(TODAY, latest, None, year) == [(TODAY - DAY * 365, latest)]
    held = (TODAY - DAY * 365, latest - DAY * 5)
    assert history_ranges(TODAY, latest, held, year) == [(latest - DAY * 6, latest)]
    assert history_ranges(TODAY, latest, (TODAY - DAY * 90, latest), year) == [
        (latest - DAY, latest), (TODAY - DAY * 365, TODAY - DAY * 91)]
    assert history_ranges(TODAY, latest, held, year, refill=dt.timedelta(days=90)) == [
        (TODAY - DAY * 90, latest)]


def test_sync_backfill_on_demand_and_its_config(
    fake: FakeOpenRouter, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OPENROUTER_MANAGEMENT_KEY", MANAGEMENT_KEY)
    monkeypatch.setenv("OPENROUTER_BASE_URL", fake.base_url)
    monkeypatch.delenv("OPENROUTER_USAGE_CONFIG", raising=False)
    Path("c.yaml").write_text(f"storage:\n  path: {tmp_path / 'h.db'}\nhistory:\n"
                              "  backfill: 20d\n")
    assert main(["--config", "c.yaml", "sync"], now=lambda: NOW, sleep=no_wait) == 0
    assert "History: 20 days" in capsys.readouterr().out
    assert main(["--config", "c.yaml", "sync", "--backfill", "90d"],
                now=lambda: NOW, sleep=no_wait) == 0
    assert "History: 90 days" in capsys.readouterr().out
    assert main(["--config", "c.yaml", "sync", "--backfill", "400d"],
                now=lambda: NOW, sleep=no_wait) == 2
    err = capsys.readouterr().err
    assert err.startswith("openrouter-usage: error: --backfill: ") and "365d" in err
    Path("c.yaml").write_text("history:\n  backfill: 2h\n")
    assert main(["--config", "c.yaml", "sync"], now=lambda: NOW, sleep=no_wait) == 2
    assert "history.backfill: expected whole days" in capsys.readouterr().err


def test_progress_in_days(fake: FakeOpenRouter, clock: FakeClock, store: Store) -> None:
    seen: list[tuple[int, int]] = []
    with client_for(fake, clock) as client:
        run_sync(client, store, now=NOW, backfill=dt.timedelta(days=50),
                 history_progress=lambda done, total: seen.append((done, total)))
    assert seen[-1] == (50, 50) and [d for d, _ in seen] == sorted(d for d, _ in seen)


# -- agreement and fallback -----------------------------------------------------------------------


def test_disagreement_is_one_warning_with_its_size_and_activity_wins(
    fake: FakeOpenRouter, clock: FakeClock, store: Store, caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    changed = YESTERDAY - DAY * 4
    api = next(k["hash"] for k in fake.keys if k["name"] == "api")
    facts = fake.facts

    def drifted(first: dt.date, last: dt.date) -> Iterator[tuple[Any, ...]]:
        for fact in facts(first, last):
            if fact[0] == changed and fact[1] == api and fact[2] == "openai/gpt-4o-2024-08-06":
                fact = (*fact[:5], fact[5] + Decimal("1.5"), *fact[6:])
            yield fact

    monkeypatch.setattr(fake, "facts", drifted)
    caplog.set_level(logging.WARNING, logger="bot")
    with client_for(fake, clock) as client:
        run_sync(client, store, now=NOW, backfill=dt.timedelta(days=60))
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    text = warnings[0].getMessage()
    assert "$1.50" in text and str(changed) in text and "keeping /activity's figures" in text
    assert "1 day(s), 1 model-day(s) and 1 key-day(s)" in text
    kept = store.activity(changed, changed, api)
    assert close(sum((r.cost for r in kept), Decimal(0)),
                 cost(truth_of(fake.key_activity[api], changed, changed)))


def test_agreeing_apis_say_nothing(
    fake: FakeOpenRouter, clock: FakeClock, store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="bot")
    with client_for(fake, clock) as client:
        run_sync(client, store, now=NOW, backfill=dt.timedelta(days=45))
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


@pytest.mark.parametrize("status", [403, 404])
def test_without_the_analytics_api_sync_keeps_to_activity_with_a_note(
    fake: FakeOpenRouter, clock: FakeClock, store: Store, caplog: pytest.LogCaptureFixture,
    status: int,
) -> None:
    fake.analytics_status = status
    caplog.set_level(logging.DEBUG, logger="bot")
    with client_for(fake, clock) as client:
        result = run_sync(client, store, now=NOW)
    assert f"analytics API not available ({status})" in result.summary()
    notes = [r for r in caplog.records if "analytics API not available" in r.getMessage()]
    assert len(notes) == 1 and notes[0].levelno == logging.INFO  # shown with -v
    assert store.missing_days(TODAY - DAY * 30, YESTERDAY) == []
    assert len(store.missing_days(TODAY - DAY * 60, YESTERDAY)) == 30
    assert store.get_meta("history.analytics_from") is None


def test_a_report_a_year_back_reads_history_summed_in_sql(
    fake: FakeOpenRouter, clock: FakeClock, store: Store
) -> None:
    with client_for(fake, clock) as client:
        run_sync(client, store, now=NOW)
        period = resolve_period(NOW, start=str(TODAY - DAY * 365), end=str(YESTERDAY))
        report = gather_report(client, store, period, now=NOW, with_keys=True,
                               by_workspace=True)
    doc = json.loads(to_json(report))
    assert doc["missing_days"] == []
    server = truth(fake, TODAY - DAY * 365, YESTERDAY)
    assert close(doc["totals"]["cost"], cost(server))
    assert close(sum(Decimal(str(k["cost"])) for k in doc["by_key"]), cost(server))
    assert close(sum(Decimal(str(w["cost"])) for w in doc["by_workspace"]), cost(server))
    hashes = [k["hash"] for k in doc["by_key"]]
    assert len(hashes) == len(set(hashes))


def test_monthly_sums_answer_long_ranges_and_a_stale_month_reads_its_days(
    fake: FakeOpenRouter, clock: FakeClock, store: Store
) -> None:
    from bot.models import ActivityRow

    with client_for(fake, clock) as client:
        run_sync(client, store, now=NOW, backfill=dt.timedelta(days=120))
    assert store.conn.execute("SELECT count(*) FROM key_month_stale").fetchone()[0] == 0
    assert store.conn.execute("SELECT count(*) FROM key_month").fetchone()[0] > 0
    first = TODAY - DAY * 120
    before = key_costs(store, first, YESTERDAY)
    assert close(sum(before.values(), Decimal(0)), cost(truth(fake, first, YESTERDAY)))
    day = (TODAY - DAY * 80).replace(day=10)  # inside a whole month of the range
    extra = ActivityRow(day, "m/x", "m/x", "", "", Decimal("2.5"), Decimal(0), 1, 0, 0, 0,
                        key_hash=placeholder_hash("late"))
    batch = store.usage_batch(NOW)
    batch.analytics([extra])
    batch.flush()
    stale = key_costs(store, first, YESTERDAY)  # the month is read from its days
    assert stale[placeholder_hash("late")] == Decimal("2.5")
    assert store.refresh_key_months() == 1
    assert key_costs(store, first, YESTERDAY) == stale


def test_a_large_org_asks_for_a_day_in_key_sets_from_the_first_query(
    fake: FakeOpenRouter, clock: FakeClock, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    # as if one day of this org held more rows than one answer should: 7 keys x 10 > 40
    monkeypatch.setattr("bot.openrouter.ANALYTICS_TARGET_ROWS", 40)
    with client_for(fake, clock) as client:
        run_sync(client, store, now=NOW, backfill=dt.timedelta(days=10))
    main = [q for q in fake.analytics_queries if q["dimensions"] == ["api_key_id", "model"]
            and not (q.get("filters") and q["filters"][0]["operator"] == "in"
                     and len(q["filters"][0]["value"]) == 1)]
    first = main[0]
    assert first["filters"] and first["filters"][0]["operator"] == "in"  # never all at once
    assert _days(first) == 1
    got = key_costs(store, TODAY - DAY * 10, YESTERDAY)
    assert close(sum(got.values(), Decimal(0)), cost(truth(fake, TODAY - DAY * 10, YESTERDAY)))


# -- few, large answers: the rate limit's free queries, memory per answer ----------------------


def answer_sizes(fake: FakeOpenRouter, monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, bool]]:
    """(rows, truncated) of every analytics answer the fake gives from now on."""
    sizes: list[tuple[int, bool]] = []
    answer = fake.answer_analytics

    def recording(body: Any) -> tuple[int, Any]:
        status, out = answer(body)
        if status == 200 and isinstance(out, dict):
            sizes.append((len(out["data"]["data"]), out["data"]["metadata"]["truncated"]))
        return status, out

    monkeypatch.setattr(fake, "answer_analytics", recording)
    return sizes


def test_a_year_is_asked_in_answers_large_enough_to_fit_the_rate_limit_without_waiting(
    fake: FakeOpenRouter, clock: FakeClock, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    # at 20 rows an answer a year of this org would take ~200 queries: over 3 minutes of waits
    monkeypatch.setattr("bot.openrouter.ANALYTICS_TARGET_ROWS", 20)
    monkeypatch.setattr("bot.openrouter.ANALYTICS_MAX_ROWS", 10_000)
    sizes = answer_sizes(fake, monkeypatch)
    with client_for(fake, clock) as client:
        result = run_sync(client, store, now=NOW)
    assert result.history is not None
    assert result.history.queries <= 64 - 8  # well under: room for a retry or a cut
    assert clock.sleeps == [] and fake.rate_limited == 0  # never waited for the rate limit
    assert max(rows for rows, _ in sizes) > 2 * 20  # answers grew past the target
    first = TODAY - DAY * 365
    assert_every_key_matches_the_server(store, fake, first, YESTERDAY)
    assert store.missing_days(first, YESTERDAY) == []


def test_answers_never_grow_past_the_memory_ceiling_even_if_the_rate_limit_waits(
    fake: FakeOpenRouter, clock: FakeClock, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("bot.openrouter.ANALYTICS_TARGET_ROWS", 20)
    monkeypatch.setattr("bot.openrouter.ANALYTICS_MAX_ROWS", 20)
    sizes = answer_sizes(fake, monkeypatch)
    with client_for(fake, clock) as client:
        result = run_sync(client, store, now=NOW, backfill=dt.timedelta(days=200))
    assert result.history is not None and result.history.queries > 64
    assert sum(clock.sleeps) >= 60 and fake.rate_limited == 0  # waited on our side
    unfiltered = [rows for rows, _ in sizes[4:]]  # after the shared-name rounds
    assert max(unfiltered) <= 2 * 20  # a window is sized by density: close to 20, never far
    first = TODAY - DAY * 200
    got = key_costs(store, first, YESTERDAY)
    assert close(sum(got.values(), Decimal(0)), cost(truth(fake, first, YESTERDAY)))


def test_a_server_that_cuts_answers_short_still_wins_over_larger_answers(
    fake: FakeOpenRouter, clock: FakeClock, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the budget asks for ~70-row answers; the server cuts at 50 (as a real one may at 10,000)
    monkeypatch.setattr("bot.openrouter.ANALYTICS_TARGET_ROWS", 20)
    monkeypatch.setattr("bot.openrouter.ANALYTICS_MAX_ROWS", 10_000)
    fake.analytics_max_rows = 50
    sizes = answer_sizes(fake, monkeypatch)
    with client_for(fake, clock) as client:
        run_sync(client, store, now=NOW)
    cut = [i for i, (_, truncated) in enumerate(sizes) if truncated]
    assert cut  # the server did cut
    assert len(cut) <= 3  # and later windows stayed below where it cut
    assert all(rows <= 50 for rows, _ in sizes[cut[0]:])
    first = TODAY - DAY * 365
    assert_every_key_matches_the_server(store, fake, first, YESTERDAY)


def test_an_answer_is_handed_on_a_chunk_at_a_time_and_each_window_closes_after_its_rows(
    fake: FakeOpenRouter, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("bot.openrouter.ANALYTICS_CHUNK", 7)
    first, last = TODAY - DAY * 90, YESTERDAY
    calls: list[tuple[Any, ...]] = []
    with client_for(fake, clock) as client:
        keys = client.inventory().keys
        client.key_model_days(first, last, keys,
                              lambda a, b, rows: calls.append(("rows", a, b, list(rows))),
                              on_window=lambda a, b: calls.append(("window", a, b)))
    windows = [(c[1], c[2]) for c in calls if c[0] == "window"]
    assert windows[0][1] == last and windows[-1][0] == first
    assert all(a - DAY == d for (a, _), (_, d) in zip(windows, windows[1:], strict=False))
    chunks_of: dict[tuple[dt.date, dt.date], list[int]] = {}
    closed: set[tuple[dt.date, dt.date]] = set()
    for call in calls:
        if call[0] == "window":
            closed.add((call[1], call[2]))
            continue
        span = (call[1], call[2])
        assert span not in closed  # no row of a window after it closed
        assert all(call[1] <= r.date <= call[2] for r in call[3])
        chunks_of.setdefault(span, []).append(len(call[3]))
    assert any(len(sizes) > 2 for sizes in chunks_of.values())  # answers came in chunks
    # every chunk but the one that closes a window (shared names' rest) is at most 7 rows
    assert all(n <= 7 for sizes in chunks_of.values() for n in sizes[:-1])
    got: dict[str, Decimal] = {}
    for call in calls:
        for r in call[3] if call[0] == "rows" else ():
            got[r.key_hash] = got.get(r.key_hash, Decimal(0)) + r.cost
    assert close(sum(got.values(), Decimal(0)), cost(truth(fake, first, last)))
    for key in fake.keys:
        want = cost(truth_of(fake.key_activity[key["hash"]], first, last))
        assert close(got.get(key["hash"], Decimal(0)), want), key["name"]


def test_a_bad_row_deep_in_an_answer_is_one_clear_error(
    fake: FakeOpenRouter, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("bot.openrouter.ANALYTICS_CHUNK", 2)
    day = YESTERDAY - DAY * 40
    good = {"date__day": f"{day}T00:00:00.000Z", "api_key_id": "api", "model": "openai/gpt-4o",
            "total_usage": 0.75, "credits_usage": 0.75, "byok_usage": None,
            "request_count": "12", "tokens_prompt": "1200", "tokens_completion": "300",
            "reasoning_tokens": None}
    answer = {"data": {"data": [good, good, good, dict(good, credits_usage="a lot"), good],
                       "metadata": {"query_time_ms": 3, "row_count": 5, "truncated": False}}}
    fake.fail_next("/analytics/query", 200, body=answer)
    with client_for(fake, clock) as client:
        keys = [k for k in client.inventory().keys if k.name == "api"]
        with pytest.raises(ApiError) as err:
            client.key_model_days(day, day, keys, lambda a, b, rows: None)
    assert str(err.value) == ("OpenRouter /analytics/query returned a malformed body: "
                              "credits_usage is not a number (invalid decimal string)")


def test_a_day_larger_than_the_ceiling_is_asked_in_key_sets(
    fake: FakeOpenRouter, clock: FakeClock, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    # this org has ~9 key x model rows a day: over a ceiling of 8, under 1.25 x 8
    monkeypatch.setattr("bot.openrouter.ANALYTICS_TARGET_ROWS", 8)
    monkeypatch.setattr("bot.openrouter.ANALYTICS_MAX_ROWS", 8)
    sizes = answer_sizes(fake, monkeypatch)
    with client_for(fake, clock) as client:
        run_sync(client, store, now=NOW, backfill=dt.timedelta(days=20))
    main_pass = [(rows, q) for (rows, _), q in zip(sizes, fake.analytics_queries, strict=True)
                 if q["dimensions"] == ["api_key_id", "model"]
                 and not (q["filters"] and len(q["filters"][0]["value"]) == 1)]
    days = [(rows, q) for rows, q in main_pass if _days(q) == 1]
    # days come in (at least) two key sets, not whole: a day's rows vary around the density
    # measured, so an answer may pass the ceiling by what a day differs from the next
    assert len(days) >= 2 * 19
    assert max(rows for rows, _ in main_pass) <= 8 * 1.25
    first = TODAY - DAY * 20
    got = key_costs(store, first, YESTERDAY)
    assert close(sum(got.values(), Decimal(0)), cost(truth(fake, first, YESTERDAY)))


def test_a_compressed_answer_is_read_whole(fake: FakeOpenRouter, clock: FakeClock) -> None:
    import gzip

    day = YESTERDAY - DAY * 40
    rows = [{"date__day": f"{day}T00:00:00.000Z", "api_key_id": "api", "model": f"m/{i}",
             "credits_usage": f"0.{i:06d}", "byok_usage": None, "request_count": str(i),
             "tokens_prompt": "1", "tokens_completion": "2", "reasoning_tokens": None}
            for i in range(1, 3001)]  # ~0.5 MB: it arrives in many pieces
    answer = {"data": {"data": rows,
                       "metadata": {"query_time_ms": 3, "row_count": 3000, "truncated": False}}}
    fake.fail_next("/analytics/query", 200, body=gzip.compress(json.dumps(answer).encode()),
                   headers={"Content-Encoding": "gzip"})
    got: list[Any] = []
    with client_for(fake, clock) as client:
        keys = [k for k in client.inventory().keys if k.name == "api"]
        client.key_model_days(day, day, keys, lambda a, b, chunk: got.extend(chunk))
    assert len(got) == 3000
    assert sum((r.usage for r in got), Decimal(0)) == sum(
        (Decimal(f"0.{i:06d}") for i in range(1, 3001)), Decimal(0))
    assert sum(r.requests for r in got) == 3000 * 3001 // 2
