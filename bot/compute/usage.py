"""The usage report's numbers: a period of UTC days aggregated by model, provider, date, key."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from bot.compute import aggregate
from bot.compute.aggregate import Figures, Group
from bot.models import ActivityRow, Credits


@dataclass(frozen=True)
class Period:
    """An inclusive range of UTC days."""

    start: dt.date
    end: dt.date

    @property
    def label(self) -> str:
        if self.start == self.end:
            return f"{self.start.isoformat()} (UTC)"
        return f"{self.start.isoformat()} to {self.end.isoformat()} (UTC days)"


@dataclass
class UsageReport:
    """Everything the `report` command prints, already aggregated."""

    period: Period
    as_of: dt.datetime
    credits: Credits | None
    rows: list[ActivityRow]
    totals: Figures
    by_model: list[Group]
    by_provider: list[Group]
    by_date: list[Group]
    by_key: list[Group] | None = None
    missing_days: list[dt.date] = field(default_factory=list)


def build_report(
    period: Period,
    rows: list[ActivityRow],
    *,
    as_of: dt.datetime,
    credits: Credits | None,
    key_rows: dict[str, list[ActivityRow]] | None = None,
    key_names: dict[str, str] | None = None,
    missing_days: list[dt.date] | None = None,
) -> UsageReport:
    """Aggregate rows already restricted to `period` into a report (pure)."""
    rows = sorted(rows, key=lambda r: (r.date, -r.cost, r.model, r.provider, r.endpoint_id))
    by_key = None
    if key_rows is not None:
        active = {h: rs for h, rs in key_rows.items() if rs}
        by_key = aggregate.by_key(active, key_names or {})
    return UsageReport(
        period=period,
        as_of=as_of,
        credits=credits,
        rows=rows,
        totals=aggregate.totals(rows),
        by_model=aggregate.by_model(rows),
        by_provider=aggregate.by_provider(rows),
        by_date=aggregate.by_date(rows, period.start, period.end),
        by_key=by_key,
        missing_days=missing_days or [],
    )
