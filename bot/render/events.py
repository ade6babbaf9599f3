"""Alert notifications for machines: the PagerDuty Events API v2 event, the webhook's JSON and
the Apprise title and text (pure: nothing is sent here; secrets are added by the senders)."""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any

from bot.models import AlertState, EventMessage

if TYPE_CHECKING:
    from bot.compute.alert_rules import Observation
    from bot.render.messages import AlertWords

SOURCE = "openrouter-usage"
PD_SUMMARY_MAX = 1024
# how loud each kind is for on-call tools: money running out or running away pages harder
SEVERITY = {"low_credits": "error", "burn_rate": "error", "runway": "warning",
            "key_limit": "warning"}
VERSION = 1  # of the webhook body


def alert_id(rule_id: str, subject: str) -> str:
    """An alert's identity across its lifecycle: PagerDuty's dedup_key, the webhook's id."""
    return f"{SOURCE}/{rule_id}/{subject}"


def _number(value: Any) -> str | None:
    return None if value is None else format(value, "f") if hasattr(value, "is_finite") \
        else str(value)


def _stamp(when: dt.datetime) -> str:
    return when.astimezone(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def pagerduty(action: str, obs: Observation, state: AlertState, words: AlertWords,
              as_of: dt.datetime) -> EventMessage:
    """A `trigger` (fire and repeat: PagerDuty folds it into the open incident) or a
    `resolve`, keyed by the alert's identity."""
    key = alert_id(state.rule_id, state.subject)
    if action == "resolve":
        return EventMessage(f"Resolved: {words.title}",
                            {"event_action": "resolve", "dedup_key": key})
    details: dict[str, Any] = {"rule": state.rule_id, "kind": obs.rule.kind,
               "subject": state.subject,
               "now": words.value, "threshold": words.threshold, "what to do": words.advice,
               "firing since": _stamp(state.since)}
    if words.why:
        details["why"] = [line for line in words.why.splitlines() if line.strip()]
    body: dict[str, Any] = {
        "event_action": "trigger",
        "dedup_key": key,
        "client": SOURCE,
        "payload": {
            "summary": words.summary[:PD_SUMMARY_MAX],
            "source": SOURCE,
            "severity": SEVERITY.get(obs.rule.kind, "warning"),
            "timestamp": _stamp(as_of),
            "component": obs.name or state.subject,
            "group": obs.rule.kind,
            "class": obs.aspect or obs.rule.kind,
            "custom_details": details,
        },
    }
    if words.link:
        body["links"] = [{"href": words.link, "text": "Open OpenRouter"}]
    return EventMessage(words.summary, body)


def webhook(action: str, obs: Observation, state: AlertState, words: AlertWords,
            as_of: dt.datetime) -> EventMessage:
    """`{"status": "firing" | "resolved", "action": ..., "alert": {...}}`: figures as
    strings of exact decimals, the words as people read them."""
    status = "resolved" if action == "resolve" else "firing"
    alert = {
        "id": alert_id(state.rule_id, state.subject),
        "rule": state.rule_id,
        "kind": obs.rule.kind,
        "aspect": obs.aspect,
        "subject": state.subject,
        "name": obs.name,
        "title": words.title,
        "summary": words.summary,
        "value": _number(obs.value),
        "threshold": _number(obs.threshold),
        "value_text": words.value,
        "threshold_text": words.threshold,
        "advice": words.advice,
        "link": words.link,
        "note": words.note,
        "why": [line for line in words.why.splitlines() if line.strip()],
        "since": _stamp(state.since),
    }
    return EventMessage(words.summary, {"version": VERSION, "status": status, "action": action,
                                        "as_of": _stamp(as_of), "alert": alert})


def apprise(action: str, words: AlertWords, text: str) -> EventMessage:
    """A title and the plain-text body (what Teams, Discord or ntfy show)."""
    verb = {"fire": "Alert", "repeat": "Still firing", "resolve": "Resolved"}[action]
    title = f"{verb}: {words.title if action == 'resolve' else words.summary}"
    return EventMessage(title[:250], {"text": text})
