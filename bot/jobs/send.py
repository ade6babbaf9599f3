"""The `send daily|weekly` pipeline: sync, build from history, render, deliver via the outbox."""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import sys
from collections import defaultdict
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING

from bot.compute import aggregate
from bot.compute.aggregate import DAY
from bot.compute.digest import DailyDigest, WeeklyReport, build_daily, build_weekly
from bot.config import require_transport, validate_destination
from bot.deliver.outbox import Message, Outbox, Outcome
from bot.errors import ConfigError
from bot.jobs.report import parse_day
from bot.models import ActivityRow, MailMessage, SlackMessage

if TYPE_CHECKING:
    from bot.app import App
    from bot.render.messages import Renderer
    from bot.store import Store

log = logging.getLogger(__name__)

CREDITS_META = "{job}.last_total_credits"


@dataclass
class Built:
    """A digest or report built for one period, ready to render per destination."""

    job: str
    period: str
    data: DailyDigest | WeeklyReport

    @property
    def empty(self) -> bool:
        return self.data.empty


def period_key(job: str, day: dt.date) -> str:
    """The idempotency period: the day for a digest, the 7-day range for a weekly report."""
    if job == "daily":
        return day.isoformat()
    return f"{(day - DAY * 6).isoformat()}..{day.isoformat()}"


def _history(
    store: Store, start: dt.date, end: dt.date
) -> tuple[list[ActivityRow], dict[str, list[ActivityRow]]]:
    rows = store.activity(start, end, "")
    key_rows: dict[str, list[ActivityRow]] = defaultdict(list)
    for row in store.activity(start, end, None):
        key_rows[row.key_hash].append(row)
    return rows, dict(key_rows)


def build(app: App, job: str, day: dt.date, *, sync: bool = True) -> Built:
    """Refresh history from OpenRouter, then build the digest or report for `day`."""
    from bot.jobs.sync import run_sync

    store = app.store()
    now = app.now()
    if day > aggregate.api_window(now)[1]:
        raise ConfigError(f"--date: {day} is not a completed UTC day yet")
    keys = None
    if sync:
        with app.client() as client:
            keys = run_sync(client, store, now=now).snapshot.keys
    latest = store.credits_at(None)
    credits = latest[1] if latest else None
    raw_prev = store.get_meta(CREDITS_META.format(job=job))
    prev_total = Decimal(raw_prev) if raw_prev else None
    names = store.key_names()
    if job == "daily":
        rows, key_rows = _history(store, day - DAY * 13, day)
        _warn_missing(store, day - DAY * 13, day)
        data: DailyDigest | WeeklyReport = build_daily(
            # today so far: the keys as fetched now (history also holds deleted keys)
            day, as_of=now, rows=rows, key_rows=key_rows, key_names=names,
            keys=keys if keys is not None else store.keys(),
            credits=credits, previous_total_credits=prev_total, top=app.config.daily.top,
        )
    else:
        start = min(day - DAY * 13, day.replace(day=1))
        rows, key_rows = _history(store, start, day)
        _warn_missing(store, start, day)
        data = build_weekly(
            day, as_of=now, rows=rows, key_rows=key_rows, key_names=names, credits=credits,
            previous_total_credits=prev_total, top=app.config.weekly.top,
        )
    return Built(job, period_key(job, day), data)


def _warn_missing(store: Store, start: dt.date, end: dt.date) -> None:
    missing = store.missing_days(start, end, "")
    if missing:
        log.warning("history has no data for %d day(s) between %s and %s; figures that "
                    "compare against them are incomplete", len(missing), missing[0], missing[-1])


def render_for(renderer: Renderer, built: Built, destination: str, charts: bool) -> Message:
    """The message one destination gets: Slack blocks for Slack, MIME-ready mail for e-mail."""
    from bot.render.messages import terminal_text

    data = built.data
    if destination.startswith("email:"):
        if isinstance(data, DailyDigest):
            return renderer.daily_email(data)
        return renderer.weekly_email(data)
    if destination == "stdout":
        return terminal_text(renderer.daily_slack(data, charts=False) if isinstance(
            data, DailyDigest) else renderer.weekly_slack(data, charts=False))
    if isinstance(data, DailyDigest):
        return renderer.daily_slack(data, charts=charts and destination.startswith("slack:"))
    return renderer.weekly_slack(data, charts=charts and destination.startswith("slack:"))


def deliver(
    app: App,
    built: Built,
    destinations: list[str],
    *,
    force: bool = False,
    dry_run: bool = False,
    out_dir: Path = Path("out"),
) -> list[Outcome]:
    """Render for each destination and hand it to the outbox (or print it on a dry run)."""
    from bot.render.messages import Renderer

    cfg = app.config
    report_cfg = cfg.daily if built.job == "daily" else cfg.weekly
    if report_cfg.skip_if_empty and built.empty and not force:
        return [Outcome(d, "skipped", "no spend in the period") for d in destinations]
    renderer = Renderer(cfg.templates_dir)
    now = app.now()
    outbox = Outbox(app.store(), app.transports(), cfg.delivery_max_age)
    outcomes = []
    for dest in destinations:
        msg = render_for(renderer, built, dest, cfg.slack.charts)
        if dry_run:
            stem = f"{built.job}-{built.period.replace('..', '_to_')}"
            print_dry_run(f"{built.job} {built.period}", stem, dest, msg, out_dir)
            outcomes.append(Outcome(dest, "dry run"))
            continue
        outcomes.append(outbox.submit(built.job, built.period, dest, msg, now, force=force))
    if not dry_run and isinstance(built.data, DailyDigest | WeeklyReport):
        credits = built.data.balance.credits
        if credits is not None and any(o.status == "sent" for o in outcomes):
            app.store().set_meta(CREDITS_META.format(job=built.job), str(credits.total_credits))
    return outcomes


def print_dry_run(label: str, stem: str, dest: str, msg: Message, out_dir: Path) -> None:
    """Exactly what would be sent, on stdout; e-mail HTML to a file whose path is printed."""
    import json

    out = sys.stdout
    out.write(f"--- {label} -> {dest} (dry run, nothing sent) ---\n")
    if isinstance(msg, SlackMessage):
        out.write(json.dumps({"text": msg.text, "blocks": msg.blocks}, indent=2,
                             ensure_ascii=False) + "\n")
        if msg.chart_png:
            out.write(f"(plus a {len(msg.chart_png):,}-byte chart PNG uploaded in the thread)\n")
        return
    assert isinstance(msg, MailMessage)
    out_dir.mkdir(parents=True, exist_ok=True)
    safe = dest.split(":", 1)[1].replace("@", "_at_").replace("/", "_")
    html_path = out_dir / f"{stem}-{safe}.html"
    html_path.write_text(msg.html, encoding="utf-8")
    out.write(f"Subject: {msg.subject}\nTo: {dest.split(':', 1)[1]}\n")
    for name, mime, data in msg.attachments:
        out.write(f"Attachment: {name} ({mime}, {len(data):,} bytes)\n")
    for cid, png in msg.inline_images.items():
        out.write(f"Inline image: cid:{cid} ({len(png):,} bytes)\n")
    out.write(f"HTML body written to {html_path}\n\n{msg.text.rstrip()}\n")


def send_command(app: App, args: argparse.Namespace) -> int:
    job: str = args.job
    report_cfg = app.config.daily if job == "daily" else app.config.weekly
    destinations = list(args.to or report_cfg.to)
    if not destinations:
        raise ConfigError(f"reports.{job}.to: no destinations; configure some or pass --to DEST")
    for i, dest in enumerate(destinations):
        where = f"--to {dest}" if args.to else f"reports.{job}.to[{i}]"
        require_transport(app.config, validate_destination(dest, where), where)
    now = app.now()
    # default: the latest completed UTC day at least 30 minutes old
    day = parse_day(args.date, "--date") if args.date else aggregate.latest_complete_day(now)
    outbox = Outbox(app.store(), app.transports(), app.config.delivery_max_age)
    retried = [] if args.dry_run else outbox.flush(now, jobs=(job,))
    period = period_key(job, day)
    if not (args.dry_run or args.force):
        done = [outbox.store.outbox_get(job, period, d) for d in destinations]
        if all(d is not None and d.status == "sent" for d in done):
            # nothing to send: no need to reach OpenRouter at all
            for dest, d in zip(destinations, done, strict=True):
                assert d is not None
                print(f"{job} {period}: {dest}: already sent"
                      + (f" (at {d.sent_at:%Y-%m-%d %H:%M} UTC)" if d.sent_at else ""))
            return 0 if all(o.ok for o in retried) else 1
    built = build(app, job, day)
    outcomes = retried + deliver(app, built, destinations, force=args.force, dry_run=args.dry_run)
    if not args.dry_run:
        for o in outcomes:
            print(f"{job} {o.period or built.period}: {o.line()}")
    return 0 if all(o.ok for o in outcomes) else 1
