"""Pure builders of the slash command's and the App Home's figures, from history rows.

They use the digests' compute (aggregate, digest.Balance, Line, Ranking), so an answer and a
digest about the same days show the same figures. Nothing here does I/O or reads a clock.
"""

from __future__ import annotations

import calendar
import datetime as dt
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from decimal import Decimal

from bot.compute import aggregate
from bot.compute.aggregate import DAY, Figures, Group
from bot.compute.digest import Balance, Line, Ranking, balance, today_so_far
from bot.models import ZERO, ActivityRow, AlertState, ApiKey, Credits, Silence

CHART_DAYS = 14


def rank(
    current: Mapping[str, Figures],
    previous: Mapping[str, Figures],
    top: int,
    refs: Mapping[str, str] | None = None,
) -> Ranking:
    """Spenders by cost (largest first, ties by name), each with its cost in `previous`."""
    lines = [
        Line(name, fig.cost, fig.byok_usage,
             previous[name].cost if name in previous else ZERO, (refs or {}).get(name, ""))
        for name, fig in current.items()
        if fig.cost or fig.requests
    ]
    lines.sort(key=lambda line: (-line.cost, line.name))
    return Ranking(lines[:top], max(len(lines) - top, 0))


def _by(rows: list[ActivityRow], what: str) -> dict[str, Figures]:
    return aggregate.group_by(rows, lambda r: str(getattr(r, what)))


# --- today --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Today:
    """The current UTC day so far (from the keys' daily usage) beside the last complete day."""

    day: dt.date
    as_of: dt.datetime  # when the keys' figures were read
    live: bool  # read from OpenRouter for this answer (else from the last sync)
    spend: Figures | None
    keys: Ranking  # keys by today's cost so far (no comparison: the day is not over)
    last_day: dt.date
    last_day_spend: Figures
    balance: Balance


def build_today(
    *, now: dt.datetime, keys: list[ApiKey], keys_as_of: dt.datetime, live: bool,
    names: Mapping[str, str], rows: list[ActivityRow], credits: Credits | None, top: int,
) -> Today:
    """`rows`: org-wide history covering the 7 days before today."""
    last_day = aggregate.latest_complete_day(now)
    per_key = {}
    for key in keys:
        fig = Figures(usage=key.usage_daily, byok_usage=key.byok_usage_daily)
        if fig.cost:
            per_key[names.get(key.hash, key.display_name)] = fig
    return Today(
        day=now.astimezone(dt.UTC).date(),
        as_of=keys_as_of,
        live=live,
        spend=today_so_far(keys),
        keys=rank(per_key, {}, top),
        last_day=last_day,
        last_day_spend=aggregate.totals(aggregate.in_range(rows, last_day, last_day)),
        balance=balance(credits, rows, last_day, None),
    )


# --- month --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Month:
    """Month to date (UTC days) against the same days of the month before, and a projection."""

    start: dt.date
    end: dt.date
    as_of: dt.datetime
    spend: Figures
    previous_start: dt.date
    previous_end: dt.date
    previous: Figures  # the same days of the previous month
    previous_month: Figures  # the whole previous month
    projection: Decimal
    days_elapsed: int
    month_days: int
    models: Ranking
    keys: Ranking
    chart: list[Group]
    missing: int = 0  # days of this month so far the history does not hold
    previous_missing: int = 0  # ... of the same days of the previous month
    previous_month_missing: int = 0  # ... of the whole previous month

    @property
    def comparable(self) -> bool:
        """Whether the history holds every one of the previous month's same days."""
        return self.previous_missing == 0

    @property
    def change(self) -> Decimal | None:
        """Against the same days of the previous month."""
        return aggregate.change(self.spend.cost, self.previous.cost)


def month_bounds(end: dt.date) -> tuple[dt.date, dt.date, dt.date, dt.date]:
    """For UTC day `end`: its month's first day, the previous month's first day, the same day
    of the previous month (its last day when shorter) and the previous month's last day."""
    start = end.replace(day=1)
    prev_last = start - DAY
    prev_start = prev_last.replace(day=1)
    return start, prev_start, prev_start.replace(day=min(end.day, prev_last.day)), prev_last


def build_month(
    end: dt.date, *, as_of: dt.datetime, rows: list[ActivityRow],
    key_rows: Mapping[str, list[ActivityRow]], names: Mapping[str, str], top: int,
    missing: Collection[dt.date] = (),
) -> Month:
    """The month of UTC day `end`, up to `end`; `rows` cover the previous month onwards and
    `missing` lists the days of that span the history does not hold."""
    start, prev_start, prev_same, prev_last = month_bounds(end)
    now_rows = aggregate.in_range(rows, start, end)
    prev_rows = aggregate.in_range(rows, prev_start, prev_same)
    spend = aggregate.totals(now_rows)
    elapsed = (end - start).days + 1
    month_days = calendar.monthrange(end.year, end.month)[1]
    key_now = {names.get(h, h[:12]): aggregate.totals(aggregate.in_range(rs, start, end))
               for h, rs in key_rows.items()}
    key_prev = {names.get(h, h[:12]): aggregate.totals(aggregate.in_range(rs, prev_start,
                                                                          prev_same))
                for h, rs in key_rows.items()}
    return Month(
        start=start, end=end, as_of=as_of, spend=spend,
        previous_start=prev_start, previous_end=prev_same,
        previous=aggregate.totals(prev_rows),
        previous_month=aggregate.totals(aggregate.in_range(rows, prev_start, prev_last)),
        projection=spend.cost / elapsed * month_days,
        days_elapsed=elapsed, month_days=month_days,
        models=rank(_by(now_rows, "model"), _by(prev_rows, "model"), top),
        keys=rank(key_now, key_prev, top),
        chart=aggregate.by_date(rows, start, end),
        missing=sum(start <= d <= end for d in missing),
        previous_missing=sum(prev_start <= d <= prev_same for d in missing),
        previous_month_missing=sum(prev_start <= d <= prev_last for d in missing),
    )


# --- one key, one model --------------------------------------------------------------------


@dataclass(frozen=True)
class Period:
    """Spend on the last complete day and in the 7 days ending it, with what came before."""

    day: dt.date
    on_day: Figures
    day_before: Figures
    week: Figures
    previous_week: Figures

    @property
    def week_start(self) -> dt.date:
        return self.day - DAY * 6

    @property
    def day_change(self) -> Decimal | None:
        return aggregate.change(self.on_day.cost, self.day_before.cost)

    @property
    def week_change(self) -> Decimal | None:
        return aggregate.change(self.week.cost, self.previous_week.cost)


def period(rows: list[ActivityRow], day: dt.date) -> Period:
    return Period(
        day=day,
        on_day=aggregate.totals(aggregate.in_range(rows, day, day)),
        day_before=aggregate.totals(aggregate.in_range(rows, day - DAY, day - DAY)),
        week=aggregate.totals(aggregate.in_range(rows, day - DAY * 6, day)),
        previous_week=aggregate.totals(aggregate.in_range(rows, day - DAY * 13, day - DAY * 7)),
    )


@dataclass(frozen=True)
class KeyDetail:
    key: ApiKey
    name: str  # as people read it, told apart from keys of the same name
    workspace: str
    figures: Period
    models: Ranking  # this week against the week before
    chart: list[Group]
    has_history: bool


def build_key(
    key: ApiKey, *, name: str, workspace: str, rows: list[ActivityRow], day: dt.date, top: int,
) -> KeyDetail:
    """One key; `rows` are its own activity covering day-13 .. day."""
    week = aggregate.in_range(rows, day - DAY * 6, day)
    prev = aggregate.in_range(rows, day - DAY * 13, day - DAY * 7)
    return KeyDetail(
        key=key, name=name, workspace=workspace, figures=period(rows, day),
        models=rank(_by(week, "model"), _by(prev, "model"), top),
        chart=aggregate.by_date(rows, day - DAY * (CHART_DAYS - 1), day),
        has_history=bool(rows),
    )


@dataclass(frozen=True)
class WorkspaceDetail:
    name: str
    id: str
    key_count: int
    figures: Period
    keys: Ranking  # this week against the week before
    models: Ranking
    chart: list[Group]


def build_workspace(
    name: str, workspace_id: str, *, key_rows: Mapping[str, list[ActivityRow]],
    names: Mapping[str, str], key_count: int, day: dt.date, top: int,
) -> WorkspaceDetail:
    """One workspace from its keys' rows (per key, day and model) covering day-13 .. day."""
    rows = [r for krows in key_rows.values() for r in krows]
    week = aggregate.in_range(rows, day - DAY * 6, day)
    prev = aggregate.in_range(rows, day - DAY * 13, day - DAY * 7)
    keys_now = {names.get(h, h[:12]): aggregate.totals(aggregate.in_range(rs, day - DAY * 6, day))
                for h, rs in key_rows.items()}
    keys_prev = {names.get(h, h[:12]): aggregate.totals(
        aggregate.in_range(rs, day - DAY * 13, day - DAY * 7)) for h, rs in key_rows.items()}
    return WorkspaceDetail(
        name=name, id=workspace_id, key_count=key_count, figures=period(rows, day),
        keys=rank(keys_now, keys_prev, top),
        models=rank(_by(week, "model"), _by(prev, "model"), top),
        chart=aggregate.by_date(rows, day - DAY * (CHART_DAYS - 1), day),
    )


def workspace_ranking(
    key_rows: Mapping[str, list[ActivityRow]], workspace_of: Mapping[str, str],
    workspace_names: Mapping[str, str], day: dt.date, top: int,
) -> Ranking:
    """Workspaces by cost in the 7 days ending `day`, against the 7 before; `key_rows` are
    each key's rows, `workspace_of` maps a key to its workspace id."""
    from bot.compute.usage import NO_WORKSPACE

    now: dict[str, Figures] = {}
    before: dict[str, Figures] = {}
    for key_hash, rows in key_rows.items():
        ws = workspace_of.get(key_hash, "")
        name = workspace_names.get(ws) or (ws[:12] if ws else NO_WORKSPACE)
        for row in rows:
            if day - DAY * 6 <= row.date <= day:
                now.setdefault(name, Figures()).add(row)
            elif day - DAY * 13 <= row.date <= day - DAY * 7:
                before.setdefault(name, Figures()).add(row)
    return rank(now, before, top)


@dataclass(frozen=True)
class ModelDetail:
    name: str
    figures: Period
    providers: Ranking
    keys: Ranking
    chart: list[Group]


def build_model(
    model: str, *, rows: list[ActivityRow], key_rows: Mapping[str, list[ActivityRow]],
    names: Mapping[str, str], day: dt.date, top: int,
) -> ModelDetail:
    """One model from org-wide `rows` and per-key `key_rows` covering day-13 .. day."""
    mine = [r for r in rows if r.model == model]
    week = aggregate.in_range(mine, day - DAY * 6, day)
    prev = aggregate.in_range(mine, day - DAY * 13, day - DAY * 7)
    keys_now: dict[str, Figures] = {}
    keys_prev: dict[str, Figures] = {}
    for key_hash, krows in key_rows.items():
        used = [r for r in krows if r.model == model]
        label = names.get(key_hash, key_hash[:12])
        keys_now[label] = aggregate.totals(aggregate.in_range(used, day - DAY * 6, day))
        keys_prev[label] = aggregate.totals(
            aggregate.in_range(used, day - DAY * 13, day - DAY * 7))
    return ModelDetail(
        name=model, figures=period(mine, day),
        providers=rank(_by(week, "provider"), _by(prev, "provider"), top),
        keys=rank(keys_now, keys_prev, top),
        chart=aggregate.by_date(mine, day - DAY * (CHART_DAYS - 1), day),
    )


# --- alerts -------------------------------------------------------------------------------


@dataclass(frozen=True)
class AlertLine:
    """A firing alert as the `alerts` answer and the App Home list it."""

    rule_id: str
    kind: str
    subject: str
    subject_name: str  # "" for the account as a whole
    value: str  # as stored: a plain number in the rule's unit (older databases: formatted)
    since: dt.datetime
    last_notified_at: dt.datetime
    acked_by: str = ""
    acked_at: dt.datetime | None = None
    snoozed_until: dt.datetime | None = None
    snoozed_by: str = ""

    @property
    def acknowledged(self) -> bool:
        return self.acked_at is not None

    @property
    def figure(self) -> Decimal | None:
        """The stored value as a number (None when there is none, or it is older text)."""
        try:
            return Decimal(self.value) if self.value else None
        except ArithmeticError:
            return None


@dataclass(frozen=True)
class Home:
    """The App Home: balance, today so far, this month against the last, firing alerts."""

    as_of: dt.datetime | None  # the last sync
    now: dt.datetime
    balance: Balance
    today: Figures | None
    month: Month
    alerts: list[AlertLine] = field(default_factory=list)
    interactive: bool = True


def alert_lines(
    states: list[AlertState],
    kinds: Mapping[str, str],
    names: Mapping[str, str],
    silences: Mapping[tuple[str, str], Silence],
    now: dt.datetime,
) -> list[AlertLine]:
    """The firing alerts, newest first, with their acknowledgement (of this episode) and
    snooze (while in force)."""
    from bot.compute.silence import acknowledged, snoozed

    out = []
    for st in states:
        if st.status != "firing":
            continue
        sil = silences.get((st.rule_id, st.subject))
        acked = acknowledged(sil, st.since)
        asleep = snoozed(sil, now)
        out.append(AlertLine(
            rule_id=st.rule_id, kind=kinds.get(st.rule_id, ""), subject=st.subject,
            subject_name="" if st.subject == "account" else names.get(st.subject, st.subject),
            value=st.value, since=st.since, last_notified_at=st.last_notified_at,
            acked_by=sil.acked_by if sil and acked else "",
            acked_at=sil.acked_at if sil and acked else None,
            snoozed_until=sil.snoozed_until if sil and asleep else None,
            snoozed_by=sil.snoozed_by if sil and asleep else "",
        ))
    out.sort(key=lambda a: (-a.since.timestamp(), a.rule_id, a.subject))
    return out

