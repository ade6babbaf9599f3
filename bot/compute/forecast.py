"""Budget periods and spend forecasts: the current pace, weighted by weekday, to a period's end.

A period is a UTC day, a Monday-based UTC week or a UTC calendar month (OpenRouter's own
windows for a key's ``usage_daily`` / ``usage_weekly`` / ``usage_monthly``). A forecast takes
what was spent so far in the period, the recent daily *level* (the average of the last 7
completed days, which hold each weekday once) and per-weekday *weights* (each weekday's share of
the last 4 weeks), and projects the rest of the period day by day: a quiet weekend ahead
lowers the projection, a busy Monday raises it. Pure numbers: nothing here reads a clock.
"""

from __future__ import annotations

import calendar
import datetime as dt
import statistics
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Literal

from bot.models import DAY, ZERO, ActivityRow

PeriodKind = Literal["day", "week", "month"]
ONE = Decimal(1)
SECONDS_A_DAY = Decimal(86400)
WEEKS = 4  # how many weeks of history shape the weekday weights
LEVEL_DAYS = 7  # the pace is the average of this many completed days


@dataclass(frozen=True)
class Span:
    """One budget period: UTC days `start`..`end` inclusive."""

    kind: PeriodKind
    start: dt.date
    end: dt.date

    @property
    def key(self) -> str:
        """A stable name for the period: `2026-11-25`, `2026-W48`, `2026-11`."""
        if self.kind == "day":
            return self.start.isoformat()
        if self.kind == "week":
            year, week, _ = self.start.isocalendar()
            return f"{year}-W{week:02d}"
        return f"{self.start:%Y-%m}"

    @property
    def days(self) -> int:
        return (self.end - self.start).days + 1


def span_of(kind: PeriodKind, day: dt.date) -> Span:
    """The period of `kind` holding UTC day `day`."""
    if kind == "day":
        return Span(kind, day, day)
    if kind == "week":
        start = day - DAY * day.weekday()
        return Span(kind, start, start + DAY * 6)
    last = calendar.monthrange(day.year, day.month)[1]
    return Span(kind, day.replace(day=1), day.replace(day=last))


def day_fraction(now: dt.datetime) -> Decimal:
    """How much of the current UTC day has passed, 0..1."""
    utc = now.astimezone(dt.UTC)
    midnight = utc.replace(hour=0, minute=0, second=0, microsecond=0)
    return Decimal((utc - midnight).total_seconds()) / SECONDS_A_DAY


def daily_costs(rows: Iterable[ActivityRow]) -> dict[dt.date, Decimal]:
    """Cost per UTC day."""
    out: dict[dt.date, Decimal] = {}
    for r in rows:
        out[r.date] = out.get(r.date, ZERO) + r.cost
    return out


def level(daily: Mapping[dt.date, Decimal], end: dt.date, days: int = LEVEL_DAYS) -> Decimal:
    """The average daily cost of the `days` UTC days ending `end` (days without spend are 0)."""
    return sum((daily.get(end - DAY * i, ZERO) for i in range(days)), ZERO) / days


def weekday_weights(
    daily: Mapping[dt.date, Decimal], end: dt.date, weeks: int = WEEKS
) -> tuple[Decimal, ...]:
    """Each weekday's (Monday first) average cost over the `weeks` weeks ending `end`, divided by
    the average day's: 1 everywhere when nothing was spent."""
    sums = [ZERO] * 7
    for i in range(weeks * 7):
        day = end - DAY * i
        sums[day.weekday()] += daily.get(day, ZERO)
    total = sum(sums, ZERO)
    if total <= 0:
        return (ONE,) * 7
    return tuple(s * 7 / total for s in sums)


def weekday_median(
    daily: Mapping[dt.date, Decimal], day: dt.date, weeks: int = WEEKS
) -> Decimal:
    """The median cost of the `weeks` same weekdays before `day` (robust to one odd week)."""
    values = [daily.get(day - DAY * 7 * i, ZERO) for i in range(1, weeks + 1)]
    return Decimal(statistics.median(values))


@dataclass(frozen=True)
class Projection:
    """Where a period's spend is heading: `total` at its end and the first UTC day on which
    it passes `limit` (None when it stays within)."""

    spent: Decimal  # so far in the period
    total: Decimal  # projected at the period's end
    limit: Decimal
    crossing: dt.date | None
    level: Decimal  # the daily pace the projection used
    end: dt.date

    @property
    def over(self) -> bool:
        return self.total > self.limit


def project(
    spent: Decimal,
    *,
    limit: Decimal,
    first: dt.date,
    first_done: Decimal,
    end: dt.date,
    pace: Decimal,
    weights: tuple[Decimal, ...],
) -> Projection:
    """Project `spent` (everything known so far) over the days `first`..`end`.

    `first_done` is the part of day `first` already counted in `spent` (0..1: the fraction of
    today that has passed when today's spend so far is known, 0 when it is not). Each day
    adds `pace` times its weekday's weight. `crossing` is the first day the running total
    passes `limit` (the day `first` when it is already past).
    """
    total = spent
    crossing = first if spent > limit else None
    day = first
    while day <= end:
        share = ONE - first_done if day == first else ONE
        total += pace * weights[day.weekday()] * max(share, ZERO)
        if crossing is None and total > limit:
            crossing = day
        day += DAY
    return Projection(spent, total, limit, crossing, pace, end)


def first_over(daily: Mapping[dt.date, Decimal], start: dt.date, end: dt.date,
               limit: Decimal, *, reach: bool = False) -> dt.date | None:
    """The first UTC day in `start`..`end` on which the running total of `daily` passed
    `limit` (with `reach`, reached it: a key's limit stops it there); None when it did not:
    the day a budget or limit was actually crossed."""
    total, day = ZERO, start
    while day <= end:
        total += daily.get(day, ZERO)
        if total > limit or (reach and total >= limit):
            return day
        day += DAY
    return None
