"""The `demo` command: the real pipelines on the bundled sample org, with no key or network."""

from __future__ import annotations

import base64
import datetime as dt
import json
import sys
from pathlib import Path

from bot.app import App, utcnow
from bot.config import Config


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


def run_demo(out_dir: str = "out", quiet: bool = False, now: dt.datetime | None = None) -> int:
    from bot.compute import aggregate
    from bot.compute.digest import DailyDigest, WeeklyReport
    from bot.jobs.report import gather_report, resolve_period
    from bot.jobs.send import build
    from bot.render.messages import Renderer, blocks_to_text
    from bot.render.text import format_text

    now = now or utcnow()
    app = demo_app(now)
    out = sys.stdout
    with app.client() as client:
        report = gather_report(
            client, None, resolve_period(now, days=30), now=now, with_keys=True
        )
    out.write("=== openrouter-usage report --by-key (sample org, last 30 UTC days) ===\n")
    out.write(format_text(report))

    renderer = Renderer()
    day = aggregate.latest_complete_day(now)
    daily = build(app, "daily", day).data
    assert isinstance(daily, DailyDigest)
    slack = renderer.daily_slack(daily)
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "daily-slack.json").write_text(
        json.dumps({"text": slack.text, "blocks": slack.blocks}, indent=2, ensure_ascii=False)
    )
    out.write(f"\n=== Daily Slack digest for {day} (UTC), as it would be posted ===\n")
    out.write(blocks_to_text(slack.blocks))

    weekly = build(app, "weekly", day, sync=False).data
    assert isinstance(weekly, WeeklyReport)
    mail = renderer.weekly_email(weekly)
    html = mail.html
    for cid, png in mail.inline_images.items():  # so a browser shows what a mail client would
        html = html.replace(f"cid:{cid}", "data:image/png;base64," + base64.b64encode(png).decode())
    html_path = folder / "weekly-email.html"
    html_path.write_text(html, encoding="utf-8")
    for name, _mime, data in mail.attachments:
        (folder / name).write_bytes(data)
    out.write(f"\n=== Weekly e-mail report ===\nSubject: {mail.subject}\n")
    out.write(f"HTML written to {html_path.resolve()} (open it in a browser)\n")
    out.write(f"Attachments written to {folder.resolve()}/: "
              f"{', '.join(n for n, _, _ in mail.attachments)}\n")
    out.write("Slack Block Kit JSON written to "
              f"{(folder / 'daily-slack.json').resolve()}\n")
    app.close()
    return 0
