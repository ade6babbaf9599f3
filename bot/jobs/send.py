"""The `send daily|weekly` pipeline: sync, build from history, render, deliver via the outbox."""

from __future__ import annotations

import datetime as dt
import logging
from collections import defaultdict
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING

from bot.compute import aggregate
from bot.compute.digest import (
    DailyDigest,
    WeeklyReport,
    Workspaces,
    build_daily,
    build_weekly,
)
from bot.config import require_transport
from bot.deliver.outbox import Message, Outbox
from bot.errors import ConfigError, DataError
from bot.models import (
    DAY,
    ActivityRow,
    DeliveryState,
    Destination,
    DestinationKind,
    Outcome,
    Status,
)

if TYPE_CHECKING:
    from bot.app import App
    from bot.render.messages import Renderer
    from bot.store import Store

log = logging.getLogger(__name__)

CREDITS_META = "{job}.last_total_credits"


@dataclass(frozen=True)
class SendOptions:
    """What `send` was asked for; `to` replaces the configured destinations when given."""

    job: str  # daily | weekly
    day: dt.date | None = None  # default: the latest completed UTC day, settled
    to: tuple[Destination, ...] = ()
    dry_run: bool = False
    force: bool = False


@dataclass(frozen=True)
class Preview:
    """A rendered message that a dry run shows instead of sending it."""

    label: str  # what it is: "daily 2026-11-24", "alert fire credits"
    stem: str  # file name stem for what is written to a file (e-mail HTML)
    destination: Destination
    message: Message


@dataclass
class SendResult:
    """What one `send` did: an outcome per destination (and per retried delivery), or the
    messages a dry run would have sent."""

    job: str
    period: str
    outcomes: list[Outcome] = field(default_factory=list)
    previews: list[Preview] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(o.ok for o in self.outcomes)


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
            keys = run_sync(client, store, now=now,
                            backfill=app.config.history.backfill).snapshot.keys
    lacking = store.missing_days(day if job == "daily" else day - DAY * 6, day, "")
    if lacking:  # a digest would read "no spend" where it knows nothing: send none
        span = str(lacking[0]) if len(lacking) == 1 else f"{lacking[0]}..{lacking[-1]}"
        raise DataError(f"history has no data for {span} ({len(lacking)} day(s)); OpenRouter "
                        "keeps 30 days: run `openrouter-usage sync` daily to keep older ones. "
                        "Nothing was sent")
    latest = store.credits_at(None)
    credits = latest[1] if latest else None
    raw_prev = store.get_meta(CREDITS_META.format(job=job))
    prev_total = Decimal(raw_prev) if raw_prev else None
    names = store.key_names()
    spaces = Workspaces({k.hash: k.workspace_id for k in store.keys()},
                        {w.id: w.display_name for w in store.workspaces()})
    if job == "daily":
        rows, key_rows = _history(store, day - DAY * 13, day)
        _warn_missing(store, day - DAY * 13, day)
        # the change against the day before is explained when history holds both days
        both = not store.missing_days(day - DAY, day, "")
        data: DailyDigest | WeeklyReport = build_daily(
            # today so far: the keys as fetched now (history also holds deleted keys)
            day, as_of=now, rows=rows, key_rows=key_rows, key_names=names,
            keys=keys if keys is not None else store.keys(),
            credits=credits, previous_total_credits=prev_total, top=app.config.daily.top,
            detail=store.key_model_rows(day - DAY, day) if both else None,
            workspaces=spaces,
        )
    else:
        start = min(day - DAY * 13, day.replace(day=1))
        rows, key_rows = _history(store, start, day)
        _warn_missing(store, start, day)
        data = build_weekly(
            day, as_of=now, rows=rows, key_rows=key_rows, key_names=names, credits=credits,
            previous_total_credits=prev_total, top=app.config.weekly.top,
            key_model_rows=store.key_model_rows(day - DAY * 6, day), workspaces=spaces,
        )
    return Built(job, period_key(job, day), data)


def _warn_missing(store: Store, start: dt.date, end: dt.date) -> None:
    missing = store.missing_days(start, end, "")
    if missing:
        log.warning("history has no data for %d day(s) between %s and %s; figures that "
                    "compare against them are incomplete", len(missing), missing[0], missing[-1])


def render_for(renderer: Renderer, built: Built, destination: Destination,
               charts: bool) -> Message:
    """The message one destination gets: Slack blocks for Slack, MIME-ready mail for e-mail."""
    from bot.render.messages import terminal_text

    data = built.data
    if destination.kind is DestinationKind.EMAIL:
        if isinstance(data, DailyDigest):
            return renderer.daily_email(data)
        return renderer.weekly_email(data)
    charts = charts and destination.kind is DestinationKind.SLACK
    if destination.kind is DestinationKind.STDOUT:
        charts = False
    if isinstance(data, DailyDigest):
        msg = renderer.daily_slack(data, charts=charts)
    else:
        msg = renderer.weekly_slack(data, charts=charts)
    return terminal_text(msg) if destination.kind is DestinationKind.STDOUT else msg


def _skipped(app: App, built: Built, destinations: list[Destination],
             force: bool) -> list[Outcome] | None:
    """With `skip_if_empty`, a period without spend sends nothing (unless forced)."""
    report_cfg = app.config.daily if built.job == "daily" else app.config.weekly
    if report_cfg.skip_if_empty and built.empty and not force:
        return [Outcome(destination=d, status=Status.SKIPPED, detail="no spend in the period")
                for d in destinations]
    return None


def preview(app: App, built: Built, destinations: list[Destination]) -> list[Preview]:
    """What each destination would get, rendered and not sent (`--dry-run`)."""
    from bot.render.messages import Renderer

    renderer = Renderer(app.config.templates_dir)
    stem = f"{built.job}-{built.period.replace('..', '_to_')}"
    return [
        Preview(f"{built.job} {built.period}", stem, dest,
                render_for(renderer, built, dest, app.config.slack.charts))
        for dest in destinations
    ]


def deliver(
    app: App, built: Built, destinations: list[Destination], *, force: bool = False
) -> list[Outcome]:
    """Render for each destination and hand it to the outbox."""
    from bot.render.messages import Renderer

    cfg = app.config
    skipped = _skipped(app, built, destinations, force)
    if skipped is not None:
        return skipped
    renderer = Renderer(cfg.templates_dir)
    now = app.now()
    outbox = Outbox(app.store(), app.transports(), cfg.delivery_max_age)
    outcomes = [
        outbox.submit(built.job, built.period, dest,
                      render_for(renderer, built, dest, cfg.slack.charts), now, force=force)
        for dest in destinations
    ]
    credits = built.data.balance.credits
    if credits is not None and any(o.status is Status.SENT for o in outcomes):
        app.store().set_meta(CREDITS_META.format(job=built.job), str(credits.total_credits))
    return outcomes


def run_send(app: App, options: SendOptions) -> SendResult:
    """Deliver (or preview) the daily digest or weekly report, after retrying what earlier
    runs left pending; a digest already sent everywhere needs no call to OpenRouter."""
    job = options.job
    report_cfg = app.config.daily if job == "daily" else app.config.weekly
    destinations = list(options.to or report_cfg.to)
    if not destinations:
        raise ConfigError(f"reports.{job}.to: no destinations; configure some or pass --to DEST")
    for i, dest in enumerate(destinations):
        require_transport(app.config, dest, f"--to {dest}" if options.to
                          else f"reports.{job}.to[{i}]")
    now = app.now()
    day = options.day or aggregate.latest_complete_day(now)
    period = period_key(job, day)
    if options.dry_run:
        built = build(app, job, day)
        skipped = _skipped(app, built, destinations, options.force)
        if skipped is not None:
            return SendResult(job, built.period, skipped)
        return SendResult(job, built.period, previews=preview(app, built, destinations))
    outbox = Outbox(app.store(), app.transports(), app.config.delivery_max_age)
    retried = outbox.flush(now, jobs=(job,))
    # a destination whose pending delivery of this very period was just retried has its
    # outcome: neither "already sent" nor a second attempt in the same run
    handled = {str(o.destination) for o in retried if o.job == job and o.period == period}
    destinations = [d for d in destinations if str(d) not in handled]
    if not destinations:
        return SendResult(job, period, retried)
    if not options.force:
        done = [outbox.store.outbox_get(job, period, str(d)) for d in destinations]
        if all(d is not None and d.status == DeliveryState.SENT for d in done):
            # nothing to send: no need to reach OpenRouter at all
            already = [
                Outcome(destination=dest, status=Status.ALREADY_SENT, job=job, period=period,
                        detail=f"at {d.sent_at:%Y-%m-%d %H:%M} UTC" if d and d.sent_at else "")
                for dest, d in zip(destinations, done, strict=True)
            ]
            return SendResult(job, period, retried + already)
    built = build(app, job, day)
    return SendResult(job, period, retried + deliver(app, built, destinations,
                                                     force=options.force))
