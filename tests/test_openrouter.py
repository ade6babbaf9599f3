"""The OpenRouter client against the local fake: real sockets, real httpx, no waiting."""

from __future__ import annotations

import datetime as dt
import logging
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from decimal import Decimal
from typing import Any

import httpx
import pytest

from bot import __version__
from bot.errors import ApiError, AuthError, ConfigError, NotManagementKey
from bot.models import ZERO
from bot.openrouter import (
    MANAGEMENT_KEYS_URL,
    OpenRouterClient,
    parse_activity_row,
    parse_credits,
    parse_key,
)
from tests.fake_openrouter import MANAGEMENT_KEY, FakeOpenRouter

NOW = dt.datetime(2026, 3, 11, 6, 0, tzinfo=dt.UTC)
DAY = dt.date(2026, 3, 10)
HTML_502 = "<html>\n<head><title>502 Bad Gateway</title></head>\n<body>cloudflare</body></html>"


class Sleeps(list[float]):
    """An injected `sleep` that records what it was asked to wait and returns at once."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


@contextmanager
def client_for(fake: FakeOpenRouter, **kwargs: Any) -> Iterator[OpenRouterClient]:
    kwargs.setdefault("sleep", Sleeps())
    kwargs.setdefault("timeout", 5.0)
    with OpenRouterClient(kwargs.pop("key", MANAGEMENT_KEY), fake.base_url, **kwargs) as client:
        yield client


def raw_row(**fields: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "date": "2026-03-10",
        "model": "openai/gpt-4o",
        "model_permaslug": "openai/gpt-4o-2024-08-06",
        "endpoint_id": "ep-1",
        "provider_name": "OpenAI",
        "usage": 0.5,
        "byok_usage_inference": 0,
        "requests": 2,
        "prompt_tokens": 10,
        "completion_tokens": 5,
        "reasoning_tokens": 0,
    }
    row.update(fields)
    return row


# -- parsing ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "2026-03-10",
        "2026-03-10 00:00:00",
        "2026-03-10T00:00:00",
        "2026-03-10T13:45:10.123456Z",
        "2026-03-10 23:59:59.5",
        "2026-03-11T01:00:00+02:00",  # 23:00 UTC the day before
        " 2026-03-10 ",
    ],
)
def test_dates_are_read_leniently(text: str) -> None:
    assert parse_activity_row(raw_row(date=text)).date == DAY


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        ("not a row", "not an object"),
        (["2026-03-10"], "not an object"),
        (raw_row(date=None), "date"),
        (raw_row(date="10/03/2026"), "date"),
        (raw_row(date="2026-03-10X"), "date"),
        (raw_row(usage="lots"), "usage"),
        (raw_row(usage=True), "usage"),
        (raw_row(requests=1.5), "requests"),
        (raw_row(prompt_tokens={"n": 1}), "prompt_tokens"),
    ],
)
def test_malformed_rows_raise_api_error(raw: Any, words: str) -> None:
    with pytest.raises(ApiError, match=words) as err:
        parse_activity_row(raw)
    assert "\n" not in str(err.value)


def test_row_nulls_missing_and_unknown_fields() -> None:
    row = parse_activity_row(
        {"date": "2026-03-10", "usage": None, "requests": None, "surprise": {"x": 1}}, "h1"
    )
    assert row.model == "unknown" and row.provider == "unknown"
    assert row.usage == ZERO and row.byok_usage == ZERO and row.requests == 0
    assert row.endpoint_id  # never empty: history keys rows by endpoint
    assert row.key_hash == "h1"


def test_row_money_is_exact_from_numbers_and_strings() -> None:
    row = parse_activity_row(raw_row(usage=Decimal("0.1"), byok_usage_inference="0.2"))
    assert row.cost == Decimal("0.3")
    assert parse_activity_row(raw_row(usage=0.1)).usage == Decimal("0.1")
    assert parse_activity_row(raw_row(requests=3.0)).requests == 3


def test_keys_and_credits_read_nulls_as_zero_or_no_limit_and_need_a_hash() -> None:
    key = parse_key(
        {"hash": "abc", "name": None, "limit": None, "usage": "1.25", "byok_usage_daily": None,
         "disabled": True, "brand_new_field": 1}
    )
    assert key.name == "" and key.limit is None and key.limit_remaining is None
    assert key.usage == Decimal("1.25") and key.byok_usage_daily == ZERO and key.disabled
    with pytest.raises(ApiError, match="hash"):
        parse_key({"name": "no hash"})
    credits = parse_credits({"total_credits": Decimal("10.5"), "total_usage": None})
    assert credits.remaining == Decimal("10.5")


# -- endpoints ----------------------------------------------------------------------------------


def test_credits_remaining_is_exact(fake_openrouter: FakeOpenRouter) -> None:
    fake_openrouter.credits = {"total_credits": 100.3, "total_usage": 0.1, "extra": []}
    with client_for(fake_openrouter) as client:
        credits = client.credits()
    assert credits.total_credits == Decimal("100.3")
    assert credits.remaining == Decimal("100.2")


@pytest.mark.parametrize("page_size", [1, 3, 5, 7, 11, 12, 500])
def test_keys_follow_every_page(fake_openrouter: FakeOpenRouter, page_size: int) -> None:
    fake_openrouter.page_size = page_size
    with client_for(fake_openrouter) as client:
        keys = client.keys()
    assert [k.hash for k in keys] == [k["hash"] for k in fake_openrouter.keys]
    requests = fake_openrouter.requests_to("/keys")
    pages = -(-len(keys) // page_size) + 1  # the last request gets an empty page
    assert len(requests) == pages
    assert [int(r.query["offset"]) for r in requests] == [
        min(i * page_size, len(keys)) for i in range(pages)
    ]
    assert all(r.query["include_disabled"] == "true" for r in requests)


def test_keys_include_disabled_and_parse_fields(fake_openrouter: FakeOpenRouter) -> None:
    with client_for(fake_openrouter) as client:
        keys = {k.name: k for k in client.keys()}
    assert keys["key-04"].disabled
    assert keys["key-01"].limit == Decimal(50)
    remaining = fake_openrouter.keys[1]["limit_remaining"]
    assert keys["key-01"].limit_remaining == Decimal(str(remaining)) < 50
    assert keys["key-00"].limit is None
    assert keys["key-07"].byok_usage > 0
    assert keys["key-00"].byok_usage_daily == ZERO  # null
    assert keys["key-05"].expires_at == "2026-12-31T23:59:59Z"
    nameless = next(k for k in keys.values() if not k.name)
    assert nameless.display_name == nameless.label


def test_keys_stop_when_a_server_repeats_its_first_page(fake_openrouter: FakeOpenRouter) -> None:
    fake_openrouter.ignore_offset = True
    with client_for(fake_openrouter) as client, pytest.raises(ApiError, match="already seen"):
        client.keys()
    assert len(fake_openrouter.requests_to("/keys")) == 2


def test_keys_stop_after_a_page_limit(
    fake_openrouter: FakeOpenRouter, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("bot.openrouter.MAX_KEY_PAGES", 4)
    fake_openrouter.page_size = 1
    with client_for(fake_openrouter) as client, pytest.raises(ApiError, match="4 pages"):
        client.keys()


def test_activity_rows_read_both_date_formats_and_null_tokens_as_zero(
    fake_openrouter: FakeOpenRouter,
) -> None:
    with client_for(fake_openrouter) as client:
        rows = client.activity()
    raw = fake_openrouter.activity_rows
    assert len(rows) == len(raw)
    assert {len(r["date"]) for r in raw} == {10, 19}  # both of the API's date formats
    assert {r.date for r in rows} == {DAY - dt.timedelta(days=n) for n in range(3)}
    assert {r.provider for r in rows} >= {"OpenAI", "Anthropic", "Amazon Bedrock", "DeepSeek"}
    assert all(r.key_hash == "" for r in rows)
    r1 = [r for r in rows if r.model == "deepseek/deepseek-r1"]
    gpt = [r for r in rows if r.model == "openai/gpt-4o"]
    assert r1 and all(r.reasoning_tokens > 0 for r in r1)
    assert gpt and all(r.reasoning_tokens == 0 for r in gpt)  # null in the API
    assert fake_openrouter.requests_to("/activity")[0].query == {}


def test_byok_rows_cost_only_their_byok_usage(fake_openrouter: FakeOpenRouter) -> None:
    byok_hash = fake_openrouter.keys[7]["hash"]
    with client_for(fake_openrouter) as client:
        rows = client.activity(api_key_hash=byok_hash)
    assert rows and all(r.usage == ZERO and r.byok_usage > 0 for r in rows)
    assert all(r.cost == r.byok_usage for r in rows)


def test_activity_for_a_day_and_a_key(fake_openrouter: FakeOpenRouter) -> None:
    key_hash = fake_openrouter.keys[2]["hash"]
    with client_for(fake_openrouter) as client:
        rows = client.activity(DAY, api_key_hash=key_hash)
    assert rows and {r.date for r in rows} == {DAY} and {r.key_hash for r in rows} == {key_hash}
    expected = [r for r in fake_openrouter.key_activity[key_hash] if r["date"][:10] == "2026-03-10"]
    assert len(rows) == len(expected)
    assert fake_openrouter.requests[-1].query == {"date": "2026-03-10", "api_key_hash": key_hash}


def test_sums_are_exact(fake_openrouter: FakeOpenRouter) -> None:
    fake_openrouter.activity_rows = [
        raw_row(usage=0.1, endpoint_id="a"),
        raw_row(usage=0.2, endpoint_id="b"),
        raw_row(usage=1e-9, byok_usage_inference=0.3, endpoint_id="c"),
    ]
    with client_for(fake_openrouter) as client:
        rows = client.activity()
    assert sum((r.usage for r in rows[:2]), ZERO) == Decimal("0.3")
    assert sum((r.cost for r in rows), ZERO) == Decimal("0.600000001")


def test_org_total_equals_sum_of_keys(fake_openrouter: FakeOpenRouter) -> None:
    with client_for(fake_openrouter) as client:
        snap = client.snapshot(now=NOW, per_key=True)
    org = sum((r.cost for r in snap.activity), ZERO)
    per_key = sum((r.cost for rows in snap.key_activity.values() for r in rows), ZERO)
    assert org == per_key > 0


# -- errors -------------------------------------------------------------------------------------


def test_401_is_auth_error_and_not_retried(fake_openrouter: FakeOpenRouter) -> None:
    sleeps = Sleeps()
    with client_for(fake_openrouter, key="sk-or-v1-wrong-key-123456", sleep=sleeps) as client:
        with pytest.raises(AuthError, match="OPENROUTER_MANAGEMENT_KEY") as err:
            client.credits()
    assert err.value.status == 401 and "401" in str(err.value)
    assert [r.path for r in fake_openrouter.requests] == ["/key"] and sleeps == []


def test_403_says_management_key_and_links_settings(fake_openrouter: FakeOpenRouter) -> None:
    fake_openrouter.management = False
    with client_for(fake_openrouter) as client, pytest.raises(NotManagementKey) as err:
        client.keys()
    assert "management key" in str(err.value)
    assert MANAGEMENT_KEYS_URL in str(err.value)
    assert err.value.status == 403
    assert [r.path for r in fake_openrouter.requests] == ["/key"]  # refused before any figure


def test_429_honours_retry_after(fake_openrouter: FakeOpenRouter) -> None:
    fake_openrouter.fail_next("/credits", 429, headers={"Retry-After": "7"})
    sleeps = Sleeps()
    with client_for(fake_openrouter, sleep=sleeps) as client:
        assert client.credits().total_credits == Decimal(250)
    assert sleeps == [7.0]
    assert len(fake_openrouter.requests_to("/credits")) == 2


def test_retry_after_is_capped_by_the_budget(fake_openrouter: FakeOpenRouter) -> None:
    fake_openrouter.fail_next("/credits", 429, headers={"Retry-After": "3600"})
    sleeps = Sleeps()
    with client_for(fake_openrouter, sleep=sleeps, retry_budget=20) as client:
        client.credits()
    assert len(sleeps) == 1 and 19 < sleeps[0] <= 20


def test_503_then_success_backs_off(fake_openrouter: FakeOpenRouter) -> None:
    fake_openrouter.fail_next("/activity", 503, n=2)
    sleeps = Sleeps()
    with client_for(fake_openrouter, sleep=sleeps) as client:
        assert client.activity()
    assert len(sleeps) == 2
    assert 0.5 <= sleeps[0] <= 1.0 and 1.0 <= sleeps[1] <= 2.0  # exponential, with jitter


def test_persistent_502_gives_one_clean_line(fake_openrouter: FakeOpenRouter) -> None:
    fake_openrouter.fail_next("/credits", 502, n=100, body=HTML_502)
    sleeps = Sleeps()
    with client_for(fake_openrouter, sleep=sleeps, max_attempts=4) as client:
        with pytest.raises(ApiError) as err:
            client.credits()
    message = str(err.value)
    assert message == "OpenRouter /credits failed after 4 attempts: 502 Bad Gateway"
    assert err.value.status == 502
    assert len(fake_openrouter.requests_to("/credits")) == 4 and len(sleeps) == 3


def test_retry_budget_bounds_the_attempts(fake_openrouter: FakeOpenRouter) -> None:
    fake_openrouter.fail_next("/credits", 500, n=100)
    sleeps = Sleeps()
    with client_for(fake_openrouter, sleep=sleeps, max_attempts=50, retry_budget=5) as client:
        with pytest.raises(ApiError, match="failed after"):
            client.credits()
    assert sum(sleeps) <= 5
    assert len(fake_openrouter.requests) < 10


def test_timeouts_are_retried_then_fail(fake_openrouter: FakeOpenRouter) -> None:
    fake_openrouter.fail_next("/credits", "slow", n=2, delay=2.0)
    with client_for(fake_openrouter, timeout=0.2, max_attempts=2) as client:
        with pytest.raises(ApiError, match="after 2 attempts: timed out") as err:
            client.credits()
    assert isinstance(err.value.__cause__, httpx.TimeoutException)
    assert len(fake_openrouter.requests_to("/credits")) == 2


def test_a_timeout_is_retried_and_then_succeeds(fake_openrouter: FakeOpenRouter) -> None:
    fake_openrouter.fail_next("/credits", "slow", delay=2.0)
    with client_for(fake_openrouter, timeout=0.2) as client:
        assert client.credits().total_credits == Decimal(250)


def test_dropped_connection_is_retried(fake_openrouter: FakeOpenRouter) -> None:
    fake_openrouter.fail_next("/keys", "drop")
    with client_for(fake_openrouter) as client:
        assert len(client.keys()) == 12


def test_connection_refused_fails_cleanly() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens here once closed
    sleeps = Sleeps()
    with OpenRouterClient(
        MANAGEMENT_KEY, f"http://127.0.0.1:{port}/api/v1", sleep=sleeps, max_attempts=3
    ) as client, pytest.raises(ApiError, match="after 3 attempts: connection failed") as err:
        client.credits()
    assert "\n" not in str(err.value) and len(sleeps) == 2


@pytest.mark.parametrize("url", ["", "openrouter.ai/api/v1", "ftp://openrouter.ai", "http://[::1"])
def test_a_bad_base_url_is_a_config_error(url: str) -> None:
    with pytest.raises(ConfigError, match="openrouter.base_url"):
        OpenRouterClient(MANAGEMENT_KEY, url)


@pytest.mark.parametrize(
    ("path", "body", "words"),
    [
        ("/activity", b"{not json", "/activity returned a malformed body: not JSON"),
        ("/activity", {"data": {"rows": []}}, "data is an object, expected a list"),
        ("/activity", {"data": ["row"]}, "activity row is not an object"),
        ("/activity", {"data": [{"date": "yesterday"}]}, "date is not a date"),
        ("/activity", [1, 2], "body is a list"),
        ("/keys", {"data": None}, "data is null, expected a list"),
        ("/keys", {"data": [{"name": "x"}]}, "key has no hash"),
        ("/credits", {"data": []}, "data is a list, expected an object"),
        ("/credits", {"data": {"total_credits": "n/a"}}, "total_credits is not a number"),
        ("/credits", {"credits": 1}, "no 'data' field"),
        ("/credits", "<html>maintenance</html>", "not JSON"),
    ],
)
def test_a_malformed_body_is_one_error_line_and_not_retried(
    fake_openrouter: FakeOpenRouter, path: str, body: Any, words: str
) -> None:
    fake_openrouter.fail_next(path, 200, body=body)
    sleeps = Sleeps()
    with client_for(fake_openrouter, sleep=sleeps) as client, pytest.raises(ApiError) as err:
        calls: dict[str, Callable[[], object]] = {
            "/activity": client.activity, "/keys": client.keys, "/credits": client.credits
        }
        calls[path]()
    text = str(err.value)
    assert words in text and f"OpenRouter {path} returned a malformed body: " in text
    assert "\n" not in text and "<html" not in text
    assert sleeps == []  # a bad body is not retried


def test_other_4xx_gives_status_and_trimmed_api_message(fake_openrouter: FakeOpenRouter) -> None:
    message = "Invalid date range:\n" + "the activity endpoint only keeps thirty days. " * 20
    fake_openrouter.fail_next("/activity", 400, body={"error": {"code": 400, "message": message}})
    with client_for(fake_openrouter) as client, pytest.raises(ApiError) as err:
        client.activity(DAY)
    text = str(err.value)
    assert text.startswith("OpenRouter /activity failed: 400 Bad Request: Invalid date range:")
    assert "\n" not in text and len(text) < 300 and err.value.status == 400
    assert len(fake_openrouter.requests_to("/activity")) == 1


def test_the_key_never_leaks(
    fake_openrouter: FakeOpenRouter, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    echo = {"error": {"code": 400, "message": f"bad key {MANAGEMENT_KEY}"}}
    fake_openrouter.fail_next("/credits", 400, body=echo)
    fake_openrouter.fail_next("/keys", 502, n=3, body=echo)
    fake_openrouter.fail_next("/activity", 200, body={"error": {"message": MANAGEMENT_KEY}})
    errors: list[BaseException] = []
    with client_for(fake_openrouter, max_attempts=3, timeout=0.2) as client:
        for call in (client.credits, client.keys, client.activity):
            with pytest.raises(ApiError) as err:
                call()
            errors.append(err.value)
        fake_openrouter.fail_next("/credits", "slow", n=3, delay=1.0)
        with pytest.raises(ApiError) as err:
            client.credits()
        errors.append(err.value)
        assert MANAGEMENT_KEY not in repr(client)
    fake_openrouter.management = False
    with client_for(fake_openrouter) as client, pytest.raises(NotManagementKey) as err:
        client.credits()
    errors.append(err.value)
    for exc in errors:
        assert MANAGEMENT_KEY not in str(exc) and MANAGEMENT_KEY not in repr(exc)
    assert "***" in str(errors[0])
    assert MANAGEMENT_KEY not in caplog.text
    assert "GET /credits -> 400" in caplog.text  # the debug line per request is there


def test_only_get_with_user_agent_and_auth(fake_openrouter: FakeOpenRouter) -> None:
    with client_for(fake_openrouter) as client:
        client.snapshot(now=NOW, per_key=True, date=DAY)
    assert fake_openrouter.requests
    for request in fake_openrouter.requests:
        assert request.method == "GET"
        assert request.has_auth and "authorization" not in request.headers
        assert request.headers["user-agent"] == f"openrouter-usage/{__version__}"


def test_fake_refuses_other_methods(fake_openrouter: FakeOpenRouter) -> None:
    # the guard the test above relies on: anything but GET is answered 405 and recorded
    with httpx.Client() as http:
        resp = http.post(f"{fake_openrouter.base_url}/keys", json={"name": "new"})
    assert resp.status_code == 405
    assert fake_openrouter.requests[-1].method == "POST"


# -- snapshot -----------------------------------------------------------------------------------


def test_snapshot_fetches_everything(fake_openrouter: FakeOpenRouter) -> None:
    with client_for(fake_openrouter) as client:
        snap = client.snapshot(now=NOW)
    assert snap.as_of == NOW
    assert snap.credits is not None and snap.credits.total_credits == Decimal(250)
    assert len(snap.keys) == 12 and len(snap.activity) == len(fake_openrouter.activity_rows)
    assert snap.key_activity == {}
    assert all("api_key_hash" not in r.query for r in fake_openrouter.requests)


def test_snapshot_without_credits_or_keys(fake_openrouter: FakeOpenRouter) -> None:
    with client_for(fake_openrouter) as client:
        snap = client.snapshot(now=NOW, credits=False, keys=False, date=DAY)
    assert snap.credits is None and snap.keys == []
    assert [r.path for r in fake_openrouter.requests] == ["/key", "/activity"]
    assert {r.date for r in snap.activity} == {DAY}


def test_per_key_fan_out_is_bounded(fake_openrouter: FakeOpenRouter) -> None:
    fake_openrouter.latency = 0.05
    progress: list[tuple[int, int]] = []
    with client_for(fake_openrouter, concurrency=3) as client:
        snap = client.snapshot(
            now=NOW, per_key=True, progress=lambda done, total: progress.append((done, total))
        )
    hashes = [k["hash"] for k in fake_openrouter.keys]
    assert list(snap.key_activity) == hashes  # every key, the disabled one too, in key order
    for key_hash, rows in snap.key_activity.items():
        assert len(rows) == len(fake_openrouter.key_activity[key_hash])
        assert all(r.key_hash == key_hash for r in rows)
    # keys are fetched as their pages arrive: the total grows as pages come, ending at 12
    assert [done for done, _ in progress] == list(range(1, 13)) and progress[-1] == (12, 12)
    assert all(done <= total <= 12 for done, total in progress)
    assert 2 <= fake_openrouter.max_in_flight <= 3
    per_key = [r for r in fake_openrouter.requests_to("/activity") if "api_key_hash" in r.query]
    assert sorted(r.query["api_key_hash"] for r in per_key) == sorted(hashes)


def test_per_key_failure_stops_the_snapshot(fake_openrouter: FakeOpenRouter) -> None:
    bad = fake_openrouter.keys[5]["hash"]
    fake_openrouter.key_activity[bad] = [raw_row(date="last tuesday")]
    progress: list[tuple[int, int]] = []
    with client_for(fake_openrouter, concurrency=2) as client:
        with pytest.raises(ApiError, match="/activity returned a malformed body: date"):
            client.snapshot(now=NOW, per_key=True, progress=lambda *a: progress.append(a))
    assert len(progress) < 12
