"""Pure builders of the daily digest and the weekly report from history rows (SPEC 6).

Inputs are activity rows (org-wide and per key), keys, credits and the day reported on; the
outputs are plain dataclasses that templates render. Nothing here does I/O or reads a clock.
"""

from __future__ import annotations

import calendar
import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal

from bot.compute import aggregate
from bot.compute.aggregate import DAY, Figures, Group
from bot.compute.cost_review import CostReview, review
from bot.compute.explain import Explanation, attributed, explain
from bot.compute.usage import NO_WORKSPACE, spenders
from bot.models import ZERO, ActivityRow, ApiKey, Credits


@dataclass(frozen=True)
class Line:
    """One spender (model, provider or key) with its cost now and in the comparison period."""

    name: str
    cost: Decimal
    byok: Decimal
    previous: Decimal
    ref: str = ""

    @property
    def delta(self) -> Decimal:
        return self.cost - self.previous

    @property
    def change(self) -> Decimal | None:
        """Relative change against the comparison period; None for a new spender."""
        return aggregate.change(self.cost, self.previous)


@dataclass(frozen=True)
class Ranking:
    """The top lines of a breakdown and how many more there were."""

    lines: list[Line]
    more: int = 0

    @property
    def total(self) -> int:
        return len(self.lines) + self.more


@dataclass(frozen=True)
class Balance:
    """Credits, runway and top-ups, shared by the digest and the weekly report."""

    credits: Credits | None
    avg_daily_usage: Decimal  # OpenRouter usage only (no BYOK), last 7 days
    runway_days: Decimal | None
    credits_added: Decimal = ZERO


@dataclass(frozen=True)
class DailyDigest:
    day: dt.date
    as_of: dt.datetime
    spend: Figures
    previous: Figures
    avg7: Decimal
    today_so_far: Figures | None
    balance: Balance
    models: Ranking
    providers: Ranking
    keys: Ranking
    new_models: list[str]
    chart: list[Group]
    top: int
    # the change against the day before by key x model (volume, mix, price): when per-key
    # history covers both days
    why: Explanation | None = None
    # spend per workspace against the day before: only when the account has several
    workspaces: Ranking | None = None

    @property
    def previous_day(self) -> dt.date:
        return self.day - DAY

    @property
    def change_vs_previous(self) -> Decimal | None:
        return aggregate.change(self.spend.cost, self.previous.cost)

    @property
    def change_vs_avg(self) -> Decimal | None:
        return aggregate.change(self.spend.cost, self.avg7)

    @property
    def empty(self) -> bool:
        return self.spend.cost == 0 and self.spend.requests == 0


@dataclass(frozen=True)
class WeeklyReport:
    start: dt.date
    end: dt.date
    as_of: dt.datetime
    spend: Figures
    previous: Figures
    models: Ranking
    providers: Ranking
    keys: Ranking
    movers: list[Line]
    new_models: list[str]
    month_to_date: Decimal
    month_projection: Decimal
    month_days_elapsed: int
    balance: Balance
    chart: list[Group]
    rows: list[ActivityRow] = field(default_factory=list)
    top: int = 10
    cost_review: CostReview | None = None
    # spend per workspace against the week before: only when the account has several
    workspaces: Ranking | None = None

    @property
    def change(self) -> Decimal | None:
        """Week over week; None when the previous week had no spend."""
        return aggregate.change(self.spend.cost, self.previous.cost)

    @property
    def empty(self) -> bool:
        return self.spend.cost == 0 and self.spend.requests == 0


def _ranking(
    current: dict[str, Figures],
    previous: dict[str, Figures],
    top: int,
    refs: dict[str, str] | None = None,
) -> Ranking:
    lines = [
        Line(
            name,
            fig.cost,
            fig.byok_usage,
            previous[name].cost if name in previous else ZERO,
            (refs or {}).get(name, ""),
        )
        for name, fig in current.items()
        if fig.cost or fig.requests
    ]
    lines.sort(key=lambda line: (-line.cost, line.name))
    return Ranking(lines[:top], max(len(lines) - top, 0))


def _key_groups(
    key_rows: dict[str, list[ActivityRow]], names: dict[str, str], start: dt.date, end: dt.date
) -> tuple[dict[str, Figures], dict[str, str]]:
    """Per-key figures in [start, end] by display name (names made unique), and name -> hash."""
    figures: dict[str, Figures] = {}
    refs: dict[str, str] = {}
    for key_hash in sorted(key_rows):
        name = names.get(key_hash) or key_hash[:12]
        if name in refs and refs[name] != key_hash:
            name = f"{name} ({key_hash[:8]})"
        refs[name] = key_hash
        figures[name] = aggregate.totals(aggregate.in_range(key_rows[key_hash], start, end))
    return figures, refs


@dataclass(frozen=True)
class Workspaces:
    """Where each key lives (key hash -> workspace id, "" unknown) and each workspace's name."""

    of_key: dict[str, str]
    names: dict[str, str]


def _workspace_ranking(
    key_rows: dict[str, list[ActivityRow]],
    spaces: Workspaces | None,
    current: tuple[dt.date, dt.date],
    previous: tuple[dt.date, dt.date],
    top: int,
) -> Ranking | None:
    """Spend per workspace in `current` against `previous`, from each key's rows (spend of a
    key of no known workspace, e.g. spend without a key, under "(no workspace)"); None when
    the account has fewer than two workspaces."""
    if spaces is None or len(spaces.names) < 2:
        return None

    def fold(start: dt.date, end: dt.date) -> dict[str, Figures]:
        figures: dict[str, Figures] = {}
        for key_hash, rows in key_rows.items():
            fig = figures.setdefault(spaces.of_key.get(key_hash, ""), Figures())
            for r in aggregate.in_range(rows, start, end):
                fig.add(r)
        return figures

    now, before = fold(*current), fold(*previous)
    groups = spenders(now, {"": NO_WORKSPACE, **spaces.names})
    lines = [Line(g.name, g.figures.cost, g.figures.byok_usage,
                  before[g.ref].cost if g.ref in before else ZERO, g.ref) for g in groups]
    return Ranking(lines[:top], max(len(lines) - top, 0))


def _new_models(
    rows: Iterable[ActivityRow], start: dt.date, end: dt.date, before_start: dt.date
) -> list[str]:
    """Models used in [start, end] that were not used in [before_start, start)."""
    now_used: set[str] = set()
    before: set[str] = set()
    for r in rows:
        if start <= r.date <= end and (r.cost or r.requests):
            now_used.add(r.model)
        elif before_start <= r.date < start:
            before.add(r.model)
    return sorted(now_used - before)


def balance(
    credits: Credits | None,
    rows: list[ActivityRow],
    end: dt.date,
    previous_total_credits: Decimal | None,
) -> Balance:
    """Runway = remaining credits / average daily OpenRouter usage of the 7 days ending `end`."""
    week = aggregate.totals(aggregate.in_range(rows, end - DAY * 6, end))
    avg = week.usage / 7
    runway = aggregate.runway_days(credits.remaining, avg) if credits else None
    added = ZERO
    if credits and previous_total_credits is not None:
        added = max(credits.total_credits - previous_total_credits, ZERO)
    return Balance(credits, avg, runway, added)


def today_so_far(keys: list[ApiKey]) -> Figures | None:
    """The current UTC day's spend so far: the sum of every key's daily usage."""
    if not keys:
        return None
    fig = Figures()
    for k in keys:
        fig.usage += k.usage_daily
        fig.byok_usage += k.byok_usage_daily
    return fig


def build_daily(
    day: dt.date,
    *,
    as_of: dt.datetime,
    rows: list[ActivityRow],
    key_rows: dict[str, list[ActivityRow]],
    key_names: dict[str, str],
    keys: list[ApiKey],
    credits: Credits | None,
    previous_total_credits: Decimal | None = None,
    top: int = 5,
    detail: list[ActivityRow] | None = None,
    workspaces: Workspaces | None = None,
) -> DailyDigest:
    """The daily digest for UTC day `day`; `rows` should cover day-13 .. day. `detail`: the
    key x model rows of the day and the day before (None when history lacks either day), to
    explain the change between them when they account for both days' spend. `workspaces`:
    where each key lives, for spend per workspace when there are several."""
    prev_day = day - DAY
    on_day = aggregate.in_range(rows, day, day)
    on_prev = aggregate.in_range(rows, prev_day, prev_day)
    trailing = aggregate.totals(aggregate.in_range(rows, day - DAY * 7, prev_day))
    kc, refs = _key_groups(key_rows, key_names, day, day)
    kp, _ = _key_groups(key_rows, key_names, prev_day, prev_day)
    by_model = lambda rs: aggregate.group_by(rs, lambda r: r.model)  # noqa: E731
    by_provider = lambda rs: aggregate.group_by(rs, lambda r: r.provider)  # noqa: E731
    return DailyDigest(
        day=day,
        as_of=as_of,
        spend=aggregate.totals(on_day),
        previous=aggregate.totals(on_prev),
        avg7=trailing.cost / 7,
        today_so_far=today_so_far(keys),
        balance=balance(credits, rows, day, previous_total_credits),
        models=_ranking(by_model(on_day), by_model(on_prev), top),
        providers=_ranking(by_provider(on_day), by_provider(on_prev), top),
        keys=_ranking(kc, kp, top, refs),
        new_models=_new_models(rows, day, day, day - DAY * 7),
        chart=aggregate.by_date(rows, day - DAY * 13, day),
        top=top,
        why=_why(day, rows, detail, key_names),
        workspaces=_workspace_ranking(key_rows, workspaces, (day, day), (prev_day, prev_day),
                                      top),
    )


def _why(day: dt.date, rows: list[ActivityRow], detail: list[ActivityRow] | None,
         names: dict[str, str]) -> Explanation | None:
    """The change of `day` against the day before, by key x model; None when per-key rows
    do not account for both days' spend or nothing changed."""
    prev_day = day - DAY
    if detail is None or not attributed(detail, rows, (prev_day, day)):
        return None
    x = explain([r for r in detail if r.date == day], [r for r in detail if r.date == prev_day],
                names)
    return x if x.delta and x.contributors else None


def build_weekly(
    end: dt.date,
    *,
    as_of: dt.datetime,
    rows: list[ActivityRow],
    key_rows: dict[str, list[ActivityRow]],
    key_names: dict[str, str],
    credits: Credits | None,
    previous_total_credits: Decimal | None = None,
    top: int = 10,
    key_model_rows: list[ActivityRow] | None = None,
    workspaces: Workspaces | None = None,
) -> WeeklyReport:
    """The weekly report for the 7 UTC days ending `end`; `rows` should cover the 14 days
    before and the month of `end`; `key_model_rows` (per key and model) name the key behind
    each pricey model in the cost review; `workspaces`: where each key lives, for spend per
    workspace when there are several."""
    start = end - DAY * 6
    prev_start, prev_end = start - DAY * 7, start - DAY
    week = aggregate.in_range(rows, start, end)
    prev = aggregate.in_range(rows, prev_start, prev_end)
    kc, refs = _key_groups(key_rows, key_names, start, end)
    kp, _ = _key_groups(key_rows, key_names, prev_start, prev_end)
    models_now = aggregate.group_by(week, lambda r: r.model)
    models_prev = aggregate.group_by(prev, lambda r: r.model)
    all_models = _ranking(models_now, models_prev, len(models_now) + 1)
    movers = sorted(
        (line for line in all_models.lines if line.delta > 0),
        key=lambda line: (-line.delta, line.name),
    )[:top]
    month_start = end.replace(day=1)
    mtd = aggregate.totals(aggregate.in_range(rows, month_start, end)).cost
    elapsed = (end - month_start).days + 1
    month_days = calendar.monthrange(end.year, end.month)[1]
    return WeeklyReport(
        start=start,
        end=end,
        as_of=as_of,
        spend=aggregate.totals(week),
        previous=aggregate.totals(prev),
        models=_ranking(models_now, models_prev, top),
        providers=_ranking(
            aggregate.group_by(week, lambda r: r.provider),
            aggregate.group_by(prev, lambda r: r.provider),
            top,
        ),
        keys=_ranking(kc, kp, top, refs),
        movers=movers,
        new_models=_new_models(rows, start, end, prev_start),
        month_to_date=mtd,
        month_projection=mtd / elapsed * month_days,
        month_days_elapsed=elapsed,
        balance=balance(credits, rows, end, previous_total_credits),
        chart=aggregate.by_date(rows, prev_start, end),
        rows=sorted(week, key=lambda r: (r.date, -r.cost, r.model, r.endpoint_id)),
        top=top,
        cost_review=review(week, aggregate.in_range(key_model_rows or [], start, end),
                           key_names),
        workspaces=_workspace_ranking(key_rows, workspaces, (start, end), (prev_start, prev_end),
                                      top),
    )
