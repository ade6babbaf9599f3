"""Exactly-once delivery through the database outbox: record, send, mark, retry, give up.

Every message is stored (as JSON) under its idempotency key (job, period, destination) before
it is sent. The row is marked ``sending`` and committed before the network call and ``sent``
after it, so a crash loses nothing: a row left ``pending`` or ``sending`` is delivered on the
next run (a ``sending`` row once it is ten minutes old, so a slow sender in another process
is not raced). The one window for a duplicate is a crash after the provider accepted the
message and before ``sent`` was committed (milliseconds); e-mail retries reuse the same
Message-ID so mail clients fold such a duplicate.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import logging
import re
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from bot.errors import BotError, ConfigError, DataError
from bot.models import (
    DeliveryState,
    Destination,
    DestinationKind,
    MailMessage,
    Outcome,
    SlackMessage,
    Status,
)

if TYPE_CHECKING:
    from bot.config import Config
    from bot.deliver.email import SmtpSender
    from bot.deliver.slack import SlackSender
    from bot.store import Delivery, Store

log = logging.getLogger(__name__)

Message = SlackMessage | MailMessage
RETRY_BASE = dt.timedelta(minutes=1)
RETRY_CAP = dt.timedelta(hours=1)
_PLAIN_PERIOD = re.compile(r"[0-9A-Za-z.-]+")


# --- payload encoding ---------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def encode(msg: Message, options: dict[str, Any] | None = None) -> str:
    """A message as JSON text for the outbox (binary parts base64)."""
    if isinstance(msg, SlackMessage):
        doc: dict[str, Any] = {
            "type": "slack",
            "text": msg.text,
            "blocks": msg.blocks,
            "chart_png": _b64(msg.chart_png) if msg.chart_png else None,
            "chart_title": msg.chart_title,
        }
    else:
        doc = {
            "type": "email",
            "subject": msg.subject,
            "text": msg.text,
            "html": msg.html,
            "inline_images": {cid: _b64(png) for cid, png in msg.inline_images.items()},
            "attachments": [[n, t, _b64(b)] for n, t, b in msg.attachments],
        }
    doc["options"] = options or {}
    return json.dumps(doc, ensure_ascii=False, sort_keys=True)


def decode(text: str) -> tuple[Message, dict[str, Any]]:
    """The message and its delivery options (thread, broadcast) back from outbox JSON."""
    doc = json.loads(text)
    options = doc.get("options") or {}
    if doc["type"] == "slack":
        png = doc.get("chart_png")
        return (
            SlackMessage(
                text=doc["text"],
                blocks=doc["blocks"],
                chart_png=base64.b64decode(png) if png else None,
                chart_title=doc.get("chart_title", ""),
            ),
            options,
        )
    return (
        MailMessage(
            subject=doc["subject"],
            text=doc["text"],
            html=doc["html"],
            inline_images={k: base64.b64decode(v) for k, v in doc["inline_images"].items()},
            attachments=[(n, t, base64.b64decode(b)) for n, t, b in doc["attachments"]],
        ),
        options,
    )


def message_id(job: str, period: str, destination: str, attempt_key: str, sender: str) -> str:
    """A Message-ID that stays the same across retries of one delivery."""
    digest = hashlib.sha256(f"{job}|{period}|{destination}|{attempt_key}".encode()).hexdigest()
    domain = sender.rsplit("@", 1)[-1].strip(" >") if "@" in sender else "openrouter-usage"
    # a digest's period is a day or a day range; an alert's is structured text: left out
    readable = period if _PLAIN_PERIOD.fullmatch(period) else ""
    return f"<{job}.{readable + '.' if readable else ''}{digest[:16]}@{domain}>"


# --- transports ---------------------------------------------------------------------------


class Transports:
    """Creates the Slack and SMTP senders on first use and sends one message to one place."""

    def __init__(self, config: Config, *, sleep: Callable[[float], None] = time.sleep) -> None:
        self.config = config
        self._sleep = sleep  # waits between retries (tests pass one that returns at once)
        self._slack: SlackSender | None = None
        self._smtp: SmtpSender | None = None

    def slack(self) -> SlackSender:
        if self._slack is None:
            from bot.deliver.slack import SlackSender

            cfg = self.config.slack
            self._slack = SlackSender(
                token=cfg.token, webhook_url=cfg.webhook_url, base_url=cfg.base_url,
                charts=cfg.charts, sleep=self._sleep,
            )
        return self._slack

    def smtp(self) -> SmtpSender:
        if self._smtp is None:
            from bot.deliver.email import SmtpSender

            if not self.config.email.configured:
                raise ConfigError("email: set email.host and email.from to send e-mail")
            self._smtp = SmtpSender(self.config.email)
        return self._smtp

    def send(self, destination: Destination, msg: Message, options: dict[str, Any],
             now: dt.datetime, msg_id: str | None = None) -> str:
        """Deliver; returns a reference (Slack ts, Message-ID) or raises a BotError."""
        kind = destination.kind
        if kind is DestinationKind.SLACK or kind is DestinationKind.WEBHOOK:
            if not isinstance(msg, SlackMessage):
                raise ConfigError(f"{destination}: expected a Slack message")
            channel = destination.target if kind is DestinationKind.SLACK else "webhook"
            return self.slack().post(
                channel, msg, thread_ts=options.get("thread_ts"),
                reply_broadcast=bool(options.get("reply_broadcast")),
            )
        if kind is DestinationKind.EMAIL:
            if not isinstance(msg, MailMessage):
                raise ConfigError(f"{destination}: expected an e-mail message")
            from bot.deliver.email import build_mime

            smtp = self.smtp()
            mime = build_mime(msg, sender=self.config.email.sender,
                              recipients=[destination.target], now=now, message_id=msg_id)
            return smtp.send(mime, [destination.target])
        # stdout: the renderer gives it its terminal form, text only
        sys.stdout.write(msg.text.rstrip("\n") + "\n")
        return ""


# --- the outbox ---------------------------------------------------------------------------


class Outbox:
    """Records deliveries in the store and sends them at most once each."""

    def __init__(self, store: Store, transports: Transports, max_age: dt.timedelta) -> None:
        self.store = store
        self.transports = transports
        self.max_age = max_age

    def submit(
        self,
        job: str,
        period: str,
        destination: Destination,
        msg: Message,
        now: dt.datetime,
        *,
        force: bool = False,
        options: dict[str, Any] | None = None,
    ) -> Outcome:
        """Record the message under its idempotency key and try to deliver it now."""
        if destination.kind is DestinationKind.STDOUT:
            # nothing to remember: printing is not a delivery
            self.transports.send(destination, msg, options or {}, now)
            return Outcome(destination=destination, status=Status.SENT)
        existing = self.store.outbox_get(job, period, str(destination))
        if existing is not None and existing.status == DeliveryState.SENT and not force:
            when = f"at {existing.sent_at:%Y-%m-%d %H:%M} UTC" if existing.sent_at else ""
            return Outcome(destination=destination, status=Status.ALREADY_SENT, detail=when,
                           ref=existing.ref or "")
        if existing is not None and existing.status == DeliveryState.GIVEN_UP and not force:
            return Outcome(destination=destination, status=Status.GIVEN_UP,
                           detail=f"earlier ({existing.last_error}); use --force to send it "
                           "anyway", job=job, period=period)
        delivery = self.store.outbox_put(job, period, str(destination), encode(msg, options),
                                         now, force=force)
        return self.attempt(delivery, now)

    def attempt(self, delivery: Delivery, now: dt.datetime) -> Outcome:
        """Send one recorded delivery, marking it sending -> sent, or back to pending.

        A ConfigError (a transport that is not configured, an unreadable CA file) is not a
        delivery failure: the delivery stays pending for when the configuration is fixed and
        the outcome says ``config_error``, which the shells report as a configuration error.
        """
        try:
            destination = Destination.parse(delivery.destination)
        except ValueError as exc:
            raise DataError(f"outbox delivery {delivery.id}: {exc}") from None

        def done(status: Status, detail: str = "", ref: str = "") -> Outcome:
            return Outcome(destination=destination, status=status, detail=detail, ref=ref,
                           job=delivery.job, period=delivery.period)

        created = delivery.created_at
        if created is not None and now - created > self.max_age:
            reason = f"undelivered for more than {self.max_age}; last error: {delivery.last_error}"
            self.store.outbox_give_up(delivery.id, now, reason)
            log.warning("gave up on %s %s to %s: %s", delivery.job, delivery.period,
                        delivery.destination, reason)
            return done(Status.GIVEN_UP, reason)
        msg, options = decode(delivery.payload)
        msg_id = None
        if destination.kind is DestinationKind.EMAIL:
            msg_id = message_id(delivery.job, delivery.period, delivery.destination,
                                str(delivery.created_at), self.transports.config.email.sender)
        if not self.store.outbox_begin(delivery.id, now):
            return done(Status.IN_PROGRESS, "another run is sending it or has just sent it")
        try:
            ref = self.transports.send(destination, msg, options, now, msg_id)
        except ConfigError as exc:
            self.store.outbox_failed(delivery.id, now, str(exc))
            return done(Status.CONFIG_ERROR, str(exc))
        except BotError as exc:
            self.store.outbox_failed(delivery.id, now, str(exc))
            log.warning("delivery of %s %s to %s failed (will retry): %s", delivery.job,
                        delivery.period, delivery.destination, exc)
            return done(Status.FAILED, str(exc))
        self.store.outbox_sent(delivery.id, now, ref)
        log.debug("delivered %s %s to %s", delivery.job, delivery.period, delivery.destination)
        return done(Status.SENT, ref=ref)

    def flush(self, now: dt.datetime, *, jobs: tuple[str, ...] | None = None) -> list[Outcome]:
        """Retry the deliveries left pending (or mid-send by a crash) whose backoff has passed,
        oldest first."""
        return [
            self.attempt(d, now)
            for d in self.store.outbox_due()
            if (jobs is None or d.job in jobs) and retry_due(d, now)
        ]


def retry_due(delivery: Delivery, now: dt.datetime) -> bool:
    """Failed deliveries are retried after 1, 2, 4 ... minutes, at most an hour apart."""
    if delivery.last_attempt_at is None or delivery.attempts == 0:
        return True
    wait = min(RETRY_BASE * 2 ** (delivery.attempts - 1), RETRY_CAP)
    return now - delivery.last_attempt_at >= wait
