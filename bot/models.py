"""Plain dataclasses and enums shared by every layer: activity rows, keys, workspaces,
credits, snapshots, rendered messages, alert state, destinations and delivery outcomes.

Money is ``Decimal`` throughout (parsed from the API's JSON text), so sums are exact and
rounding happens only when a figure is displayed.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from enum import StrEnum
from typing import Any, Literal

ZERO = Decimal(0)
DAY = dt.timedelta(days=1)
# /activity data for a UTC day is complete about this long after the day ends.
SETTLE = dt.timedelta(minutes=30)


@dataclass(frozen=True, slots=True)
class ActivityRow:
    """One row of ``/activity``: a (UTC day, model endpoint) pair, org-wide or for one key.

    ``key_hash`` is ``""`` for org-wide rows and the key's hash for rows fetched with
    ``api_key_hash``.
    """

    date: dt.date
    model: str
    model_permaslug: str
    endpoint_id: str
    provider: str
    usage: Decimal
    byok_usage: Decimal
    requests: int
    prompt_tokens: int
    completion_tokens: int
    reasoning_tokens: int
    key_hash: str = ""

    @property
    def cost(self) -> Decimal:
        """What the row cost: OpenRouter credits plus inference billed on the user's own key."""
        return self.usage + self.byok_usage

    def to_api_dict(self) -> dict[str, Any]:
        """The row with the API's field names, normalised (ISO date, nulls as 0)."""
        return {
            "date": self.date.isoformat(),
            "model": self.model,
            "model_permaslug": self.model_permaslug,
            "endpoint_id": self.endpoint_id,
            "provider_name": self.provider,
            "usage": self.usage,
            "byok_usage_inference": self.byok_usage,
            "requests": self.requests,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "reasoning_tokens": self.reasoning_tokens,
        }


@dataclass(frozen=True, slots=True)
class SpendBucket:
    """What one key spent on one model in one minute or hour from the analytics API (`at` is
    the bucket's start, UTC; `key_hash` may be a placeholder for a key no longer listed)."""

    at: dt.datetime
    key_hash: str
    model: str
    cost: Decimal  # credits plus BYOK inference


@dataclass(frozen=True, slots=True)
class ApiKey:
    """One API key from ``/keys`` (disabled keys included: their past spend is real)."""

    hash: str
    name: str
    label: str = ""
    disabled: bool = False
    limit: Decimal | None = None
    limit_remaining: Decimal | None = None
    limit_reset: str | None = None
    usage: Decimal = ZERO
    usage_daily: Decimal = ZERO
    usage_weekly: Decimal = ZERO
    usage_monthly: Decimal = ZERO
    byok_usage: Decimal = ZERO
    byok_usage_daily: Decimal = ZERO
    byok_usage_weekly: Decimal = ZERO
    byok_usage_monthly: Decimal = ZERO
    created_at: str | None = None
    expires_at: str | None = None
    workspace_id: str = ""  # "" when unknown (a server without workspaces, a deleted key)

    @property
    def display_name(self) -> str:
        """A human name for the key: its name, else its label, else the start of its hash."""
        return self.name or self.label or self.hash[:12]


@dataclass(frozen=True, slots=True)
class Workspace:
    """One workspace from ``/workspaces``; every key lives in exactly one."""

    id: str
    name: str
    slug: str = ""

    @property
    def display_name(self) -> str:
        return self.name or self.slug or self.id[:8]


# Spend the analytics API attributes to a key name that no known key has (a deleted key) is
# kept under this identity, so it is neither dropped nor merged into a live key.
PLACEHOLDER_PREFIX = "unknown-key:"


def placeholder_hash(label: str) -> str:
    """The stable identity of spend labelled `label` that matches no known key."""
    return PLACEHOLDER_PREFIX + label


def placeholder_name(key_hash: str) -> str | None:
    """What people read for a placeholder identity; None for a real key hash."""
    if not key_hash.startswith(PLACEHOLDER_PREFIX):
        return None
    label = key_hash[len(PLACEHOLDER_PREFIX):]
    return f"{label} (deleted key)" if label else "(no key)"


def key_labels(keys: Iterable[ApiKey], workspace_names: Mapping[str, str]) -> dict[str, str]:
    """Key hash -> a name that tells keys apart: keys sharing a name get their workspace's
    name beside it (``staging (Contractors)``), and the start of their hash when even that
    is shared. The hash is the identity; this is only what people read."""
    keys = list({k.hash: k for k in keys}.values())
    by_name: dict[str, list[ApiKey]] = {}
    for k in keys:
        by_name.setdefault(k.display_name, []).append(k)
    labels: dict[str, str] = {}
    for name, group in by_name.items():
        if len(group) == 1:
            labels[group[0].hash] = name
            continue
        places = [workspace_names.get(k.workspace_id, "") for k in group]
        for k, place in zip(group, places, strict=True):
            if place and places.count(place) == 1:
                labels[k.hash] = f"{name} ({place})"
            elif place:
                labels[k.hash] = f"{name} ({place}, {k.hash[:8]})"
            else:
                labels[k.hash] = f"{name} ({k.hash[:8]})"
    return labels


@dataclass(frozen=True, slots=True)
class Credits:
    """``/credits``: everything purchased and everything used, in credits (USD)."""

    total_credits: Decimal
    total_usage: Decimal

    @property
    def remaining(self) -> Decimal:
        return self.total_credits - self.total_usage


@dataclass(slots=True)
class Snapshot:
    """Everything fetched in one go, stamped with when it was fetched (UTC)."""

    as_of: dt.datetime
    credits: Credits | None = None
    activity: list[ActivityRow] = field(default_factory=list)
    keys: list[ApiKey] = field(default_factory=list)
    # key hash -> that key's activity rows (only when fetched per key)
    key_activity: dict[str, list[ActivityRow]] = field(default_factory=dict)
    workspaces: list[Workspace] = field(default_factory=list)
    # (workspace id, row) pairs from /activity?group_by=workspace, when asked for
    workspace_activity: list[tuple[str, ActivityRow]] = field(default_factory=list)


@dataclass(slots=True)
class SlackMessage:
    """A rendered Slack message: Block Kit blocks plus the plain-text fallback."""

    text: str
    blocks: list[dict[str, Any]] = field(default_factory=list)
    # optional PNG chart, uploaded into the message's thread when `slack.charts` is on
    chart_png: bytes | None = None
    chart_title: str = ""


@dataclass(slots=True)
class EventMessage:
    """A rendered alert for a machine (PagerDuty, a webhook) or a notification service
    (Apprise): `title` and a JSON-ready `body`."""

    title: str
    body: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class MailMessage:
    """A rendered e-mail before it becomes MIME: subject, text and HTML bodies, images, files.

    ``inline_images`` maps a Content-ID (without angle brackets) to PNG bytes that the HTML
    references as ``cid:<id>``; ``attachments`` are (filename, mime type, bytes).
    """

    subject: str
    text: str
    html: str
    inline_images: dict[str, bytes] = field(default_factory=dict)
    attachments: list[tuple[str, str, bytes]] = field(default_factory=list)


AlertStatus = Literal["firing", "resolved"]


@dataclass(frozen=True)
class AlertState:
    """An alert's remembered state, one per (rule_id, subject): stepped by
    ``compute.alert_rules.step``, kept in the history database between runs."""

    rule_id: str
    subject: str
    status: AlertStatus
    value: str  # the figure last observed, as a plain number (for people reading the database)
    since: dt.datetime  # when the current (or last) episode began firing
    last_notified_at: dt.datetime
    threads: dict[str, str] = field(default_factory=dict)  # destination -> Slack ts
    updated_at: dt.datetime | None = None


# --- where messages go ----------------------------------------------------------------------

_EMAIL = re.compile(r"^[^@\s<>]+@[^@\s<>]+\.[^@\s<>]+$")
DESTINATION_FORMS = (
    "slack:#channel, slack:C0123ABC, slack:webhook, email:someone@example.com, stdout, "
    "pagerduty:ROUTING_KEY_VARIABLE, webhook:NAME or apprise:NAME"
)
_ENV_NAME = re.compile(r"^[A-Z_][A-Z0-9_]*$")  # pagerduty: the variable holding the routing key
_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")  # webhook:, apprise: a name in the config


class DestinationKind(StrEnum):
    """The transport a destination is delivered through."""

    SLACK = "slack"  # a channel, by name or ID, through the bot token
    WEBHOOK = "slack:webhook"  # the configured Slack incoming webhook
    EMAIL = "email"
    STDOUT = "stdout"
    PAGERDUTY = "pagerduty"  # Events API v2, the routing key from the named variable
    HOOK = "webhook"  # a signed JSON POST to a URL named in `webhooks:`
    APPRISE = "apprise"  # an Apprise URL named in `apprise:` (Teams, Discord, ntfy ...)

    @property
    def tracks_lifecycle(self) -> bool:
        """Whether the place follows an alert's whole lifecycle (an incident opened and
        closed), so it is also told what people reading a channel need not be."""
        return self in (DestinationKind.PAGERDUTY, DestinationKind.HOOK)

    @property
    def alerts_only(self) -> bool:
        """Whether only alerts go there (digests and reports are for people and mail)."""
        return self in (DestinationKind.PAGERDUTY, DestinationKind.HOOK, DestinationKind.APPRISE)


@dataclass(frozen=True, slots=True)
class Destination:
    """One place a message goes, parsed once from its string form (config, `--to`, database).

    ``str(dest)`` is the canonical form (``slack:#ops``, ``slack:webhook``,
    ``email:a@example.com``, ``stdout``): the outbox keys deliveries by it.
    """

    kind: DestinationKind
    target: str = ""  # the channel or the e-mail address; empty for a webhook and stdout

    @classmethod
    def parse(cls, text: str) -> Destination:
        """The destination written as `text`; ValueError saying what is expected otherwise."""
        if isinstance(text, str):
            scheme, _, target = text.partition(":")
            if text == "stdout":
                return cls(DestinationKind.STDOUT)
            if scheme == "slack" and target == "webhook":
                return cls(DestinationKind.WEBHOOK)
            if scheme == "slack" and target and not any(c.isspace() for c in target):
                return cls(DestinationKind.SLACK, target)
            if scheme == "email" and _EMAIL.match(target):
                return cls(DestinationKind.EMAIL, target)
            if scheme == "pagerduty" and _ENV_NAME.match(target):
                return cls(DestinationKind.PAGERDUTY, target)
            if scheme == "pagerduty":
                raise ValueError(
                    f"expected pagerduty:VARIABLE, the name of the environment variable that "
                    f"holds the routing key (such as pagerduty:PAGERDUTY_ROUTING_KEY), got "
                    f"{scheme}:{'***' if target else ''}")
            if scheme in ("webhook", "apprise") and _NAME.match(target):
                return cls(DestinationKind(scheme), target)
        raise ValueError(f"expected a destination such as {DESTINATION_FORMS}, got {text!r}")

    def __str__(self) -> str:
        if self.kind not in (DestinationKind.WEBHOOK, DestinationKind.STDOUT):
            return f"{self.kind}:{self.target}"
        return str(self.kind)


# --- what happened to a delivery ---------------------------------------------------------------


class DeliveryState(StrEnum):
    """The state of one outbox row, as stored in the database."""

    PENDING = "pending"
    SENDING = "sending"
    SENT = "sent"
    GIVEN_UP = "given_up"


class Status(StrEnum):
    """What one attempt to deliver a message to one destination came to."""

    SENT = "sent"
    ALREADY_SENT = "already_sent"
    IN_PROGRESS = "in_progress"  # another run is sending it (or has just sent it)
    DRY_RUN = "dry_run"
    SKIPPED = "skipped"
    FAILED = "failed"  # kept pending; retried on the next run
    GIVEN_UP = "given_up"  # undelivered past the maximum age; only --force sends it
    # not attempted: the configuration does not allow it (say, an unreadable CA file); kept
    # pending for when it is fixed, and the command exits as for any configuration error
    CONFIG_ERROR = "config_error"

    @property
    def ok(self) -> bool:
        """Whether the command succeeded as far as this destination goes."""
        return self not in (Status.FAILED, Status.GIVEN_UP, Status.CONFIG_ERROR)

    @property
    def label(self) -> str:
        """How the status reads in output: `already sent`, `given up`."""
        return self.value.replace("_", " ")


@dataclass(frozen=True, slots=True, kw_only=True)
class Outcome:
    """What happened to one delivery; `job` and `period` name it when it came from the outbox."""

    destination: Destination
    status: Status
    detail: str = ""
    ref: str = ""  # Slack ts or e-mail Message-ID
    job: str = ""
    period: str = ""

    @property
    def ok(self) -> bool:
        return self.status.ok

    def line(self) -> str:
        """`slack:#ops: already sent (at 2026-11-25 09:00 UTC)`."""
        return f"{self.destination}: {self.status.label}" + (
            f" ({self.detail})" if self.detail else "")


@dataclass(frozen=True, slots=True)
class Silence:
    """What people did about one alert (rule, subject) from Slack: an acknowledgement of one
    firing episode (the alert's ``since``) and/or a snooze until a time."""

    rule_id: str
    subject: str
    acked_since: dt.datetime | None = None  # the episode acknowledged
    acked_by: str = ""  # Slack user ID
    acked_at: dt.datetime | None = None
    snoozed_until: dt.datetime | None = None
    snoozed_by: str = ""
    snoozed_at: dt.datetime | None = None
