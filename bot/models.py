"""Plain dataclasses shared by every layer: activity rows, keys, credits, snapshots, messages
and alert state.

Money is ``Decimal`` throughout (parsed from the API's JSON text), so sums are exact and
rounding happens only when a figure is displayed.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Literal

ZERO = Decimal(0)

# The numeric fields of an activity row, in the order reports and CSV use them.
MONEY_FIELDS = ("usage", "byok_usage")
COUNT_FIELDS = ("requests", "prompt_tokens", "completion_tokens", "reasoning_tokens")


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

    @property
    def display_name(self) -> str:
        """A human name for the key: its name, else its label, else the start of its hash."""
        return self.name or self.label or self.hash[:12]


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


@dataclass(slots=True)
class SlackMessage:
    """A rendered Slack message: Block Kit blocks plus the plain-text fallback."""

    text: str
    blocks: list[dict[str, Any]] = field(default_factory=list)
    # optional PNG chart, uploaded into the message's thread when `slack.charts` is on
    chart_png: bytes | None = None
    chart_title: str = ""


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
