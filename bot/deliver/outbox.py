"""Exactly-once delivery through the database outbox: record, claim, send, mark, retry.

Every message is stored (as JSON) under its idempotency key (job, period, destination) before
it is sent. The row is claimed (``sending``, committed) before the network call and marked
``sent`` after it, so a crash loses nothing: a ``pending`` row is delivered by the next run,
and a ``sending`` row whose claim has not been renewed for ``CLAIM_TTL`` (a heartbeat renews
it while the attempt runs, however long) is taken over.

An attempt that may have delivered the message without saying so (no answer, a 5xx, a crash
or an exception mid-send) is never repeated blindly: the row is marked ``maybe_sent``, left
alone for at least ``RETRY_BASE``, and then a Slack message is first looked for in its
channel by the delivery tag in its metadata (found: recorded as sent with its ts); an e-mail
is sent again under the same Message-ID (SMTP cannot be asked), and a webhook message is sent
again (it cannot be checked): those two are at-least-once. A database error after a
transport accepted a message is retried, and never turns the delivery into a failure.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import logging
import os
import re
import socket
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bot.errors import BotError, ConfigError, DataError, OutcomeUnknown
from bot.models import (
    DeliveryState,
    Destination,
    DestinationKind,
    EventMessage,
    MailMessage,
    Outcome,
    SlackMessage,
    Status,
)

if TYPE_CHECKING:
    from bot.config import Config
    from bot.deliver.email import SmtpSender
    from bot.deliver.slack import SlackSender, Tag
    from bot.store import Delivery, Store

log = logging.getLogger(__name__)

Message = SlackMessage | MailMessage | EventMessage
RETRY_BASE = dt.timedelta(minutes=1)
RETRY_CAP = dt.timedelta(hours=1)
HEARTBEAT_EVERY = 30.0  # at most this many seconds between renewals of a claim
SENT_WRITE_TRIES = 3  # recording "sent" after a transport accepted the message
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
    elif isinstance(msg, EventMessage):
        doc = {"type": "event", "title": msg.title, "body": msg.body}
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
    if doc["type"] == "event":
        return EventMessage(title=doc["title"], body=doc["body"]), options
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


@dataclass(frozen=True)
class Attempt:
    """Which delivery a send belongs to, so that a send after a lost answer is recognised."""

    key: str  # unique per delivery; a --force reset makes a new one
    job: str
    period: str
    destination: str
    created: str  # the delivery's creation stamp, part of its e-mail Message-ID
    since: dt.datetime  # when its first attempt began
    check_first: bool = False  # an earlier attempt may have delivered it

    @classmethod
    def of(cls, delivery: Delivery) -> Attempt:
        created = str(delivery.created_at)
        key = hashlib.sha256(
            f"{delivery.job}|{delivery.period}|{delivery.destination}|{created}".encode()
        ).hexdigest()[:24]
        return cls(key=key, job=delivery.job, period=delivery.period,
                   destination=delivery.destination, created=created,
                   since=delivery.first_attempt_at or delivery.created_at,
                   check_first=delivery.maybe_sent)


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
             now: dt.datetime, attempt: Attempt | None = None) -> str:
        """Deliver; returns a reference (Slack ts, Message-ID) or raises a BotError
        (``OutcomeUnknown`` when the message may have been delivered all the same).

        ``attempt`` names the delivery: a Slack message carries it in its metadata (and is
        looked for before posting when ``attempt.check_first``), an e-mail gets its stable
        Message-ID.
        """
        kind = destination.kind
        if kind is DestinationKind.SLACK or kind is DestinationKind.WEBHOOK:
            if not isinstance(msg, SlackMessage):
                raise ConfigError(f"{destination}: expected a Slack message")
            if kind is DestinationKind.WEBHOOK and attempt is not None and attempt.check_first:
                log.warning("%s %s to %s: an earlier attempt may have been posted; a webhook "
                            "cannot be checked, so it is sent again (at-least-once)",
                            attempt.job, attempt.period, destination)
            channel = destination.target if kind is DestinationKind.SLACK else "webhook"
            return self.slack().post(
                channel, msg, thread_ts=options.get("thread_ts"),
                reply_broadcast=bool(options.get("reply_broadcast")),
                tag=self._tag(attempt), since=attempt.since if attempt else None,
                check_first=attempt.check_first if attempt else False,
            )
        if kind is DestinationKind.EMAIL:
            if not isinstance(msg, MailMessage):
                raise ConfigError(f"{destination}: expected an e-mail message")
            from bot.deliver.email import build_mime

            smtp = self.smtp()
            msg_id = None
            if attempt is not None:
                msg_id = message_id(attempt.job, attempt.period, attempt.destination,
                                    attempt.created, self.config.email.sender)
                if attempt.check_first:
                    log.warning("%s %s to %s: an earlier attempt may have got through; SMTP "
                                "cannot be asked, so it is sent again as %s (at-least-once)",
                                attempt.job, attempt.period, destination, msg_id)
            mime = build_mime(msg, sender=self.config.email.sender,
                              recipients=[destination.target], now=now, message_id=msg_id)
            return smtp.send(mime, [destination.target])
        if kind.alerts_only:
            if not isinstance(msg, EventMessage):
                raise ConfigError(f"{destination}: expected an alert event")
            return self._send_event(destination, msg, attempt)
        # stdout: the renderer gives it its terminal form, text only
        assert not isinstance(msg, EventMessage)
        sys.stdout.write(msg.text.rstrip("\n") + "\n")
        return ""

    def _send_event(self, destination: Destination, msg: EventMessage,
                    attempt: Attempt | None) -> str:
        """PagerDuty (idempotent by dedup_key), a signed webhook or Apprise."""
        oncall = self.config.oncall
        name = destination.target
        if destination.kind is DestinationKind.PAGERDUTY:
            from bot.deliver.pagerduty import PagerDutySender

            key = oncall.pagerduty_keys.get(name)
            if not key:
                raise ConfigError(f"{destination}: the environment variable {name} is not set")
            sender = PagerDutySender(oncall.pagerduty_url, timeout=oncall.timeout,
                                     sleep=self._sleep)
            return sender.send(key, msg.body)
        if destination.kind is DestinationKind.HOOK:
            from bot.deliver.webhook import WebhookSender

            hook = oncall.webhooks.get(name)
            if hook is None:
                raise ConfigError(f"{destination}: needs webhooks.{name}.url")
            if attempt is not None and attempt.check_first:
                log.warning("%s %s to %s: an earlier attempt may have arrived; a webhook cannot "
                            "be checked, so it is sent again (at-least-once)", attempt.job,
                            attempt.period, destination)
            return WebhookSender(name, hook).send(msg.body, attempt.key if attempt else "")
        from bot.deliver.apprise import AppriseSender

        url = oncall.apprise.get(name)
        if url is None:
            raise ConfigError(f"{destination}: needs apprise.{name} (an Apprise URL)")
        return AppriseSender(name, url).send(msg.title, str(msg.body.get("text", "")))

    def find(self, destination: Destination, attempt: Attempt) -> str | None:
        """The ref of the message ``attempt`` delivered, if it can be found (a Slack channel's
        history); None when it is not there or cannot be looked for."""
        if destination.kind is not DestinationKind.SLACK:
            return None
        tag = self._tag(attempt)
        assert tag is not None
        return self.slack().find(destination.target, tag, attempt.since)

    @staticmethod
    def _tag(attempt: Attempt | None) -> Tag | None:
        if attempt is None:
            return None
        from bot.deliver.slack import Tag

        return Tag(attempt.key, attempt.job, attempt.period)


# --- the outbox ---------------------------------------------------------------------------


class Outbox:
    """Records deliveries in the store and sends them at most once each."""

    def __init__(self, store: Store, transports: Transports, max_age: dt.timedelta, *,
                 holder: str | None = None, sleep: Callable[[float], None] = time.sleep) -> None:
        self.store = store
        self.transports = transports
        self.max_age = max_age
        # who claims deliveries: one per run, so its heartbeat renews its claims only
        self.holder = holder or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        # a claim not renewed for this long was cut off (`storage.lease`, like the leases)
        self.claim_ttl = transports.config.lease_ttl
        self.sleep = sleep  # between tries of a database write

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
        prepared = self.prepare(job, period, destination, msg, now, force=force,
                                options=options)
        return prepared if isinstance(prepared, Outcome) else self.attempt(prepared, now)

    def prepare(
        self,
        job: str,
        period: str,
        destination: Destination,
        msg: Message,
        now: dt.datetime,
        *,
        force: bool = False,
        options: dict[str, Any] | None = None,
    ) -> Outcome | Delivery:
        """Record the message under its idempotency key: the delivery to attempt, or the
        outcome when there is nothing to send (already sent, given up, printed to stdout).
        Inside `Store.transaction()` it is recorded together with what else the caller
        writes there."""
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
        return self.store.outbox_put(job, period, str(destination), encode(msg, options), now,
                                     force=force)

    def attempt(self, delivery: Delivery, now: dt.datetime) -> Outcome:
        """Send one recorded delivery, marking it sending -> sent, or back to pending.

        A ConfigError (a transport that is not configured, an unreadable CA file) is not a
        delivery failure: the delivery stays pending for when the configuration is fixed and
        the outcome says ``config_error``, which the shells report as a configuration error.
        Any other exception leaves it pending too (never ``sending``), marked as possibly
        sent.
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
        quiet_until = _unknown_quiet_until(delivery)
        if quiet_until is not None and now < quiet_until:
            return done(Status.FAILED, f"{delivery.last_error} (checked again, before any "
                        f"re-send, after {quiet_until:%H:%M} UTC)")
        msg, options = decode(delivery.payload)
        claimed = self.store.outbox_begin(delivery.id, now, self.claim_ttl, holder=self.holder)
        if claimed is None:
            return self._not_claimed(delivery, destination, now, done)
        from bot.store.heartbeat import Heartbeat

        attempt = Attempt.of(claimed)
        if attempt.check_first:
            log.info("%s %s to %s: an earlier attempt may have delivered it", delivery.job,
                     delivery.period, delivery.destination)
        try:
            every = min(HEARTBEAT_EVERY, self.claim_ttl.total_seconds() / 6)
            with Heartbeat(self.store, self.holder, _advancing(now), every=every):
                ref = self.transports.send(destination, msg, options, now, attempt)
        except ConfigError as exc:
            self._failed(claimed, now, str(exc))
            return done(Status.CONFIG_ERROR, str(exc))
        except OutcomeUnknown as exc:
            self._failed(claimed, now, str(exc), maybe_sent=True)
            log.warning("delivery of %s %s to %s may or may not have got through (checked "
                        "before any re-send): %s", delivery.job, delivery.period,
                        delivery.destination, exc)
            return done(Status.FAILED, str(exc))
        except BotError as exc:
            self._failed(claimed, now, str(exc))
            log.warning("delivery of %s %s to %s failed (will retry): %s", delivery.job,
                        delivery.period, delivery.destination, exc)
            return done(Status.FAILED, str(exc))
        except Exception as exc:  # noqa: BLE001 - a bug mid-send must not leave it 'sending'
            reason = f"internal error while sending ({type(exc).__name__})"
            log.error("delivery of %s %s to %s: %s", delivery.job, delivery.period,
                      delivery.destination, reason)
            log.debug("delivery traceback", exc_info=True)
            self._failed(claimed, now, reason, maybe_sent=True)
            return done(Status.FAILED, reason)
        except BaseException:  # interrupted mid-send: it may have gone out
            self._failed(claimed, now, "interrupted while sending", maybe_sent=True)
            raise
        return self._sent(claimed, now, ref, done)

    def _failed(self, delivery: Delivery, now: dt.datetime, error: str, *,
                maybe_sent: bool = False) -> None:
        """Back to pending; if even that cannot be written, the claim goes stale and the next
        run takes the delivery over, looking first for what this attempt may have sent."""
        try:
            self.store.outbox_failed(delivery.id, now, error, maybe_sent=maybe_sent,
                                    holder=self.holder)
        except DataError as exc:
            log.error("could not record the failed delivery of %s %s to %s (%s): %s; it is "
                      "taken over once its claim goes stale", delivery.job, delivery.period,
                      delivery.destination, error, exc)

    def _sent(self, delivery: Delivery, now: dt.datetime, ref: str,
              done: Callable[..., Outcome]) -> Outcome:
        """Record the accepted message as sent, trying again if the database is busy: it is
        never turned into a failure. If it cannot be written at all, the row stays claimed
        until the claim goes stale; the next run then finds the Slack message in its channel
        (an e-mail is sent again under the same Message-ID)."""
        for tries in range(1, SENT_WRITE_TRIES + 1):
            try:
                self.store.outbox_sent(delivery.id, now, ref)
            except DataError as exc:
                if tries == SENT_WRITE_TRIES:
                    log.error("%s %s to %s was delivered (%s) but could not be recorded as "
                              "sent: %s", delivery.job, delivery.period, delivery.destination,
                              ref or "no ref", exc)
                    return done(Status.SENT, "delivered; not yet recorded in the history "
                                "database", ref)
                log.warning("recording %s %s to %s as sent: %s; trying again", delivery.job,
                            delivery.period, delivery.destination, exc)
                self.sleep(float(tries))
            else:
                break
        log.debug("delivered %s %s to %s", delivery.job, delivery.period, delivery.destination)
        return done(Status.SENT, ref=ref)

    def _not_claimed(self, delivery: Delivery, destination: Destination, now: dt.datetime,
                     done: Callable[..., Outcome]) -> Outcome:
        """Another run holds the delivery, or has finished it. A Slack message it may have
        posted is looked for: found, it is recorded as sent (a run cut off mid-send, e.g. a
        killed daemon, is resolved at once instead of after its claim goes stale)."""
        current = self.store.outbox_get(delivery.job, delivery.period, delivery.destination)
        if current is not None and current.status == DeliveryState.SENT:
            when = f"at {current.sent_at:%Y-%m-%d %H:%M} UTC" if current.sent_at else ""
            return done(Status.ALREADY_SENT, when, current.ref)
        if current is not None and current.status == DeliveryState.GIVEN_UP:
            return done(Status.GIVEN_UP, current.last_error)
        if current is not None and current.status == DeliveryState.SENDING:
            try:
                found = self.transports.find(destination, Attempt.of(current))
            except BotError as exc:
                log.debug("could not look for %s %s in %s: %s", delivery.job, delivery.period,
                          destination, exc)
                found = None
            if found is not None and self.store.outbox_found(current.id, now, found):
                log.info("%s %s to %s: posted by a run that was cut off; found in the channel "
                         "(ts %s)", delivery.job, delivery.period, destination, found)
                return done(Status.SENT, "posted by an earlier run; found in the channel",
                            found)
        return done(Status.IN_PROGRESS, "another run is sending it or has just sent it")

    def flush(self, now: dt.datetime, *, jobs: tuple[str, ...] | None = None) -> list[Outcome]:
        """Retry the deliveries left pending (or mid-send by a crash) whose backoff has passed,
        oldest first."""
        return [
            self.attempt(d, now)
            for d in self.store.outbox_due()
            if (jobs is None or d.job in jobs) and retry_due(d, now)
        ]


def _unknown_quiet_until(delivery: Delivery) -> dt.datetime | None:
    """A pending delivery whose last attempt may have got through is left alone for
    RETRY_BASE (a slow provider may still be taking it); then it is looked up first."""
    if (delivery.maybe_sent and delivery.status == DeliveryState.PENDING
            and delivery.last_attempt_at is not None):
        return delivery.last_attempt_at + RETRY_BASE
    return None


def _advancing(now: dt.datetime) -> Callable[[], dt.datetime]:
    """The run's clock (`now`) moved on by the real time elapsed since: heartbeat stamps."""
    start = time.monotonic()
    return lambda: now + dt.timedelta(seconds=time.monotonic() - start)


def retry_due(delivery: Delivery, now: dt.datetime) -> bool:
    """Failed deliveries are retried after 1, 2, 4 ... minutes, at most an hour apart. One
    still 'sending' is always looked at: its claim decides (another run is sending it, or its
    sender died and it is taken over at once, after a look for what was sent)."""
    if delivery.last_attempt_at is None or delivery.attempts == 0:
        return True
    if delivery.status == DeliveryState.SENDING:
        return True
    wait = min(RETRY_BASE * 2 ** (delivery.attempts - 1), RETRY_CAP)
    return now - delivery.last_attempt_at >= wait
