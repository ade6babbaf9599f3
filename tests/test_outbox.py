"""The outbox: idempotency, --force, retry after failure, crash windows, give-up."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from bot.config import Config
from bot.deliver.outbox import Outbox, Transports, decode, encode, message_id
from bot.errors import ConfigError, DeliveryError
from bot.models import Destination, MailMessage, SlackMessage, Status
from bot.store import Store, connect

T0 = dt.datetime(2026, 11, 25, 9, 0, tzinfo=dt.UTC)
OPS = Destination.parse("slack:#ops")
MSG = SlackMessage(text="OpenRouter spend $1.00", blocks=[{"type": "divider"}],
                   chart_png=b"\x89PNG fake", chart_title="chart")


class RecordingTransports(Transports):
    """Transports whose send records calls and fails while `down` is set."""

    def __init__(self) -> None:
        super().__init__(Config())
        self.sent: list[tuple[str, str, dict[str, Any]]] = []
        self.down = False
        self.misconfigured = False

    def send(self, destination: Destination, msg: Any, options: dict[str, Any],
             now: dt.datetime, msg_id: str | None = None) -> str:
        if self.misconfigured:
            raise ConfigError("email.ca_file: cannot load /nowhere/ca.pem")
        if self.down:
            raise DeliveryError(f"{destination}: service unavailable")
        self.sent.append((str(destination), msg.text, options))
        return f"ts-{len(self.sent)}"


@pytest.fixture()
def box() -> tuple[Outbox, RecordingTransports, Store]:
    store = Store(connect(":memory:"))
    transports = RecordingTransports()
    return Outbox(store, transports, dt.timedelta(hours=24)), transports, store


def test_payload_round_trip() -> None:
    mail = MailMessage(subject="s", text="t", html="<p>h</p>", inline_images={"chart": b"\x00\x01"},
                       attachments=[("a.csv", "text/csv", b"x,y\n")])
    for msg in (MSG, mail):
        back, options = decode(encode(msg, {"thread_ts": "1.2"}))
        assert back == msg and options == {"thread_ts": "1.2"}


def test_sent_once_then_already_sent_unless_forced(box) -> None:
    outbox, transports, _ = box
    first = outbox.submit("daily", "2026-11-24", OPS, MSG, T0)
    again = outbox.submit("daily", "2026-11-24", OPS, MSG, T0 + dt.timedelta(hours=1))
    assert (first.status, again.status) == (Status.SENT, Status.ALREADY_SENT)
    assert len(transports.sent) == 1
    other = outbox.submit("daily", "2026-11-24", Destination.parse("slack:#other"), MSG, T0)
    assert other.status is Status.SENT and len(transports.sent) == 2
    forced = outbox.submit("daily", "2026-11-24", OPS, MSG, T0, force=True)
    assert forced.status is Status.SENT and len(transports.sent) == 3


def test_failed_delivery_is_kept_and_retried_exactly_once(box) -> None:
    outbox, transports, store = box
    transports.down = True
    failed = outbox.submit("daily", "2026-11-24", OPS, MSG, T0)
    assert failed.status is Status.FAILED and "service unavailable" in failed.detail
    assert [d.status for d in store.outbox_due()] == ["pending"]
    assert outbox.flush(T0 + dt.timedelta(seconds=30)) == []  # backing off: 1 minute first
    assert outbox.flush(T0 + dt.timedelta(minutes=1))[0].status is Status.FAILED
    assert outbox.flush(T0 + dt.timedelta(minutes=2)) == []  # then 2 minutes
    transports.down = False
    retried = outbox.flush(T0 + dt.timedelta(minutes=3))
    assert [(o.status, o.period) for o in retried] == [("sent", "2026-11-24")]
    assert outbox.flush(T0 + dt.timedelta(minutes=4)) == []
    assert len(transports.sent) == 1


def test_crash_between_begin_and_sent_is_redelivered(box) -> None:
    outbox, transports, store = box
    delivery = store.outbox_put("weekly", "p", "slack:#ops", encode(MSG), T0)
    assert store.outbox_begin(delivery.id, T0)  # ... and the process died here
    assert [d.status for d in store.outbox_due()] == ["sending"]
    # minutes later it may still be another process's slow send: left alone
    [outcome] = outbox.flush(T0 + dt.timedelta(minutes=5))
    assert outcome.status is Status.IN_PROGRESS and outcome.ok and transports.sent == []
    # once stale, the crashed attempt is delivered
    [outcome] = outbox.flush(T0 + dt.timedelta(minutes=11))
    assert outcome.status is Status.SENT and len(transports.sent) == 1
    assert outbox.submit("weekly", "p", OPS, MSG, T0).status is Status.ALREADY_SENT


def test_gives_up_after_max_age(box) -> None:
    outbox, transports, store = box
    transports.down = True
    outbox.submit("daily", "2026-11-24", OPS, MSG, T0)
    transports.down = False
    [outcome] = outbox.flush(T0 + dt.timedelta(hours=25))
    assert outcome.status is Status.GIVEN_UP and not outcome.ok
    assert "service unavailable" in outcome.detail
    assert transports.sent == [] and store.outbox_due() == []
    again = outbox.submit("daily", "2026-11-24", OPS, MSG, T0 + dt.timedelta(hours=26))
    assert again.status is Status.GIVEN_UP and "--force" in again.detail and transports.sent == []
    forced = outbox.submit("daily", "2026-11-24", OPS, MSG, T0 + dt.timedelta(hours=26),
                           force=True)
    assert forced.status is Status.SENT and len(transports.sent) == 1


def test_thread_options_are_kept(box) -> None:
    outbox, transports, _ = box
    outbox.submit("alert", "x", OPS, MSG, T0,
                  options={"thread_ts": "123.456", "reply_broadcast": True})
    assert transports.sent[0][2] == {"thread_ts": "123.456", "reply_broadcast": True}


def test_message_id_is_stable_per_delivery() -> None:
    a = message_id("weekly", "p", "email:a@x.io", "1", "Reports <r@example.com>")
    assert a == message_id("weekly", "p", "email:a@x.io", "1", "Reports <r@example.com>")
    assert a != message_id("weekly", "p", "email:b@x.io", "1", "Reports <r@example.com>")
    assert a.endswith("@example.com>")


def test_config_error_at_send_time_is_reported_as_such_and_the_delivery_kept(box) -> None:
    outbox, transports, store = box
    transports.misconfigured = True
    stopped = outbox.submit("daily", "2026-11-24", OPS, MSG, T0)
    assert stopped.status is Status.CONFIG_ERROR and not stopped.ok
    assert stopped.detail == "email.ca_file: cannot load /nowhere/ca.pem"
    [kept] = store.outbox_due()
    assert kept.status == "pending" and "email.ca_file" in kept.last_error
    transports.misconfigured = False  # the user fixes the config: the next run delivers it
    [outcome] = outbox.flush(T0 + dt.timedelta(minutes=1))
    assert outcome.status is Status.SENT and len(transports.sent) == 1
