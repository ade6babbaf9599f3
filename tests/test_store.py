"""The store: snapshots, coverage, credits history, keys, outbox, alert state, leases, meta.

Every test runs on each backend: SQLite in memory and in a file, and PostgreSQL.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import replace
from decimal import Decimal
from pathlib import Path

import pytest

from bot.errors import DataError
from bot.models import ActivityRow, ApiKey, Credits, Snapshot
from bot.store import AlertState, Store, SyncStats, connect
from tests.pg_server import make_target

UTC = dt.UTC
T0 = dt.datetime(2024, 5, 31, 12, 0, tzinfo=UTC)
D = dt.date(2024, 5, 30)
HOUR = dt.timedelta(hours=1)
DAY = dt.timedelta(days=1)
TINY = Decimal("0.000000123456789")


@pytest.fixture(params=["memory", "sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    conn = connect(make_target(request.param, request, tmp_path))
    yield Store(conn)
    conn.close()


def row(date: dt.date = D, model: str = "openai/gpt-4o", usage: str = "1.25", *,
        endpoint: str = "ep-openai", byok: str = "0", requests: int = 3,
        key_hash: str = "") -> ActivityRow:
    return ActivityRow(
        date=date, model=model, model_permaslug=f"{model}-2024", endpoint_id=endpoint,
        provider="OpenAI", usage=Decimal(usage), byok_usage=Decimal(byok), requests=requests,
        prompt_tokens=100, completion_tokens=50, reasoning_tokens=0, key_hash=key_hash,
    )


def key(hash_: str = "h1", name: str = "prod", usage: str = "10", **kw: object) -> ApiKey:
    return ApiKey(hash=hash_, name=name, usage=Decimal(usage), **kw)  # type: ignore[arg-type]


def snapshot(as_of: dt.datetime = T0, **kw: object) -> Snapshot:
    base: dict[str, object] = {
        "credits": Credits(Decimal("100"), Decimal("40.5")),
        "activity": [row(), row(D - DAY, "anthropic/claude", "2", endpoint="ep-anth")],
        "keys": [key("h1", "prod"), key("h2", "", "3", label="ci-label", disabled=True)],
        "key_activity": {"h1": [row(), row(D - DAY, usage="0.5")], "h2": []},
    }
    base.update(kw)
    return Snapshot(as_of=as_of, **base)  # type: ignore[arg-type]


def count(store: Store, table: str) -> int:
    return int(store.conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])


# --- snapshots ---------------------------------------------------------------------------


def test_save_snapshot_twice_stores_nothing_twice(store: Store) -> None:
    first = store.save_snapshot(snapshot())
    assert first == SyncStats(credits_new=True, activity_new=4, keys_new=2,
                              days_covered_new=90)
    tables = {t: count(store, t) for t in ("credits", "activity", "key_usage", "keys",
                                            "coverage")}
    assert tables == {"credits": 1, "activity": 2, "key_usage": 2, "keys": 2, "coverage": 90}

    second = store.save_snapshot(snapshot(T0 + HOUR))
    assert second == SyncStats(activity_unchanged=4, keys_unchanged=2)
    assert {t: count(store, t) for t in tables} == tables
    assert store.credits_at() == (T0 + HOUR, Credits(Decimal("100"), Decimal("40.5")))
    assert store.last_sync_at() == T0 + HOUR


def test_changed_figures_update_in_place(store: Store) -> None:
    store.save_snapshot(snapshot())
    changed = snapshot(
        T0 + HOUR,
        activity=[row(usage="1.75", requests=5),
                  row(D - DAY, "anthropic/claude", "2", endpoint="ep-anth")],
        credits=Credits(Decimal("100"), Decimal("41")),
        keys=[key("h1", "prod", "11"), key("h2", "", "3", label="ci-label", disabled=True)],
    )
    stats = store.save_snapshot(changed)
    assert (stats.activity_new, stats.activity_updated, stats.activity_unchanged) == (0, 1, 3)
    assert (stats.keys_new, stats.keys_updated, stats.keys_unchanged) == (0, 1, 1)
    assert stats.credits_new
    assert count(store, "activity") + count(store, "key_usage") == 4
    got = [r for r in store.activity(D, D) if r.model == "openai/gpt-4o"]
    assert [(r.usage, r.requests) for r in got] == [(Decimal("1.75"), 5)]
    assert count(store, "credits") == 2
    assert {k.hash: k.usage for k in store.keys()} == {"h1": Decimal("11"), "h2": Decimal("3")}


def test_numerically_equal_money_is_unchanged(store: Store) -> None:
    store.save_snapshot(snapshot())
    again = snapshot(T0 + HOUR, activity=[row(usage="1.2500"),
                                          row(D - DAY, "anthropic/claude", "2.0",
                                              endpoint="ep-anth")])
    assert store.save_snapshot(again).activity_updated == 0


def test_decimal_exactness_round_trip(store: Store) -> None:
    rows = [row(D - DAY * i, usage=str(TINY), byok=str(TINY * 3)) for i in range(30)]
    credits = Credits(Decimal("25.000000000000000001"), TINY)
    store.save_snapshot(snapshot(activity=rows, credits=credits, key_activity={}))
    got = store.activity(D - DAY * 29, D)
    assert [r.usage for r in got] == [TINY] * 30
    assert sum(r.cost for r in got) == TINY * 4 * 30 == Decimal("0.0000148148146800")
    assert store.credits_at() == (T0, credits)
    stored = store.conn.execute("SELECT usage FROM activity LIMIT 1").fetchone()[0]
    assert stored == "0.000000123456789"  # TEXT, fixed-point, exact


def test_account_rows_and_per_key_rows_are_kept_apart(store: Store) -> None:
    store.save_snapshot(snapshot())
    org = store.activity(D - DAY, D, "")
    assert {(r.key_hash, r.model) for r in org} == {("", "openai/gpt-4o"),
                                                    ("", "anthropic/claude")}
    h1 = store.activity(D - DAY, D, "h1")
    assert [(r.date, r.key_hash, r.usage) for r in h1] == [
        (D - DAY, "h1", Decimal("0.5")), (D, "h1", Decimal("1.25"))]
    every = store.activity(D - DAY, D, None)  # per key and day
    assert [(r.date, r.key_hash, r.usage) for r in every] == [
        (r.date, r.key_hash, r.usage) for r in h1]
    assert {r.model for r in h1} == {"openai/gpt-4o"}  # a key's rows keep their model
    assert store.activity(D, D, "h2") == []
    assert store.activity(D + DAY, D + DAY * 5) == []


def test_duplicate_rows_in_one_fetch_are_summed(store: Store) -> None:
    stats = store.save_snapshot(snapshot(activity=[row(usage="1"), row(usage="0.5")],
                                         key_activity={}))
    assert stats.activity_new == 1
    (got,) = store.activity(D, D)
    assert (got.usage, got.requests) == (Decimal("1.5"), 6)


def test_coverage_marks_the_completed_window(store: Store) -> None:
    store.save_snapshot(snapshot())
    window = (dt.date(2024, 5, 1), dt.date(2024, 5, 30))
    assert store.missing_days(*window) == []
    assert store.missing_days(dt.date(2024, 4, 29), dt.date(2024, 6, 1)) == [
        dt.date(2024, 4, 29), dt.date(2024, 4, 30), dt.date(2024, 5, 31), dt.date(2024, 6, 1)]
    assert len(store.covered_days(*window)) == 30
    assert store.missing_days(*window, key_hash="h2") == []  # fetched, no spend: still covered
    assert store.missing_days(dt.date(2024, 5, 30), dt.date(2024, 5, 30), "h9") == [
        dt.date(2024, 5, 30)]


def test_coverage_respects_window_days_and_settling(store: Store) -> None:
    just_after_midnight = dt.datetime(2024, 5, 31, 0, 10, tzinfo=UTC)
    store.save_snapshot(snapshot(just_after_midnight), window_days=7)
    assert store.covered_days(dt.date(2024, 5, 1), dt.date(2024, 5, 31)) == {
        dt.date(2024, 5, d) for d in range(24, 30)}  # the 30th is not settled yet
    store.save_snapshot(snapshot(just_after_midnight + HOUR), window_days=7)
    assert dt.date(2024, 5, 30) in store.covered_days(D, D)


def test_no_coverage_when_activity_was_not_fetched(store: Store) -> None:
    stats = store.save_snapshot(snapshot(activity=[], key_activity={}), activity_fetched=False)
    assert stats.days_covered_new == 0
    assert store.covered_days(dt.date(2024, 1, 1), D) == set()
    # fetched but empty (no spend at all): the days are known to be zero
    store.save_snapshot(snapshot(activity=[], key_activity={}))
    assert store.missing_days(dt.date(2024, 5, 1), D) == []


def test_per_key_rows_are_tagged_with_their_key(store: Store) -> None:
    store.save_snapshot(snapshot(key_activity={"h1": [row(key_hash="")]}))
    assert [r.key_hash for r in store.activity(D, D, None)] == ["h1"]


def test_credits_at_gives_the_latest_snapshot_at_or_before_a_time(store: Store) -> None:
    a = Credits(Decimal("100"), Decimal("10"))
    b = Credits(Decimal("150"), Decimal("12"))
    assert store.credits_at() is None
    store.save_snapshot(Snapshot(T0, credits=a))
    store.save_snapshot(Snapshot(T0 + HOUR, credits=a))
    store.save_snapshot(Snapshot(T0 + 3 * HOUR, credits=b))
    assert count(store, "credits") == 2
    assert store.credits_at() == (T0 + 3 * HOUR, b)
    assert store.credits_at(T0 + 2 * HOUR) == (T0 + HOUR, a)
    assert store.credits_at(T0 + HOUR / 2) == (T0, a)
    assert store.credits_at(T0 + 3 * HOUR) == (T0 + 3 * HOUR, b)
    assert store.credits_at(T0 - HOUR) is None
    # an older fetch saved late slots in by time
    store.save_snapshot(Snapshot(T0 - DAY, credits=Credits(Decimal("100"), Decimal("5"))))
    assert store.credits_at(T0 - HOUR) == (T0 - DAY, Credits(Decimal("100"), Decimal("5")))
    assert store.credits_at() == (T0 + 3 * HOUR, b)
    assert store.last_sync_at() == T0 + 3 * HOUR


def test_datetimes_come_back_aware_utc(store: Store) -> None:
    store.save_snapshot(Snapshot(dt.datetime(2024, 5, 31, 14, tzinfo=dt.timezone(2 * HOUR)),
                                 credits=Credits(Decimal(1), Decimal(0))))
    store.save_snapshot(Snapshot(dt.datetime(2024, 5, 31, 13), credits=Credits(Decimal(2),
                                                                              Decimal(0))))
    got = store.credits_at()
    assert got is not None and got[0] == dt.datetime(2024, 5, 31, 13, tzinfo=UTC)
    assert got[0].utcoffset() == dt.timedelta(0)


def test_keys_latest_state_and_names(store: Store) -> None:
    store.save_snapshot(snapshot())
    renamed = snapshot(T0 + HOUR, keys=[key("h1", "production"),
                                        key("h2", "", "3", label="ci-label", disabled=True)])
    stats = store.save_snapshot(renamed)
    assert (stats.keys_new, stats.keys_updated, stats.keys_unchanged) == (0, 1, 1)
    limited = snapshot(T0 + 2 * HOUR, keys=[
        key("h1", "production", limit=Decimal("50"), limit_remaining=Decimal("39.99"))])
    assert store.save_snapshot(limited).keys_updated == 1
    assert store.key_names() == {"h1": "production", "h2": "ci-label"}
    keys = {k.hash: k for k in store.keys()}
    assert keys["h1"] == key("h1", "production", limit=Decimal("50"),
                             limit_remaining=Decimal("39.99"))
    assert keys["h2"].disabled and keys["h2"].limit is None  # not in the last fetch: kept
    assert "key_snapshots" not in {  # a snapshot per key per sync that nothing read: gone
        t for t in store.conn.tables()}
    # a late, older fetch does not overwrite the newer state
    store.save_snapshot(snapshot(T0 - DAY, keys=[key("h1", "old-name")]))
    assert store.key_names()["h1"] == "production"


def test_meta_keeps_the_last_value_set(store: Store) -> None:
    assert store.get_meta("credits.daily") is None
    store.set_meta("credits.daily", "100.5")
    store.set_meta("credits.daily", "120")
    assert store.get_meta("credits.daily") == "120"
    assert store.last_sync_at() is None


# --- outbox ------------------------------------------------------------------------------


def test_an_outbox_row_is_claimed_failed_sent_once_and_reset_only_by_force(store: Store) -> None:
    key_ = ("daily", "2024-05-30", "slack:#spend")
    assert store.outbox_get(*key_) is None
    d = store.outbox_put(*key_, '{"v": 1}', T0)
    assert (d.status, d.attempts, d.payload, d.created_at) == ("pending", 0, '{"v": 1}', T0)
    d2 = store.outbox_put(*key_, '{"v": 2}', T0 + HOUR)
    assert (d2.id, d2.payload, d2.created_at) == (d.id, '{"v": 2}', T0)

    assert store.outbox_begin(d.id, T0 + HOUR)
    got = store.outbox_get(*key_)
    assert got is not None and (got.status, got.attempts, got.last_attempt_at) == (
        "sending", 1, T0 + HOUR)
    store.outbox_failed(d.id, T0 + HOUR, "HTTP 500\n  server   error " + "x" * 1000)
    got = store.outbox_get(*key_)
    assert got is not None and got.status == "pending"
    assert got.last_error.startswith("HTTP 500 server error x") and "\n" not in got.last_error
    assert len(got.last_error) <= 300
    assert [x.id for x in store.outbox_due()] == [d.id]

    assert store.outbox_begin(d.id, T0 + 2 * HOUR)
    store.outbox_sent(d.id, T0 + 2 * HOUR, "1717000000.000100")
    sent = store.outbox_get(*key_)
    assert sent is not None
    assert (sent.status, sent.attempts, sent.sent_at, sent.ref) == (
        "sent", 2, T0 + 2 * HOUR, "1717000000.000100")
    assert store.outbox_due() == []
    assert not store.outbox_begin(d.id, T0 + 3 * HOUR)  # already sent: nothing to claim

    again = store.outbox_put(*key_, '{"v": 3}', T0 + 3 * HOUR)
    assert again == sent  # no force: untouched

    forced = store.outbox_put(*key_, '{"v": 3}', T0 + 4 * HOUR, force=True)
    assert (forced.id, forced.status, forced.attempts, forced.forced) == (d.id, "pending", 0, 1)
    assert (forced.payload, forced.created_at, forced.sent_at, forced.ref) == (
        '{"v": 3}', T0 + 4 * HOUR, None, "")


def test_a_given_up_delivery_stays_given_up_unless_forced(store: Store) -> None:
    d = store.outbox_put("weekly", "2024-W22", "email:a@example.com", "{}", T0)
    store.outbox_give_up(d.id, T0 + DAY, "undelivered for more than 1 day")
    gone = store.outbox_get("weekly", "2024-W22", "email:a@example.com")
    assert gone is not None and (gone.status, gone.last_error) == (
        "given_up", "undelivered for more than 1 day")
    assert store.outbox_due() == []
    assert store.outbox_put("weekly", "2024-W22", "email:a@example.com", "{}", T0).status == (
        "given_up")
    back = store.outbox_put("weekly", "2024-W22", "email:a@example.com", "{}", T0 + DAY,
                            force=True)
    assert (back.status, back.forced) == ("pending", 1)


def test_outbox_crash_mid_send_is_due(db_target: str) -> None:
    path = db_target
    conn = connect(path)
    first = Store(conn)
    old = first.outbox_put("daily", "2024-05-29", "slack:#spend", "{}", T0 - DAY)
    d = first.outbox_put("daily", "2024-05-30", "slack:#spend", "{}", T0)
    assert first.outbox_begin(d.id, T0)
    conn.close()  # the process dies before outbox_sent

    conn = connect(path)
    due = Store(conn).outbox_due()
    assert [(x.id, x.status) for x in due] == [(old.id, "pending"), (d.id, "sending")]
    again = Store(conn).outbox_put("daily", "2024-05-30", "slack:#spend", '{"new": 1}', T0)
    assert (again.status, again.payload) == ("sending", "{}")  # may have gone out: kept
    # a second process cannot claim it while the first may still be sending...
    assert not Store(conn).outbox_begin(d.id, T0 + dt.timedelta(minutes=1))
    # ...but can once the attempt is stale (its sender crashed)
    assert Store(conn).outbox_begin(d.id, T0 + dt.timedelta(minutes=10))
    conn.close()


# --- alert state -------------------------------------------------------------------------


def test_alert_states_are_stored_and_replaced_per_rule_and_subject(store: Store) -> None:
    assert store.alert_all() == []
    state = AlertState("low", "credits", "firing", "$4.20", T0, T0,
                       {"slack:#alerts": "1717000000.000100", "slack:#ops": "17.2"}, T0)
    store.alert_put(state)
    assert store.alert_all() == [state]
    resolved = replace(state, status="resolved", value="$50.00", last_notified_at=T0 + HOUR,
                       updated_at=T0 + HOUR)
    store.alert_put(resolved)
    other = AlertState("spike", "openai/gpt-4o", "firing", "$9", T0, T0, {}, T0)
    store.alert_put(other)
    assert store.alert_all() == [resolved, other]


# --- leases ------------------------------------------------------------------------------


def test_lease_between_two_connections(db_target: str) -> None:
    a, b = Store(connect(db_target)), Store(connect(db_target))
    ttl = dt.timedelta(minutes=5)
    assert a.lease_acquire("scheduler", "host-a:1", T0, ttl)
    assert not b.lease_acquire("scheduler", "host-b:2", T0 + dt.timedelta(minutes=1), ttl)
    assert a.lease_acquire("scheduler", "host-a:1", T0 + dt.timedelta(minutes=4), ttl)  # renew
    assert not b.lease_acquire("scheduler", "host-b:2", T0 + dt.timedelta(minutes=8), ttl)
    assert b.lease_acquire("scheduler", "host-b:2", T0 + dt.timedelta(minutes=9), ttl)  # expired
    assert not a.lease_acquire("scheduler", "host-a:1", T0 + dt.timedelta(minutes=10), ttl)
    a.lease_release("scheduler", "host-a:1")  # not the holder: no effect
    assert not a.lease_acquire("scheduler", "host-a:1", T0 + dt.timedelta(minutes=10), ttl)
    b.lease_release("scheduler", "host-b:2")
    assert a.lease_acquire("scheduler", "host-a:1", T0 + dt.timedelta(minutes=10), ttl)
    assert b.lease_acquire("other", "host-b:2", T0, ttl)  # leases are independent
    a.conn.close()
    b.conn.close()


def test_lease_on_a_locked_database_is_one_clear_error_then_succeeds(db_target: str) -> None:
    a, b = Store(connect(db_target)), Store(connect(db_target))
    b.conn.set_busy_timeout(50)
    with a.conn.write():  # another process mid-write
        with pytest.raises(DataError, match="locked"):  # one clear error, not the driver's
            b.lease_acquire("scheduler", "b", T0, HOUR)
    assert b.lease_acquire("scheduler", "b", T0, HOUR)
    assert not b.conn.in_transaction
    a.conn.close()
    b.conn.close()
