"""The `demo` command: the real pipelines on the bundled sample org, with no key or network."""

from __future__ import annotations

import datetime as dt
import sys
from pathlib import Path

from bot.app import App, utcnow
from bot.config import Config


def demo_app(now: dt.datetime, storage: Path | str = ":memory:") -> App:
    """An App whose OpenRouter is the bundled sample org and whose history is in memory."""
    from bot.demo import DEMO_KEY, demo_transport

    config = Config(storage_path=Path(storage))
    return App(
        config=config,
        env={},
        now=lambda: now,
        transport=demo_transport(now.date()),
        openrouter_key=DEMO_KEY,
    )


def run_demo(out_dir: str = "out", quiet: bool = False, now: dt.datetime | None = None) -> int:
    from bot.output import format_text
    from bot.report import gather_report, resolve_period
    from bot.sync import run_sync

    now = now or utcnow()
    app = demo_app(now)
    with app.client() as client:
        run_sync(client, app.store(), now=now)
        report = gather_report(
            client, app.store(), resolve_period(now, days=30), now=now, with_keys=True
        )
    sys.stdout.write("=== Report (sample org, last 30 days) ===\n")
    sys.stdout.write(format_text(report))
    app.close()
    return 0
