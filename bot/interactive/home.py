"""The App Home view: credits, runway, today so far, this month against the last, and the
firing alerts with their buttons; published per user with `views.publish`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from bot.compute import aggregate
from bot.compute.aggregate import DAY
from bot.compute.digest import balance, today_so_far
from bot.interactive import answers
from bot.interactive.commands import alert_lines

if TYPE_CHECKING:
    from bot.app import App
    from bot.render.messages import Renderer


def build_home(app: App) -> answers.Home:
    store = app.store()
    now = app.now()
    day = aggregate.latest_complete_day(now)
    start, prev_start, _, _ = answers.month_bounds(day)
    rows = store.activity(prev_start, day, "")
    key_rows: dict[str, list[Any]] = {}
    for row in store.activity(start, day, None):
        key_rows.setdefault(row.key_hash, []).append(row)
    keys = store.keys()
    latest = store.credits_at(None)
    as_of = store.last_sync_at()
    month = answers.build_month(day, as_of=as_of or now, rows=rows, key_rows=key_rows,
                                names=store.key_names(), top=5,
                                missing=store.missing_days(prev_start, day, ""))
    return answers.Home(
        as_of=as_of, now=now,
        balance=balance(latest[1] if latest else None,
                        aggregate.in_range(rows, day - DAY * 6, day), day, None),
        today=today_so_far(keys), month=month, alerts=alert_lines(app, now),
    )


def home_blocks(app: App, renderer: Renderer, notice: str = "") -> list[dict[str, Any]]:
    """The view's blocks; `notice` is a line shown at the top (e.g. to someone refused)."""
    msg = renderer.slack("home", h=build_home(app), command=app.config.slack.command,
                         notice=notice)
    return msg.blocks


