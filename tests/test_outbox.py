"""The outbox: idempotency, --force, retry after failure, claims and their heartbeat, unknown
outcomes, crash windows, give-up; on SQLite and PostgreSQL.

`RecordingTransports` stands in for Slack: a channel it "posts" to remembers each message by
its delivery key, and `check_first` looks there before posting, as the Slack sender does.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bot.config import Config
from bot.deliver.outbox import Attempt, Outbox, Transports, decode, encode, message_id
from bot.errors import ConfigError, DeliveryError, OutcomeUnknown
from bot.models import Destination, MailMessage, SlackMessage, Status
from bot.store import CLAIM_TTL, Store, connect
from bot.store.heartbeat import Heartbeat
from tests.pg_server import make_target

T0 = dt.datetime(2026, 11, 25, 9, 0, tzinfo=dt.UTC)
MINUTE = dt.timedelta(minutes=1)
OPS = Destination.parse("slack:#ops")
MSG = SlackMessage(text="OpenRouter spend $1.00", blocks=[{"type": "divider"}],
                   chart_png=b"\x89PNG fake", chart_title="chart")


class RecordingTransports(Transports):
    """Transports whose send records calls; `down` fails before sending, `lost` delivers and
    then loses the answer, `boom` raises that exception mid-send."""

    def __init__(self) -> None:
        super().__init__(Config())
        self.sent: list[tuple[str, str, dict[str, Any]]] = []
        self.attempts: list[Attempt | None] = []
        self.channel: dict[str, str] = {}  # delivery key -> ts of what is in the channel
        self.down = False
        self.lost = False
        self.misconfigured = False
        self.boom: BaseException | None = None

    def send(self, destination: Destination, msg: Any, options: dict[str, Any],
             now: dt.datetime, attempt: Attempt | None = None) -> str:
        self.attempts.append(attempt)
        if self.misconfigured:
            raise ConfigError("email.ca_file: cannot load /nowhere/ca.pem")
        if self.down:
            raise DeliveryError(f"{destination}: service unavailable")
        if attempt is not None and attempt.check_first and attempt.key in self.channel:
            return self.channel[attempt.key]  # found: not posted again
        if self.boom is not None:
            raise self.boom
        self.sent.append((str(destination), msg.text, options))
        ts = f"ts-{len(self.sent)}"
        if attempt is not None:
            self.channel[attempt.key] = ts
        if self.lost:
            raise OutcomeUnknown(f"{destination}: HTTP 502; it may have been posted")
        return ts

    def find(self, destination: Destination, attempt: Attempt) -> str | None:
        return self.channel.get(attempt.key)


@pytest.fixture(params=["memory", "postgresql"])
def box(request: pytest.FixtureRequest,
        tmp_path: Path) -> Iterator[tuple[Outbox, RecordingTransports, Store]]:
    store = Store(connect(make_target(request.param, request, tmp_path)))
    transports = RecordingTransports()
    yield Outbox(store, transports, dt.timedelta(hours=24)), transports, store
    store.conn.close()


def test_a_payload_decodes_to_the_message_and_options_it_encoded() -> None:
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


def test_a_run_cut_off_mid_send_is_taken_over_once_its_claim_is_stale(box) -> None:
    outbox, transports, store = box
    delivery = store.outbox_put("weekly", "p", "slack:#ops", encode(MSG), T0)
    assert store.outbox_begin(delivery.id, T0, holder="dead-run")  # ... and it died here
    assert [d.status for d in store.outbox_due()] == ["sending"]
    # within the claim's life it may still be another run's slow send: left alone
    [outcome] = outbox.flush(T0 + CLAIM_TTL - MINUTE)
    assert outcome.status is Status.IN_PROGRESS and outcome.ok and transports.sent == []
    # once stale, it is taken over, looking first for what the dead run may have sent
    [outcome] = outbox.flush(T0 + CLAIM_TTL + MINUTE)
    assert outcome.status is Status.SENT and len(transports.sent) == 1
    [*_, attempt] = transports.attempts
    assert attempt is not None and attempt.check_first and attempt.since == T0
    assert outbox.submit("weekly", "p", OPS, MSG, T0).status is Status.ALREADY_SENT


def test_a_stale_claim_whose_message_is_in_the_channel_is_not_sent_again(box) -> None:
    outbox, transports, store = box
    delivery = store.outbox_put("daily", "d", "slack:#ops", encode(MSG), T0)
    claimed = store.outbox_begin(delivery.id, T0, holder="dead-run")
    assert claimed is not None
    transports.channel[Attempt.of(claimed).key] = "1764061200.000100"  # it did get posted

    [outcome] = outbox.flush(T0 + CLAIM_TTL + MINUTE)

    assert (outcome.status, outcome.ref) == (Status.SENT, "1764061200.000100")
    assert transports.sent == []
    assert store.outbox_get("daily", "d", "slack:#ops").ref == "1764061200.000100"


def test_a_live_claim_whose_message_is_already_in_the_channel_is_resolved_at_once(box) -> None:
    outbox, transports, store = box
    delivery = store.outbox_put("daily", "d", "slack:#ops", encode(MSG), T0)
    claimed = store.outbox_begin(delivery.id, T0, holder="killed-daemon")
    assert claimed is not None
    transports.channel[Attempt.of(claimed).key] = "1764061200.000200"

    outcome = outbox.submit("daily", "d", OPS, MSG, T0 + MINUTE)  # restarted a minute later

    assert outcome.status is Status.SENT and "found in the channel" in outcome.detail
    assert outcome.ref == "1764061200.000200" and transports.sent == []
    assert outbox.submit("daily", "d", OPS, MSG, T0).status is Status.ALREADY_SENT


def test_a_late_failure_does_not_undo_a_delivery_another_run_resolved(box) -> None:
    outbox, transports, store = box
    delivery = store.outbox_put("daily", "d", "slack:#ops", encode(MSG), T0)
    assert store.outbox_begin(delivery.id, T0, holder="slow-run")
    assert store.outbox_found(delivery.id, T0 + MINUTE, "1764061200.000300")  # found by another
    store.outbox_failed(delivery.id, T0 + 2 * MINUTE, "no answer", maybe_sent=True,
                        holder="slow-run")  # the slow run's answer was lost after all
    assert store.outbox_get("daily", "d", "slack:#ops").status == "sent"
    taken = store.outbox_put("daily", "e", "slack:#ops", encode(MSG), T0)
    assert store.outbox_begin(taken.id, T0, holder="slow-run")
    assert store.outbox_begin(taken.id, T0 + CLAIM_TTL, holder="new-run")  # taken over
    store.outbox_failed(taken.id, T0 + CLAIM_TTL, "late", holder="slow-run")
    row = store.outbox_get("daily", "e", "slack:#ops")
    assert row.status == "sending" and row.claimed_by == "new-run"


def test_staleness_counts_from_the_last_heartbeat(box) -> None:
    outbox, transports, store = box
    delivery = store.outbox_put("daily", "d", "slack:#ops", encode(MSG), T0)
    assert store.outbox_begin(delivery.id, T0, holder="slow-run")
    assert store.outbox_heartbeat("slow-run", T0 + 10 * MINUTE) == 1  # still at it
    assert store.outbox_heartbeat("someone-else", T0 + 10 * MINUTE) == 0

    assert store.outbox_begin(delivery.id, T0 + 12 * MINUTE) is None
    assert store.outbox_begin(delivery.id, T0 + 10 * MINUTE + CLAIM_TTL) is not None


def test_a_heartbeat_renews_its_claims_and_leases(tmp_path: Path) -> None:
    store = Store(connect(tmp_path / "h.db"))
    delivery = store.outbox_put("daily", "d", "slack:#ops", encode(MSG), T0)
    assert store.outbox_begin(delivery.id, T0, holder="run-1")
    ttl = dt.timedelta(minutes=5)
    assert store.lease_acquire("alerts", "run-1", T0, ttl)
    clock = [T0 + 4 * MINUTE]
    beat = Heartbeat(store, "run-1", lambda: clock[0], leases={"alerts": ttl})

    assert beat.beat()

    assert not store.lease_acquire("alerts", "run-2", T0 + 6 * MINUTE, ttl)  # renewed
    assert store.outbox_begin(delivery.id, T0 + 5 * MINUTE) is None
    clock[0] = T0 + 45 * MINUTE  # past max_hold: a wedged run lets go
    assert not beat.beat()
    assert store.lease_acquire("alerts", "run-2", T0 + 46 * MINUTE, ttl)


def test_the_heartbeat_thread_beats_on_its_own_connection(tmp_path: Path) -> None:
    store = Store(connect(tmp_path / "h.db"))
    delivery = store.outbox_put("daily", "d", "slack:#ops", encode(MSG), T0)
    assert store.outbox_begin(delivery.id, T0, holder="run-1")
    with Heartbeat(store, "run-1", lambda: T0 + 2 * MINUTE, every=0.001) as beat:
        deadline = time.monotonic() + 5
        while beat.beats == 0 and time.monotonic() < deadline:
            time.sleep(0.001)  # until the thread has beaten (not a wait on the clock)
    assert beat.beats >= 1
    assert store.outbox_get("daily", "d", "slack:#ops").heartbeat_at == T0 + 2 * MINUTE
    with Heartbeat(Store(connect(":memory:")), "run-1", lambda: T0) as idle:
        pass  # an in-memory database has no other reader: no thread
    assert idle.beats == 0


def test_an_unknown_outcome_is_not_retried_in_the_same_run_and_then_looked_up(box) -> None:
    outbox, transports, store = box
    transports.lost = True  # Slack took it, the answer was lost
    first = outbox.submit("daily", "d", OPS, MSG, T0)
    assert first.status is Status.FAILED and "may have been posted" in first.detail
    [row] = store.outbox_due()
    assert row.status == "pending" and row.maybe_sent
    transports.lost = False

    again = outbox.submit("daily", "d", OPS, MSG, T0 + dt.timedelta(seconds=5))  # same run
    assert again.status is Status.FAILED and "after 09:01 UTC" in again.detail
    assert len(transports.attempts) == 1

    [later] = outbox.flush(T0 + MINUTE)
    assert later.status is Status.SENT and later.ref == "ts-1"
    assert len(transports.sent) == 1  # found, not posted twice


def test_an_unknown_outcome_stays_marked_through_later_plain_failures(box) -> None:
    outbox, transports, store = box
    transports.boom = OutcomeUnknown("no answer")
    outbox.submit("daily", "d", OPS, MSG, T0)
    transports.boom = None
    transports.down = True
    outbox.flush(T0 + MINUTE)
    transports.down = False
    outbox.flush(T0 + 3 * MINUTE)
    [*_, attempt] = transports.attempts
    assert attempt is not None and attempt.check_first  # still looked for first


@pytest.mark.parametrize("error", [ValueError("Retry-After: '1.5'"), UnicodeEncodeError(
    "ascii", "pässword", 1, 2, "ordinal not in range(128)"), RuntimeError("bug")])
def test_an_exception_mid_send_never_leaves_the_delivery_sending(box, error: Exception) -> None:
    outbox, transports, store = box
    transports.boom = error

    outcome = outbox.submit("daily", "d", OPS, MSG, T0)

    assert outcome.status is Status.FAILED and not outcome.ok
    assert outcome.detail == f"internal error while sending ({type(error).__name__})"
    [row] = store.outbox_due()
    assert row.status == "pending" and row.maybe_sent
    transports.boom = None
    [retried] = outbox.flush(T0 + MINUTE)
    assert retried.status is Status.SENT and len(transports.sent) == 1


def test_an_interrupt_mid_send_leaves_it_pending_and_propagates(box) -> None:
    outbox, transports, store = box
    transports.boom = KeyboardInterrupt()
    with pytest.raises(KeyboardInterrupt):
        outbox.submit("daily", "d", OPS, MSG, T0)
    [row] = store.outbox_due()
    assert row.status == "pending" and row.maybe_sent


class LockAfterSend:
    """Another connection write-locks the database right after the next send, and lets go
    after `held` waits through the outbox's injected sleep (or on `release()`)."""

    def __init__(self, outbox: Outbox, transports: RecordingTransports, path: Path,
                 held: int) -> None:
        self.locker = sqlite3.connect(path, isolation_level=None)
        self.held = held
        self.sleeps: list[float] = []
        original = transports.send

        def send(*args: Any, **kwargs: Any) -> str:
            ref = original(*args, **kwargs)
            self.locker.execute("BEGIN IMMEDIATE")
            return ref

        transports.send = send  # type: ignore[method-assign]
        outbox.sleep = self.sleep

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        if len(self.sleeps) >= self.held:
            self.release()

    def release(self) -> None:
        if self.locker.in_transaction:
            self.locker.execute("ROLLBACK")


def file_box(tmp_path: Path) -> tuple[Outbox, RecordingTransports, Store, Path]:
    path = tmp_path / "history.db"
    store = Store(connect(path))
    store.conn.execute("PRAGMA busy_timeout = 20")  # a lock fails a write in milliseconds
    transports = RecordingTransports()
    return Outbox(store, transports, dt.timedelta(hours=24)), transports, store, path


def test_a_database_lock_right_after_the_send_does_not_fail_the_delivery(tmp_path) -> None:
    outbox, transports, store, path = file_box(tmp_path)
    lock = LockAfterSend(outbox, transports, path, held=1)

    outcome = outbox.submit("daily", "d", OPS, MSG, T0)

    assert outcome.status is Status.SENT and outcome.ref == "ts-1" and lock.sleeps == [1.0]
    row = store.outbox_get("daily", "d", "slack:#ops")
    assert row.status == "sent" and row.ref == "ts-1"
    assert outbox.submit("daily", "d", OPS, MSG, T0 + MINUTE).status is Status.ALREADY_SENT
    assert len(transports.sent) == 1


def test_a_database_that_stays_locked_after_the_send_leaves_it_for_the_lookup(tmp_path) -> None:
    outbox, transports, store, path = file_box(tmp_path)
    lock = LockAfterSend(outbox, transports, path, held=99)

    outcome = outbox.submit("daily", "d", OPS, MSG, T0)

    assert outcome.status is Status.SENT and "not yet recorded" in outcome.detail
    lock.release()  # the other writer lets go
    row = store.outbox_get("daily", "d", "slack:#ops")
    assert row.status == "sending"  # never "failed", never pending for a blind resend
    [later] = outbox.flush(T0 + CLAIM_TTL + MINUTE)
    assert (later.status, later.ref) == (Status.SENT, "ts-1")
    assert len(transports.sent) == 1


def test_each_delivery_and_each_forced_resend_has_its_own_key(box) -> None:
    outbox, transports, store = box
    outbox.submit("daily", "d", OPS, MSG, T0)
    outbox.submit("daily", "d", Destination.parse("slack:#other"), MSG, T0)
    outbox.submit("daily", "d", OPS, MSG, T0 + MINUTE, force=True)
    keys = [a.key for a in transports.attempts if a is not None]
    assert len(keys) == 3 and len(set(keys)) == 3
    assert not any(a.check_first for a in transports.attempts if a is not None)


def test_an_email_retry_keeps_its_message_id() -> None:
    store = Store(connect(":memory:"))
    row = store.outbox_put("weekly", "p", "email:a@x.io", "{}", T0)
    first = Attempt.of(store.outbox_begin(row.id, T0))
    store.outbox_failed(row.id, T0, "timed out during DATA", maybe_sent=True)
    second = Attempt.of(store.outbox_begin(row.id, T0 + MINUTE))
    assert second.check_first and first.created == second.created
    sender = "Reports <r@example.com>"
    assert (message_id(first.job, first.period, first.destination, first.created, sender)
            == message_id(second.job, second.period, second.destination, second.created,
                          sender))


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
