"""The `report` command's three output formats: text, JSON (SPEC 4) and CSV."""

from __future__ import annotations

import csv
from collections.abc import Iterable
from decimal import Decimal
from typing import IO, Any

from bot.compute.aggregate import Group
from bot.compute.usage import UsageReport
from bot.models import ZERO, ActivityRow
from bot.render import fmt
from bot.text import csv_text, json_controls_escaped, one_line

CSV_FIELDS = (
    "date",
    "model",
    "provider",
    "usage",
    "byok_usage",
    "cost",
    "requests",
    "prompt_tokens",
    "completion_tokens",
    "reasoning_tokens",
    "model_permaslug",
    "endpoint_id",
)


def _plain(value: Any) -> Any:
    """JSON-ready copy: Decimals become floats (the exact sum, rounded once at the end)."""
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


# the identity beside a group's name, where it has one
_REF = {"key": "hash", "workspace": "id"}
GROUP_FIGURES = ("usage", "byok_usage", "cost", "requests", "prompt_tokens",
                 "completion_tokens", "reasoning_tokens")


def _group_dicts(groups: list[Group], dimension: str) -> list[dict[str, Any]]:
    out = []
    for g in groups:
        item: dict[str, Any] = {dimension: g.name}
        if dimension in _REF:
            item[_REF[dimension]] = g.ref
        item.update(g.figures.as_dict())
        out.append(item)
    return out


def to_json(report: UsageReport) -> str:
    """One JSON object: the original script's `credits` and `activity` plus the breakdowns."""
    credits = None
    if report.credits is not None:
        credits = {
            "total_credits": report.credits.total_credits,
            "total_usage": report.credits.total_usage,
            "remaining": report.credits.remaining,
        }
    doc: dict[str, Any] = {
        "as_of": report.as_of.isoformat(),
        "period": {"from": report.period.start.isoformat(), "to": report.period.end.isoformat()},
        "credits": credits,
        "totals": report.totals.as_dict(),
        "by_model": _group_dicts(report.by_model, "model"),
        "by_provider": _group_dicts(report.by_provider, "provider"),
        "by_date": _group_dicts(report.by_date, "date"),
    }
    if report.by_key is not None:
        doc["by_key"] = _group_dicts(report.by_key, "key")
    if report.by_workspace is not None:
        doc["by_workspace"] = _group_dicts(report.by_workspace, "workspace")
    doc["missing_days"] = [d.isoformat() for d in report.missing_days]
    doc["activity"] = [r.to_api_dict() for r in report.rows]
    import msgspec  # encodes in C: a year of rows is not a second of pure-Python json

    text = msgspec.json.format(msgspec.json.encode(_plain(doc)), indent=2).decode()
    return json_controls_escaped(text)


def write_csv(rows: Iterable[ActivityRow], out: IO[str]) -> None:
    """One line per activity row, quoted by the csv module; text cells that a spreadsheet
    would run as a formula start with `'` (see :func:`bot.text.csv_text`)."""
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_FIELDS)
    for r in rows:
        writer.writerow(
            [
                r.date.isoformat(),
                csv_text(r.model),
                csv_text(r.provider),
                r.usage,
                r.byok_usage,
                r.cost,
                r.requests,
                r.prompt_tokens,
                r.completion_tokens,
                r.reasoning_tokens,
                csv_text(r.model_permaslug),
                csv_text(r.endpoint_id),
            ]
        )


def write_groups_csv(groups: list[Group], dimension: str, out: IO[str]) -> None:
    """One line per group (e.g. per workspace): its name, identity and figures."""
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([dimension, _REF.get(dimension, "ref"), *GROUP_FIGURES])
    for g in groups:
        figures = g.figures.as_dict()
        writer.writerow([csv_text(g.name), csv_text(g.ref),
                         *(figures[f] for f in GROUP_FIGURES)])


def _table(title: str, groups: list[Group], show_byok: bool, tokens: bool) -> list[str]:
    lines = ["", title, "-" * len(title)]
    if not groups:
        return [*lines, "  (no activity)"]
    names = [one_line(g.name, 48) for g in groups]  # API text: no terminal controls
    width = max(len(n) for n in names)
    byok_width = max(len(fmt.money(g.figures.byok_usage)) for g in groups) + 6
    for g, name in zip(groups, names, strict=True):
        f = g.figures
        line = f"  {name:<{width}}  {fmt.money(f.cost):>12}"
        if show_byok:
            byok = f"BYOK {fmt.money(f.byok_usage)}" if f.byok_usage else ""
            line += f"  {byok:<{byok_width}}"
        line += f"  {fmt.count(f.requests):>9} req"
        if tokens:
            line += (
                f"  {fmt.count(f.prompt_tokens):>13} in  {fmt.count(f.completion_tokens):>11} out"
            )
            if f.reasoning_tokens:
                line += f"  {fmt.count(f.reasoning_tokens)} reasoning"
        lines.append(line.rstrip())
    return lines


def format_text(report: UsageReport) -> str:
    """The human report: credits, totals, by model, provider, date (with bars) and key."""
    lines = [f"OpenRouter usage, {report.period.label}", f"Data as of {fmt.as_of(report.as_of)}"]
    if report.credits is not None:
        c = report.credits
        lines += [
            "",
            "Credits",
            "-------",
            f"  Purchased  {fmt.money(c.total_credits):>12}",
            f"  Used       {fmt.money(c.total_usage):>12}",
            f"  Remaining  {fmt.money(c.remaining):>12}",
        ]
    t = report.totals
    show_byok = t.byok_usage != 0
    lines += ["", "Totals", "------", f"  Spend      {fmt.money(t.cost):>12}"]
    if show_byok:
        lines += [
            f"    credits  {fmt.money(t.usage):>12}",
            f"    BYOK     {fmt.money(t.byok_usage):>12}  (billed by providers on your own keys)",
        ]
    lines += [
        f"  Requests   {fmt.count(t.requests):>12}",
        f"  Tokens     {fmt.count(t.prompt_tokens)} in, {fmt.count(t.completion_tokens)} out"
        + (f", {fmt.count(t.reasoning_tokens)} reasoning" if t.reasoning_tokens else ""),
    ]
    lines += _table("Spend by model", report.by_model, show_byok, tokens=True)
    lines += _table("Spend by provider", report.by_provider, show_byok, tokens=False)
    lines += ["", "Spend by date (UTC)", "-------------------"]
    peak = max((g.figures.cost for g in report.by_date), default=ZERO)
    missing = {d.isoformat() for d in report.missing_days}
    for g in report.by_date:
        cost = "no data" if g.name in missing else fmt.money(g.figures.cost)
        lines.append(f"  {g.name}  {cost:>10}  {fmt.bar(g.figures.cost, peak)}".rstrip())
    if report.by_key is not None:
        lines += _table("Spend by API key", report.by_key, show_byok, tokens=False)
    if report.by_workspace is not None:
        lines += _table("Spend by workspace", report.by_workspace, show_byok, tokens=False)
    if report.missing_days:
        lines += ["", missing_note(report)]
    return "\n".join(lines) + "\n"


def missing_note(report: UsageReport) -> str:
    """What local history lacks for this report, as one line."""
    days = report.missing_days
    span = days[0].isoformat() if len(days) == 1 else f"{days[0]}..{days[-1]}"
    return (
        f"Note: no history for {len(days)} day(s) ({span}); OpenRouter keeps only 30 days, "
        "so run `openrouter-usage sync` daily to keep older figures."
    )
