"""The `demo` job: the real pipelines on the bundled sample org, with no key or network."""

from __future__ import annotations

import base64
import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from bot.app import App
from bot.config import Config
from bot.models import MailMessage, SlackMessage

if TYPE_CHECKING:
    from bot.compute.usage import UsageReport


def demo_app(now: dt.datetime, storage: Path | str = ":memory:") -> App:
    """An App whose OpenRouter is the bundled sample org and whose history is in memory."""
    from bot.jobs.sample_org import DEMO_KEY, demo_transport

    config = Config(storage_path=Path(storage))
    return App(
        config=config,
        env={},
        now=lambda: now,
        transport=demo_transport(now.date()),
        openrouter_key=DEMO_KEY,
    )


@dataclass(frozen=True)
class DemoResult:
    """The sample org's 30-day report, its daily Slack digest and its weekly e-mail."""

    report: UsageReport
    day: dt.date
    daily_slack: SlackMessage
    weekly_email: MailMessage

    def browser_html(self) -> str:
        """The e-mail's HTML with its inline images embedded, as a mail client shows it."""
        html = self.weekly_email.html
        for cid, png in self.weekly_email.inline_images.items():
            html = html.replace(f"cid:{cid}",
                                "data:image/png;base64," + base64.b64encode(png).decode())
        return html


def run_demo(now: dt.datetime) -> DemoResult:
    """Report, daily digest and weekly report for the sample org as of `now`."""
    from bot.compute import aggregate
    from bot.compute.digest import DailyDigest, WeeklyReport
    from bot.jobs.report import gather_report, resolve_period
    from bot.jobs.send import build
    from bot.render.messages import Renderer

    app = demo_app(now)
    try:
        with app.client() as client:
            report = gather_report(
                client, None, resolve_period(now, days=30), now=now, with_keys=True
            )
        renderer = Renderer()
        day = aggregate.latest_complete_day(now)
        daily = build(app, "daily", day).data
        assert isinstance(daily, DailyDigest)
        weekly = build(app, "weekly", day, sync=False).data
        assert isinstance(weekly, WeeklyReport)
        return DemoResult(report, day, renderer.daily_slack(daily),
                          renderer.weekly_email(weekly))
    finally:
        app.close()
