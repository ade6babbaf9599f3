"""Alert buttons: parse a press once, decide who may act, record it, and show it.

Only people in the channel the alert was posted to may act (for a press in the App Home or in
an ephemeral answer: in one of the alert rule's Slack channels), narrowed by
`slack.allowed_users` (user IDs, or user-group IDs whose members count) when that is set.
Everyone else gets an ephemeral "not allowed". Every press is logged and recorded with its
outcome. An acknowledgement holds back the alert's repeats until it resolves; a snooze holds
back everything but the resolution until it ends.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any, Literal

from bot.models import DestinationKind

if TYPE_CHECKING:
    from bot.config import Config
    from bot.interactive.slack_api import SlackApi
    from bot.store import Store

log = logging.getLogger(__name__)

SNOOZES = {"alert_snooze_1d": dt.timedelta(days=1), "alert_snooze_1w": dt.timedelta(days=7)}
VERBS = {"alert_ack": "acknowledge", "alert_snooze_1d": "snooze for a day",
         "alert_snooze_1w": "snooze for a week", "alert_unsnooze": "unsnooze"}
MEMBERS_TTL = dt.timedelta(minutes=1)
_USER = re.compile(r"[UW][A-Z0-9]{2,}")
_CHANNEL = re.compile(r"[CGD][A-Z0-9]{2,}")

Outcome = Literal["done", "refused", "not_firing", "unknown_rule"]


@dataclass(frozen=True)
class Press:
    """One press of an alert button, parsed from a block_actions payload."""

    action: str  # an action_id of VERBS
    rule_id: str
    subject: str
    user: str
    where: Literal["message", "ephemeral", "home"]
    channel: str = ""  # the channel of the message pressed ("" in the App Home)
    message_ts: str = ""
    response_url: str = ""
    text: str = ""
    blocks: list[dict[str, Any]] = field(default_factory=list)

    @property
    def verb(self) -> str:
        return VERBS[self.action]


def parse_press(payload: dict[str, Any]) -> Press | None:
    """The alert button pressed, or None (another kind of interaction, a link button)."""
    if payload.get("type") != "block_actions":
        return None
    user = str((payload.get("user") or {}).get("id") or "")
    if not _USER.fullmatch(user):
        return None
    for act in payload.get("actions") or []:
        if not isinstance(act, dict) or act.get("action_id") not in VERBS:
            continue
        try:
            value = json.loads(str(act.get("value")))
            rule_id, subject = str(value["rule"]), str(value["subject"])
        except (ValueError, TypeError, KeyError):
            return None
        container = payload.get("container") or {}
        message = payload.get("message") or {}
        where: Literal["message", "ephemeral", "home"] = (
            "home" if container.get("type") == "view"
            else "ephemeral" if container.get("is_ephemeral") else "message")
        channel = str(container.get("channel_id") or (payload.get("channel") or {}).get("id")
                      or "")
        return Press(
            action=str(act["action_id"]), rule_id=rule_id, subject=subject, user=user,
            where=where, channel=channel if _CHANNEL.fullmatch(channel) else "",
            message_ts=str(container.get("message_ts") or message.get("ts") or ""),
            response_url=str(payload.get("response_url") or ""),
            text=str(message.get("text") or ""),
            blocks=list(message.get("blocks") or []),
        )
    return None


class Gate:
    """Who may act on an alert: channel members (conversations.members, cached a minute),
    narrowed by `slack.allowed_users`."""

    def __init__(self, api: SlackApi, config: Config, now: Callable[[], dt.datetime]) -> None:
        self.api = api
        self.config = config
        self.now = now
        self._cache: dict[str, tuple[dt.datetime, set[str]]] = {}
        self._lock = threading.Lock()

    def _cached(self, key: str, fetch: Callable[[], set[str]]) -> set[str]:
        now = self.now()
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None and now - hit[0] < MEMBERS_TTL:
                return hit[1]
        users = fetch()
        with self._lock:
            self._cache[key] = (now, users)
        return users

    def rule_channels(self, rule_id: str) -> list[str]:
        """The IDs of the Slack channels the rule posts to."""
        rule = next((r for r in self.config.alerts.rules if r.id == rule_id), None)
        if rule is None:
            return []
        out: list[str] = []
        for dest in rule.to or self.config.alerts.to:
            if dest.kind is not DestinationKind.SLACK:
                continue
            found = self._cached("#" + dest.target, partial(self._channel_id, dest.target))
            out.extend(c for c in found if c)
        return out

    def _channel_id(self, ref: str) -> set[str]:
        found = self.api.channel_id(ref)
        return {found} if found else set()

    def check(self, press: Press) -> str:
        """Why `press.user` may not act ("" when they may)."""
        if press.where == "message" and press.channel:
            channels = [press.channel]
        else:
            channels = self.rule_channels(press.rule_id)
        if not channels:
            return "the alert has no Slack channel to check membership against"
        if not any(press.user in self._cached(c, partial(self.api.members, c))
                   for c in channels):
            where = ", ".join(f"<#{c}>" for c in channels)
            return f"only people in {where} may act on its alerts"
        allowed = self.config.slack.allowed_users
        if allowed and press.user not in allowed and not any(
            press.user in self._cached(g, partial(self.api.group_members, g))
            for g in allowed if g.startswith("S")
        ):
            return "only the people listed in the bot's slack.allowed_users may act on alerts"
        return ""


def perform(store: Store, config: Config, press: Press, now: dt.datetime) -> Outcome:
    """Record what the press asks for (when its rule still exists and, for an
    acknowledgement, the alert is firing)."""
    if not any(r.id == press.rule_id for r in config.alerts.rules):
        return "unknown_rule"
    if press.action == "alert_ack":
        state = next((s for s in store.alert_all()
                      if (s.rule_id, s.subject) == (press.rule_id, press.subject)), None)
        if state is None or state.status != "firing":
            return "not_firing"
        store.silence_ack(press.rule_id, press.subject, state.since, press.user, now)
    elif press.action in SNOOZES:
        store.silence_snooze(press.rule_id, press.subject, now + SNOOZES[press.action],
                             press.user, now)
    else:
        store.silence_snooze(press.rule_id, press.subject, None, press.user, now)
    return "done"


def record(store: Store, press: Press, now: dt.datetime, outcome: str) -> None:
    """Every press, allowed or not, in the log and in the database."""
    log.info("Slack: %s pressed %s on alert %s (%s) in %s: %s", press.user, press.action,
             press.rule_id, press.subject[:16], press.channel or press.where, outcome)
    store.action_log(now, press.user, press.action, press.rule_id, press.subject,
                     press.channel or press.where, outcome)


def edited_blocks(blocks: list[dict[str, Any]], update: list[dict[str, Any]]
                  ) -> list[dict[str, Any]]:
    """The alert message's blocks with its status line and buttons replaced by `update`
    (a status context, then the new buttons when it still fires); link buttons are kept."""
    status = [b for b in update if b.get("block_id") == "alert_status"]
    new_actions = next((b for b in update if b.get("block_id") == "alert_actions"), None)
    out: list[dict[str, Any]] = []
    placed = False
    for block in blocks:
        block_id = block.get("block_id")
        if block_id == "alert_status":
            continue
        if block_id == "alert_actions" and not placed:
            placed = True
            links = [e for e in block.get("elements") or [] if isinstance(e, dict)
                     and e.get("url")]
            out.extend(status)
            elements = links + (new_actions or {}).get("elements", [])
            if elements:
                out.append({"type": "actions", "block_id": "alert_actions",
                            "elements": elements})
            continue
        out.append(block)
    if not placed:  # a message without buttons: the status goes above the as-of line
        at = len(out) - 1 if out and out[-1].get("type") == "context" else len(out)
        out[at:at] = status
    return out
