"""The `report` pipeline: resolve the period, fetch from the API and history, aggregate."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import TYPE_CHECKING

from bot.compute import aggregate
from bot.compute.aggregate import DAY, Figures
from bot.compute.usage import Period, UsageReport, build_report
from bot.errors import ConfigError
from bot.models import (
    ActivityRow,
    ApiKey,
    Credits,
    Workspace,
    key_labels,
    placeholder_hash,
    placeholder_name,
)

if TYPE_CHECKING:
    from bot.openrouter import OpenRouterClient
    from bot.store import Store


# the days a command may name: none before FIRST_DAY, a report of at most MAX_DAYS
FIRST_DAY = dt.date(2000, 1, 1)
MAX_DAYS = 3660


def parse_day(text: str, flag: str) -> dt.date:
    try:
        day = dt.date.fromisoformat(text)
    except ValueError as exc:
        raise ConfigError(f"{flag}: expected a date as YYYY-MM-DD, got {text!r}") from exc
    if day < FIRST_DAY:
        raise ConfigError(f"{flag}: {day} is before {FIRST_DAY}; there is no usage that old")
    return day


def resolve_period(
    now: dt.datetime,
    *,
    date: str | None = None,
    days: int | None = None,
    start: str | None = None,
    end: str | None = None,
) -> Period:
    """The period asked for on the command line; by default the API's 30-day window."""
    window_start, last_day = aggregate.api_window(now)
    if date is not None:
        day = parse_day(date, "--date")
        period = Period(day, day)
    elif days is not None:
        if days < 1:
            raise ConfigError("--days: expected a whole number of at least 1")
        if days > MAX_DAYS:
            raise ConfigError(f"--days: at most {MAX_DAYS}, got {days}")
        period = Period(last_day - DAY * (days - 1), last_day)
    elif start is not None or end is not None:
        if start is None:
            raise ConfigError("--to needs --from")
        first = parse_day(start, "--from")
        last = parse_day(end, "--to") if end is not None else last_day
        if first > last:
            raise ConfigError(f"--from {first} is after --to {last}")
        period = Period(first, last)
    else:
        period = Period(window_start, last_day)
    if period.end > last_day:
        raise ConfigError(f"{period.end} is not a completed UTC day yet; the latest is {last_day}")
    if (period.end - period.start).days >= MAX_DAYS:
        raise ConfigError(f"a report covers at most {MAX_DAYS} days")
    return period


def gather_report(
    client: OpenRouterClient,
    store: Store | None,
    period: Period,
    *,
    now: dt.datetime,
    with_credits: bool = True,
    with_keys: bool = False,
    by_workspace: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> UsageReport:
    """Fetch what `period` needs (API for the last 30 days, history before) and aggregate.

    Each key's rows are folded into its figures as they arrive, and history is summed in SQL,
    so memory stays flat whatever the number of keys or days.
    """
    window_start, _ = aggregate.api_window(now)
    api_start = max(period.start, window_start)
    rows: list[ActivityRow] = []
    key_figures: dict[str, Figures] = {}
    workspace_figures: dict[str, Figures] = {}
    keys: list[ApiKey] = []
    workspaces: list[Workspace] = []
    credits: Credits | None = None
    inventory = with_keys or by_workspace

    def fold(key: ApiKey, key_rows: list[ActivityRow]) -> None:
        figures = key_figures.setdefault(key.hash, Figures())
        for row in key_rows:
            if api_start <= row.date <= period.end:
                figures.add(row)

    if api_start <= period.end:
        snap = client.snapshot(
            now=now,
            credits=with_credits,
            keys=inventory,
            per_key=with_keys,
            by_workspace=by_workspace,
            date=period.start if period.start == period.end else None,
            progress=progress,
            on_key_rows=fold,
        )
        window_rows = aggregate.in_range(snap.activity, api_start, period.end)
        rows.extend(window_rows)
        if with_keys:
            _spend_without_key(window_rows, key_figures)
        for workspace_id, row in snap.workspace_activity:
            if api_start <= row.date <= period.end:
                workspace_figures.setdefault(workspace_id, Figures()).add(row)
    elif with_credits or inventory:
        snap = client.snapshot(now=now, credits=with_credits, keys=inventory, activity=False)
    else:
        snap = None
    if snap is not None:
        credits, keys, workspaces = snap.credits, snap.keys, snap.workspaces

    missing: list[dt.date] = []
    known_keys: list[ApiKey] = []
    known_workspaces: list[Workspace] = []
    if period.start < window_start:
        hist_end = min(period.end, window_start - DAY)
        if store is None:
            missing = aggregate.days(period.start, hist_end)
        else:
            rows.extend(store.activity(period.start, hist_end, ""))
            missing = store.missing_days(period.start, hist_end, "")
            if inventory:
                known_keys, known_workspaces = store.keys(), store.workspaces()
                where = {k.hash: k.workspace_id for k in [*known_keys, *keys]}
                for row in store.key_period_rows(period.start, hist_end):
                    if with_keys:
                        key_figures.setdefault(row.key_hash, Figures()).add(row)
                    if by_workspace:
                        space = where.get(row.key_hash, "")
                        workspace_figures.setdefault(space, Figures()).add(row)

    workspace_names = {w.id: w.display_name for w in [*known_workspaces, *workspaces]}
    names = key_labels([*known_keys, *keys], workspace_names)
    for key_hash in key_figures:
        names.setdefault(key_hash, placeholder_name(key_hash) or key_hash[:12])
    return build_report(
        period,
        rows,
        as_of=now,
        credits=credits,
        key_figures=key_figures if with_keys else None,
        key_names=names,
        workspace_figures=workspace_figures if by_workspace else None,
        workspace_names=workspace_names,
        missing_days=missing,
    )


def _spend_without_key(org_rows: list[ActivityRow], key_figures: dict[str, Figures]) -> None:
    """What /activity counts for the org beyond every key's own rows (spend made without an
    API key), as its own line, so the keys add up to the total; history keeps it the same
    way (the analytics API reports it under no key). Called before history is added."""
    names = ("usage", "byok_usage", "requests", "prompt_tokens", "completion_tokens",
             "reasoning_tokens")
    org = aggregate.totals(org_rows)
    rest = Figures(*(getattr(org, n) - sum(getattr(f, n) for f in key_figures.values())
                     for n in names))
    if rest.cost > 0 or rest.requests > 0:
        key_figures[placeholder_hash("")] = rest
