"""The `check` job: the connections this config needs, each tried and turned into a result."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

from bot.errors import BotError
from bot.models import Destination, DestinationKind
from bot.render import fmt

if TYPE_CHECKING:
    from bot.app import App


class Verdict(StrEnum):
    OK = "ok"
    FAIL = "FAIL"
    SKIP = "skip"  # not tested, and neither ok nor failed


@dataclass(frozen=True)
class Check:
    """One connection to try: `probe` returns a one-line detail or raises a BotError."""

    name: str
    probe: Callable[[], str]
    skip: bool = False  # not tried: `probe` only says why

    def run(self) -> CheckResult:
        try:
            detail = self.probe()
        except BotError as exc:
            return CheckResult(self.name, Verdict.FAIL, str(exc))
        return CheckResult(self.name, Verdict.SKIP if self.skip else Verdict.OK, detail)


@dataclass(frozen=True)
class CheckResult:
    name: str
    verdict: Verdict
    detail: str


def _all_destinations(app: App) -> list[Destination]:
    cfg = app.config
    dests: list[Destination] = []
    groups = [cfg.daily.to if cfg.daily.enabled else (), cfg.weekly.to if cfg.weekly.enabled
              else (), cfg.alerts.to, *(r.to for r in cfg.alerts.rules)]
    for group in groups:
        dests.extend(d for d in group if d not in dests)
    return dests


def checks(app: App) -> list[Check]:
    """The checks this config calls for, in the order they are best run and shown."""
    cfg = app.config
    out: list[Check] = []

    def openrouter() -> str:
        with app.client(max_attempts=2) as client:
            client.check_key()
            credits = client.credits()
            inventory = client.inventory()
            analytics = client.analytics_available()
        spaces = (f"{len(inventory.workspaces)} workspaces, " if inventory.has_workspaces
                  else "no workspaces API, ")
        note = ("" if analytics is None else
                f"; analytics API not available ({analytics}): history starts with the 30 days "
                "/activity keeps")
        return (f"management key works: {spaces}{len(inventory.keys)} API keys, "
                f"{fmt.money(credits.remaining)} of credits left{note}")

    out.append(Check("OpenRouter", openrouter))

    def history() -> str:
        store = app.existing_store()  # checking creates nothing
        if store is None:
            return f"{app.storage_name()} not created yet (the first sync or send creates it)"
        last = store.last_sync_at()
        return f"{app.storage_name()} (last sync: {fmt.as_of(last) if last else 'never'})"

    out.append(Check("History database", history))
    if any(r.kind == "burn_rate" for r in cfg.alerts.rules):
        from bot.jobs.alerts import burn_readiness

        out.append(Check("Burn rate", lambda: burn_readiness(app)))
    dests = _all_destinations(app)
    kinds = {d.kind for d in dests}
    transports = app.transports()  # senders are created only when a check uses them
    if DestinationKind.SLACK in kinds or cfg.slack.token:
        out.append(Check("Slack auth", lambda: transports.slack().auth_test()))
        for dest in dests:
            if dest.kind is not DestinationKind.SLACK:
                continue

            def can_post(channel: str = dest.target) -> str:
                ok, detail = transports.slack().can_post(channel)
                if not ok:
                    raise BotError(detail)
                return detail

            out.append(Check(f"Slack {dest.target}", can_post))
    if cfg.slack.app_token:
        from bot.interactive.slack_api import SlackApi

        api = SlackApi(cfg.slack.token or "", cfg.slack.base_url, app_token=cfg.slack.app_token)
        out.append(Check("Slack app token", api.check_app_token))
    if DestinationKind.WEBHOOK in kinds:
        out.append(Check("Slack webhook", lambda: "configured; not tested, as that would post "
                         "(a lost answer cannot be checked: delivery is at-least-once)",
                         skip=True))
    if DestinationKind.EMAIL in kinds or cfg.email.host:
        out.append(Check("SMTP", lambda: transports.smtp().check()))
    out.extend(_oncall_checks(app, dests))
    return out


def _oncall_checks(app: App, dests: list[Destination]) -> list[Check]:
    """PagerDuty, webhooks and Apprise: configured, and not tried (that would page or post)."""

    out = []
    for dest in dests:
        if dest.kind.alerts_only:
            out.append(Check(str(dest), functools.partial(_oncall, app, dest),
                             skip=dest.kind is not DestinationKind.APPRISE))
    return out


def _oncall(app: App, dest: Destination) -> str:
    from bot.config import transport_problem

    problem = transport_problem(app.config, dest)
    if problem:
        raise BotError(problem)
    if dest.kind is DestinationKind.PAGERDUTY:
        return f"routing key from ${dest.target} is set; not sent (that would open an incident)"
    if dest.kind is DestinationKind.HOOK:
        hook = app.config.oncall.webhooks[dest.target]
        signed = "signed with HMAC-SHA256" if hook.secret else "NOT signed (no secret)"
        return f"configured, {signed}; not sent (that would post; at-least-once)"
    return _apprise(app, dest.target)


def _apprise(app: App, name: str) -> str:
    from bot.deliver.apprise import AppriseSender

    AppriseSender(name, app.config.oncall.apprise[name])  # the library and the URL
    return "Apprise understands the URL; not sent (that would notify)"
