"""The `check` command: the config is valid, then each connection is tried and reported."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

from bot.errors import BotError
from bot.render import fmt

if TYPE_CHECKING:
    from bot.app import App

SKIP = "skip: "  # a detail starting with this was not tested, and is neither ok nor failed


def _all_destinations(app: App) -> list[str]:
    cfg = app.config
    dests: list[str] = []
    groups = [cfg.daily.to if cfg.daily.enabled else (), cfg.weekly.to if cfg.weekly.enabled
              else (), cfg.alerts.to, *(r.to for r in cfg.alerts.rules)]
    for group in groups:
        dests.extend(d for d in group if d not in dests)
    return dests


def checks(app: App) -> list[tuple[str, Callable[[], str]]]:
    """The checks this config calls for, each a name and a function returning a detail."""
    cfg = app.config
    out: list[tuple[str, Callable[[], str]]] = []

    def openrouter() -> str:
        with app.client(max_attempts=2) as client:
            credits = client.credits()
            keys = client.keys()
        return (f"management key works: {len(keys)} API keys, "
                f"{fmt.money(credits.remaining)} of credits left")

    out.append(("OpenRouter", openrouter))

    def history() -> str:
        store = app.existing_store()  # checking creates nothing
        if store is None:
            return f"{cfg.storage_path} not created yet (the first sync or send creates it)"
        last = store.last_sync_at()
        return f"{cfg.storage_path} (last sync: {fmt.as_of(last) if last else 'never'})"

    out.append(("History database", history))
    dests = _all_destinations(app)
    transports = app.transports()  # senders are created only when a check uses them
    if any(d.startswith("slack:") and d != "slack:webhook" for d in dests) or cfg.slack.token:
        out.append(("Slack auth", lambda: transports.slack().auth_test()))
        for dest in dests:
            if dest.startswith("slack:") and dest != "slack:webhook":
                channel = dest.split(":", 1)[1]

                def can_post(channel: str = channel) -> str:
                    ok, detail = transports.slack().can_post(channel)
                    if not ok:
                        raise BotError(detail)
                    return detail

                out.append((f"Slack {channel}", can_post))
    if "slack:webhook" in dests:
        out.append(("Slack webhook", lambda: SKIP + "configured; not tested, as that would post"))
    if any(d.startswith("email:") for d in dests) or cfg.email.host:
        out.append(("SMTP", lambda: transports.smtp().check()))
    return out


def run_check(app: App) -> int:
    cfg = app.config
    print(f"Config: {cfg.source or 'defaults'} is valid "
          f"({len(cfg.alerts.rules)} alert rules, timezone {cfg.timezone})")
    failed = 0
    for name, fn in checks(app):
        try:
            detail = fn()
        except BotError as exc:
            failed += 1
            print(f"FAIL  {name}: {exc}")
            continue
        if detail.startswith(SKIP):
            print(f"skip  {name}: {detail.removeprefix(SKIP)}")
        else:
            print(f"ok    {name}: {detail}")
    sys.stdout.flush()
    if failed:
        print(f"{failed} check(s) failed", file=sys.stderr)
        return 1
    return 0
