"""The usage report's numbers: a period of UTC days aggregated by model, provider, date, key and
workspace."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field

from bot.compute import aggregate
from bot.compute.aggregate import Figures, Group
from bot.models import ActivityRow, Credits

NO_WORKSPACE = "(no workspace)"


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
    by_workspace: list[Group] | None = None
    missing_days: list[dt.date] = field(default_factory=list)


def spenders(figures: Mapping[str, Figures], names: Mapping[str, str]) -> list[Group]:
    """Groups with spend or requests, named through `names` (ref = the identity), ranked by
    cost, largest first; ties by name then identity so output is stable."""
    groups = [Group(names.get(ref) or ref[:12], fig, ref=ref)
              for ref, fig in figures.items() if fig.cost or fig.requests]
    return sorted(groups, key=lambda g: (-g.figures.cost, g.name, g.ref))


def build_report(
    period: Period,
    rows: list[ActivityRow],
    *,
    as_of: dt.datetime,
    credits: Credits | None,
    key_figures: Mapping[str, Figures] | None = None,
    key_names: Mapping[str, str] | None = None,
    workspace_figures: Mapping[str, Figures] | None = None,
    workspace_names: Mapping[str, str] | None = None,
    missing_days: list[dt.date] | None = None,
) -> UsageReport:
    """Aggregate rows already restricted to `period` into a report (pure). Keys and
    workspaces come already folded (one Figures each), so no per-key row is kept."""
    rows = sorted(rows, key=lambda r: (r.date, -r.cost, r.model, r.provider, r.endpoint_id))
    by_workspace = None
    if workspace_figures is not None:
        names = {"": NO_WORKSPACE, **(workspace_names or {})}
        by_workspace = spenders(workspace_figures, names)
    return UsageReport(
        period=period,
        as_of=as_of,
        credits=credits,
        rows=rows,
        totals=aggregate.totals(rows),
        by_model=aggregate.by_model(rows),
        by_provider=aggregate.by_provider(rows),
        by_date=aggregate.by_date(rows, period.start, period.end),
        by_key=None if key_figures is None else spenders(key_figures, key_names or {}),
        by_workspace=by_workspace,
        missing_days=missing_days or [],
    )
