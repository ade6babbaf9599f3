"""Pure arithmetic and display formatting, checked against hand-computed figures."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest

from bot.compute import aggregate
from bot.render import fmt
from tests.rows import row

D = Decimal


def test_totals_are_exact_and_include_byok() -> None:
    rows = [row("2026-11-01", usage="0.1"), row("2026-11-01", usage="0.2", byok="0.7")]
    t = aggregate.totals(rows)
    assert t.usage == D("0.3")
    assert t.byok_usage == D("0.7")
    assert t.cost == D("1.0")
    assert t.requests == 2


def test_many_tiny_amounts_sum_exactly() -> None:
    rows = [row("2026-11-01", usage="0.000000001") for _ in range(100_000)]
    assert aggregate.totals(rows).usage == D("0.0001")


def test_ranked_by_cost_then_name() -> None:
    rows = [
        row("2026-11-01", model="b", usage="1"),
        row("2026-11-01", model="a", usage="1"),
        row("2026-11-02", model="c", usage="0.5", byok="2"),
        row("2026-11-02", model="a", usage="0.25"),
    ]
    groups = aggregate.by_model(rows)
    assert [(g.name, g.figures.cost) for g in groups] == [
        ("c", D("2.5")),
        ("a", D("1.25")),
        ("b", D("1")),
    ]


def test_by_date_fills_empty_days_in_order() -> None:
    rows = [
        row("2026-11-03", usage="2"),
        row("2026-11-01", usage="1"),
        row("2026-11-03", usage="3"),
    ]
    series = aggregate.by_date(rows, dt.date(2026, 11, 1), dt.date(2026, 11, 4))
    assert [(g.name, g.figures.cost) for g in series] == [
        ("2026-11-01", D(1)),
        ("2026-11-02", D(0)),
        ("2026-11-03", D(5)),
        ("2026-11-04", D(0)),
    ]


def test_by_key_uses_names_and_falls_back_to_hash() -> None:
    key_rows = {
        "aaaa1111bbbb2222": [row("2026-11-01", usage="3")],
        "cccc3333dddd4444": [row("2026-11-01", usage="1", byok="4")],
    }
    groups = aggregate.by_key(key_rows, {"aaaa1111bbbb2222": "prod"})
    assert [(g.name, g.ref, g.figures.cost) for g in groups] == [
        ("cccc3333dddd", "cccc3333dddd4444", D(5)),
        ("prod", "aaaa1111bbbb2222", D(3)),
    ]


def test_change_is_none_without_a_base_and_runway_is_never_negative() -> None:
    assert aggregate.change(D(110), D(100)) == D("0.1")
    assert aggregate.change(D(5), D(0)) is None  # new
    assert aggregate.change(D(0), D(0)) == 0
    assert aggregate.runway_days(D(70), D(10)) == D(7)
    assert aggregate.runway_days(D(70), D(0)) is None
    assert aggregate.runway_days(D(-5), D(10)) == D(0)


def test_latest_complete_day_waits_thirty_minutes() -> None:
    early = dt.datetime(2026, 11, 25, 0, 20, tzinfo=dt.UTC)
    later = dt.datetime(2026, 11, 25, 0, 31, tzinfo=dt.UTC)
    assert aggregate.latest_complete_day(early) == dt.date(2026, 11, 23)
    assert aggregate.latest_complete_day(later) == dt.date(2026, 11, 24)


def test_api_window_is_thirty_completed_days() -> None:
    now = dt.datetime(2026, 11, 25, 10, tzinfo=dt.UTC)
    assert aggregate.api_window(now) == (dt.date(2026, 10, 26), dt.date(2026, 11, 24))


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (D("1234.5"), "$1,234.50"),
        (D("0.004"), "<$0.01"),
        (D("0.005"), "<$0.01"),
        (D("0.015"), "$0.02"),
        (D(0), "$0.00"),
        (D("-3.456"), "-$3.46"),
        (D("-0.001"), "-<$0.01"),
        (D("1000000"), "$1,000,000.00"),
        (None, "n/a"),
    ],
)
def test_money_is_dollars_and_cents_with_under_a_cent_shown_as_such(
    value: Decimal | None, text: str,
) -> None:
    assert fmt.money(value) == text


@pytest.mark.parametrize(
    ("current", "previous", "text"),
    [
        (D("112.3"), D(100), "+12.3%"),
        (D(96), D(100), "-4.0%"),
        (D(5), D(0), "new"),
        (D(0), D(0), "0.0%"),
        (D(100), D(100), "0.0%"),
        (D(0), D(10), "-100.0%"),
        (D("100.04"), D(100), "0.0%"),
        (D("99.95"), D(100), "-0.1%"),
    ],
)
def test_change_reads_as_a_signed_percentage_or_new(
    current: Decimal, previous: Decimal, text: str,
) -> None:
    assert fmt.change(aggregate.change(current, previous)) == text


@pytest.mark.parametrize(
    ("ratio", "trend"),
    [(None, "up"), (D("0.1"), "up"), (D("-0.04"), "down"), (D("0.0004"), "flat"), (D(0), "flat")],
)
def test_trend_follows_the_change_as_shown(ratio: Decimal | None, trend: str) -> None:
    assert fmt.trend(ratio) == trend


def test_days_label_stops_at_365_and_any_spend_gets_a_bar() -> None:
    assert fmt.days_label(D("12.345")) == "12.3 days"
    assert fmt.days_label(D(400)) == ">365 days"
    assert fmt.days_label(None) == "n/a"
    assert fmt.bar(D(10), D(10), width=10) == "█" * 10
    assert fmt.bar(D("0.001"), D(10), width=10) == "█"
    assert fmt.bar(D(0), D(10)) == ""
