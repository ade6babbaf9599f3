"""The `report` pipeline: resolve the period, fetch from the API and history, aggregate."""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Callable
from typing import TYPE_CHECKING

from bot.compute import aggregate
from bot.compute.aggregate import DAY
from bot.compute.usage import Period, UsageReport, build_report
from bot.errors import ConfigError
from bot.models import ActivityRow, ApiKey, Credits

if TYPE_CHECKING:
    from bot.openrouter import OpenRouterClient
    from bot.store import Store


def parse_day(text: str, flag: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError as exc:
        raise ConfigError(f"{flag}: expected a date as YYYY-MM-DD, got {text!r}") from exc


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
    return period


def gather_report(
    client: OpenRouterClient,
    store: Store | None,
    period: Period,
    *,
    now: dt.datetime,
    with_credits: bool = True,
    with_keys: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> UsageReport:
    """Fetch what `period` needs (API for the last 30 days, history before) and aggregate."""
    window_start, window_end = aggregate.api_window(now)
    api_start = max(period.start, window_start)
    rows: list[ActivityRow] = []
    key_rows: dict[str, list[ActivityRow]] = defaultdict(list)
    keys: list[ApiKey] = []
    credits: Credits | None = None

    if api_start <= period.end:
        snap = client.snapshot(
            now=now,
            credits=with_credits,
            keys=with_keys,
            per_key=with_keys,
            date=period.start if period.start == period.end else None,
            progress=progress,
        )
        credits = snap.credits
        keys = snap.keys
        rows.extend(aggregate.in_range(snap.activity, api_start, period.end))
        for h, rs in snap.key_activity.items():
            key_rows[h].extend(aggregate.in_range(rs, api_start, period.end))
    elif with_credits or with_keys:
        snap = client.snapshot(now=now, credits=with_credits, keys=with_keys, activity=False)
        credits, keys = snap.credits, snap.keys

    missing: list[dt.date] = []
    from_history = period.start < window_start
    if from_history:
        hist_end = min(period.end, window_start - DAY)
        if store is None:
            missing = aggregate.days(period.start, hist_end)
        else:
            rows.extend(store.activity(period.start, hist_end, ""))
            missing = store.missing_days(period.start, hist_end, "")
            if with_keys:
                for row in store.activity(period.start, hist_end, None):
                    key_rows[row.key_hash].append(row)

    names: dict[str, str] = {}
    if with_keys and store is not None and from_history:
        names.update(store.key_names())
    names.update({k.hash: k.display_name for k in keys})
    for k in keys:
        key_rows.setdefault(k.hash, [])
    return build_report(
        period,
        rows,
        as_of=now,
        credits=credits,
        key_rows=dict(key_rows) if with_keys else None,
        key_names=names,
        missing_days=missing,
    )
