"""Pure arithmetic on activity rows: totals, groupings, rankings, day series, deltas, runway.

Nothing here does I/O or reads the clock; every figure is an exact ``Decimal``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from decimal import Decimal

from bot.models import DAY, SETTLE, ZERO, ActivityRow


@dataclass(slots=True)
class Figures:
    """Summed figures of a set of activity rows."""

    usage: Decimal = ZERO
    byok_usage: Decimal = ZERO
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    reasoning_tokens: int = 0

    @property
    def cost(self) -> Decimal:
        return self.usage + self.byok_usage

    def add(self, row: ActivityRow) -> None:
        self.usage += row.usage
        self.byok_usage += row.byok_usage
        self.requests += row.requests
        self.prompt_tokens += row.prompt_tokens
        self.completion_tokens += row.completion_tokens
        self.reasoning_tokens += row.reasoning_tokens

    def as_dict(self) -> dict[str, Decimal | int]:
        return {
            "usage": self.usage,
            "byok_usage": self.byok_usage,
            "cost": self.cost,
            "requests": self.requests,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "reasoning_tokens": self.reasoning_tokens,
        }


@dataclass(slots=True)
class Group:
    """One named line of a breakdown (a model, provider, key or date) with its figures."""

    name: str
    figures: Figures = field(default_factory=Figures)
    ref: str = ""  # e.g. the key hash for a key group


def totals(rows: Iterable[ActivityRow]) -> Figures:
    out = Figures()
    for row in rows:
        out.add(row)
    return out


def group_by(rows: Iterable[ActivityRow], key: Callable[[ActivityRow], str]) -> dict[str, Figures]:
    groups: dict[str, Figures] = {}
    for row in rows:
        name = key(row)
        fig = groups.get(name)
        if fig is None:
            fig = groups[name] = Figures()
        fig.add(row)
    return groups


def ranked(groups: dict[str, Figures]) -> list[Group]:
    """Groups by cost, largest first; ties broken by name so output is stable."""
    return [
        Group(name, fig) for name, fig in sorted(groups.items(), key=lambda g: (-g[1].cost, g[0]))
    ]


def by_model(rows: Iterable[ActivityRow]) -> list[Group]:
    return ranked(group_by(rows, lambda r: r.model))


def by_provider(rows: Iterable[ActivityRow]) -> list[Group]:
    return ranked(group_by(rows, lambda r: r.provider))


def days(start: dt.date, end: dt.date) -> list[dt.date]:
    """Every UTC day from start to end inclusive."""
    return [start + DAY * i for i in range((end - start).days + 1)]


def by_date(rows: Iterable[ActivityRow], start: dt.date, end: dt.date) -> list[Group]:
    """One group per day of the range, ascending, empty days included with zero figures."""
    grouped = group_by(rows, lambda r: r.date.isoformat())
    return [Group(d.isoformat(), grouped.get(d.isoformat(), Figures())) for d in days(start, end)]


def by_key(key_rows: dict[str, list[ActivityRow]], names: dict[str, str]) -> list[Group]:
    """Per-key totals ranked by cost; `names` maps hash to a display name."""
    groups = [Group(names.get(h, h[:12]), totals(rows), ref=h) for h, rows in key_rows.items()]
    return sorted(groups, key=lambda g: (-g.figures.cost, g.name, g.ref))


def in_range(rows: Iterable[ActivityRow], start: dt.date, end: dt.date) -> list[ActivityRow]:
    return [r for r in rows if start <= r.date <= end]


def change(current: Decimal, previous: Decimal) -> Decimal | None:
    """Relative change from previous to current (0.123 = +12.3%); None when it is new (nothing
    before, something now); 0 when there was nothing either time."""
    if previous == 0:
        return None if current > 0 else ZERO
    return (current - previous) / previous


def runway_days(remaining: Decimal, daily_usage: Decimal) -> Decimal | None:
    """Days until credits run out at `daily_usage` a day; None when nothing is being used."""
    if daily_usage <= 0:
        return None
    return max(remaining, ZERO) / daily_usage


def latest_complete_day(
    now: dt.datetime, settle: dt.timedelta = SETTLE
) -> dt.date:
    """The latest UTC day whose data is complete: ended at least `settle` before `now`."""
    return (now.astimezone(dt.UTC) - settle).date() - DAY


def api_window(now: dt.datetime) -> tuple[dt.date, dt.date]:
    """The 30 completed UTC days that /activity answers for at `now`."""
    today = now.astimezone(dt.UTC).date()
    return today - DAY * 30, today - DAY
