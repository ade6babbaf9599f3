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
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bot.errors import BotError, ConfigError
from bot.models import MailMessage, SlackMessage

if TYPE_CHECKING:
    from bot.config import Config
    from bot.deliver.email import SmtpSender
    from bot.deliver.slack import SlackSender
    from bot.store import Delivery, Store

log = logging.getLogger(__name__)

Message = SlackMessage | MailMessage
RETRY_BASE = dt.timedelta(minutes=1)
RETRY_CAP = dt.timedelta(hours=1)


@dataclass(frozen=True)
class Outcome:
    """What happened to one delivery: sent, already sent, failed, given up or dry run."""

    destination: str
    status: str
    detail: str = ""
    ref: str = ""
    job: str = ""
    period: str = ""

    @property
    def ok(self) -> bool:
        return self.status in ("sent", "already sent", "in progress", "dry run", "skipped")

    def line(self) -> str:
        return f"{self.destination}: {self.status}" + (f" ({self.detail})" if self.detail else "")


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
    return f"<{job}.{period}.{digest[:16]}@{domain}>"


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
            from bot.deliver.email import SmtpSender, SmtpSettings

            cfg = self.config.email
            if not cfg.host or not cfg.sender:
                raise ConfigError("email: set email.host and email.from to send e-mail")
            self._smtp = SmtpSender(
                SmtpSettings(
                    host=cfg.host, port=cfg.port, security=cfg.security,
                    username=cfg.username, password=cfg.password, sender=cfg.sender,
                    timeout=cfg.timeout, ca_file=cfg.ca_file,
                )
            )
        return self._smtp

    def send(self, destination: str, msg: Message, options: dict[str, Any], now: dt.datetime,
             msg_id: str | None = None) -> str:
        """Deliver; returns a reference (Slack ts, Message-ID) or raises a BotError."""
        kind, _, target = destination.partition(":")
        if kind == "slack":
            if not isinstance(msg, SlackMessage):
                raise ConfigError(f"{destination}: expected a Slack message")
            return self.slack().post(
                target, msg, thread_ts=options.get("thread_ts"),
                reply_broadcast=bool(options.get("reply_broadcast")),
            )
        if kind == "email":
            if not isinstance(msg, MailMessage):
                raise ConfigError(f"{destination}: expected an e-mail message")
            from bot.deliver.email import build_mime

            smtp = self.smtp()
            mime = build_mime(msg, sender=self.config.email.sender, recipients=[target],
                              now=now, message_id=msg_id)
            return smtp.send(mime, [target])
        if destination == "stdout":
            # the renderer gives stdout its terminal form: text only
            sys.stdout.write(msg.text.rstrip("\n") + "\n")
            return ""
        raise ConfigError(f"unknown destination {destination!r}")


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
        destination: str,
        msg: Message,
        now: dt.datetime,
        *,
        force: bool = False,
        options: dict[str, Any] | None = None,
    ) -> Outcome:
        """Record the message under its idempotency key and try to deliver it now."""
        if destination == "stdout":  # nothing to remember: printing is not a delivery
            self.transports.send(destination, msg, options or {}, now)
            return Outcome(destination, "sent")
        existing = self.store.outbox_get(job, period, destination)
        if existing is not None and existing.status == "sent" and not force:
            return Outcome(destination, "already sent", f"at {existing.sent_at:%Y-%m-%d %H:%M} UTC"
                           if existing.sent_at else "", existing.ref or "")
        if existing is not None and existing.status == "given_up" and not force:
            return Outcome(destination, "given up", f"earlier ({existing.last_error}); "
                           "use --force to send it anyway", "", job, period)
        delivery = self.store.outbox_put(job, period, destination, encode(msg, options), now,
                                         force=force)
        return self.attempt(delivery, now)

    def attempt(self, delivery: Delivery, now: dt.datetime) -> Outcome:
        """Send one recorded delivery, marking it sending -> sent, or back to pending."""
        created = delivery.created_at
        if created is not None and now - created > self.max_age:
            reason = f"undelivered for more than {self.max_age}; last error: {delivery.last_error}"
            self.store.outbox_give_up(delivery.id, now, reason)
            log.warning("gave up on %s %s to %s: %s", delivery.job, delivery.period,
                        delivery.destination, reason)
            return Outcome(delivery.destination, "given up", reason, "", delivery.job,
                           delivery.period)
        msg, options = decode(delivery.payload)
        msg_id = None
        if delivery.destination.startswith("email:"):
            msg_id = message_id(delivery.job, delivery.period, delivery.destination,
                                str(delivery.created_at), self.transports.config.email.sender)
        if not self.store.outbox_begin(delivery.id, now):
            return Outcome(delivery.destination, "in progress",
                           "another run is sending it or has just sent it", "",
                           delivery.job, delivery.period)
        try:
            ref = self.transports.send(delivery.destination, msg, options, now, msg_id)
        except BotError as exc:
            self.store.outbox_failed(delivery.id, now, str(exc))
            log.warning("delivery of %s %s to %s failed (will retry): %s", delivery.job,
                        delivery.period, delivery.destination, exc)
            return Outcome(delivery.destination, "failed", str(exc), "", delivery.job,
                           delivery.period)
        self.store.outbox_sent(delivery.id, now, ref)
        log.info("delivered %s %s to %s", delivery.job, delivery.period, delivery.destination)
        return Outcome(delivery.destination, "sent", "", ref, delivery.job, delivery.period)

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
