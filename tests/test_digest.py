"""Digest and weekly-report figures on awkward data, against hand-computed expectations."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

from bot.compute.digest import build_daily, build_weekly
from bot.models import ApiKey, Credits
from tests.rows import row

D = Decimal
AS_OF = dt.datetime(2026, 11, 25, 9, 0, tzinfo=dt.UTC)
DAY = dt.date(2026, 11, 24)


def day(offset: int) -> str:
    return (DAY - dt.timedelta(days=offset)).isoformat()


def test_daily_figures() -> None:
    rows = [row(day(i), usage="10") for i in range(1, 8)]  # 7 days of $10
    rows += [row(day(0), usage="12", byok="3"), row(day(0), model="new/model", usage="0.004")]
    rows += [row(day(13), model="old/model", usage="1")]  # 13 days ago: not "before" the 7
    key_rows = {"h1": [row(day(0), usage="12", key="h1"), row(day(1), usage="10", key="h1")],
                "h2": [row(day(0), byok="3", key="h2")],
                "h3": [row(day(5), usage="1", key="h3")]}  # no spend on the day: not listed
    keys = [ApiKey(hash="h1", name="prod", usage_daily=D("2.5")),
            ApiKey(hash="h2", name="prod", usage_daily=D("0.5"), byok_usage_daily=D(1))]
    d = build_daily(DAY, as_of=AS_OF, rows=rows, key_rows=key_rows,
                    key_names={"h1": "prod", "h2": "prod"}, keys=keys,
                    credits=Credits(D(500), D(430)), previous_total_credits=D(400), top=5)
    assert d.spend.cost == D("15.004") and d.spend.byok_usage == D(3)
    assert d.previous.cost == D(10)
    assert d.avg7 == D(10)
    assert d.change_vs_previous == D("0.5004") and d.change_vs_avg == D("0.5004")
    assert d.today_so_far is not None and d.today_so_far.cost == D(4)
    # runway: $70 left / average daily usage of the 7 days ending D ((6*10 + 12.004) / 7)
    assert d.balance.avg_daily_usage == D("72.004") / 7
    assert d.balance.runway_days == D(70) / (D("72.004") / 7)
    assert d.balance.credits_added == D(100)
    assert d.new_models == ["new/model"]
    assert [(line.name, line.cost, line.change) for line in d.models.lines] == [
        ("openai/gpt-4o", D(15), D("0.5")), ("new/model", D("0.004"), None)]
    # two keys share a name: both listed, told apart by their hash
    assert [line.name for line in d.keys.lines] == ["prod", "prod (h2)"]
    assert [line.ref for line in d.keys.lines] == ["h1", "h2"]
    assert len(d.chart) == 14 and d.chart[0].name == day(13) and d.chart[-1].name == day(0)


def test_daily_empty_day_and_no_credits() -> None:
    d = build_daily(DAY, as_of=AS_OF, rows=[row(day(1), usage="5")], key_rows={}, key_names={},
                    keys=[], credits=None)
    assert d.empty and d.spend.cost == 0
    assert d.change_vs_previous == D(-1) and d.change_vs_avg == D(-1)
    assert d.today_so_far is None and d.balance.runway_days is None
    assert d.models.total == 0 and d.new_models == []


def test_credits_added_never_negative() -> None:
    d = build_daily(DAY, as_of=AS_OF, rows=[], key_rows={}, key_names={}, keys=[],
                    credits=Credits(D(100), D(10)), previous_total_credits=D(150))
    assert d.balance.credits_added == 0


def test_weekly_figures_movers_and_month_projection() -> None:
    rows = []
    for i in range(7):  # this week (Nov 18-24): a $2/day, b $1/day, c new at $0.5
        rows += [row(day(i), model="a", usage="2"), row(day(i), model="b", usage="1"),
                 row(day(i), model="c", usage="0.5")]
    for i in range(7, 14):  # week before (Nov 11-17): a $1/day, b $3/day
        rows += [row(day(i), model="a", usage="1"), row(day(i), model="b", usage="3")]
    w = build_weekly(DAY, as_of=AS_OF, rows=rows, key_rows={}, key_names={},
                     credits=Credits(D(100), D(30)), top=10)
    assert (w.start, w.end) == (dt.date(2026, 11, 18), DAY)
    assert w.spend.cost == D("24.5") and w.previous.cost == D(28)
    assert w.change == D("-0.125")
    assert [(m.name, m.delta) for m in w.movers] == [("a", D(7)), ("c", D("3.5"))]
    assert w.new_models == ["c"]
    # month to date: Nov 1-24 holds Nov 11-24 only = 28 + 24.5
    assert w.month_to_date == D("52.5") and w.month_days_elapsed == 24
    assert w.month_projection == D("52.5") / 24 * 30
    assert len(w.rows) == 21 and len(w.chart) == 14
    assert w.balance.runway_days == D(70) / (D("24.5") / 7)
