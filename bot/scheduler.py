"""The `run` daemon: a `schedule.Scheduler` driving sync, alerts, digests and reports.

Sync and alerts run every `sync_every` / `alerts.check_every`. The daily digest and weekly
report are "slot" jobs: a pure function gives the latest time each was due (wall-clock time
in the configured zone, so DST is handled by the zone database), and a check every few
seconds runs the job once for each new slot. The same check is the catch-up on start: a slot
that passed while the daemon was down runs once, and the outbox makes it a no-op if it was
already sent. Every job is wrapped (one log line with duration and outcome; a failure is
retried on a later tick) and runs only while this process holds the database lease.

Several daemons on one database (PostgreSQL, on several machines) are one leader and
standbys: the leader renews the lease (`storage.lease`) every third of it, and a heartbeat
renews it while a job runs. A standby asks for the lease as often; once a dead leader's lease
has expired it takes over and at once catches up like a fresh start: the slots the leader
handled are read back from the database, pending deliveries (one cut off mid-send is looked
up in Slack before any re-send), alerts and missed slots run. A database that cannot be
reached fails a job (retried) and never stops the loop.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import os
import signal
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from bot.config import WEEKDAYS, ReportConfig
from bot.errors import BotError, DataError
from bot.models import DAY, Status

if TYPE_CHECKING:
    import schedule

    from bot.app import App

log = logging.getLogger(__name__)

LEASE = "daemon"
SLOT_CHECK_SECONDS = 5
RETRY_AFTER = dt.timedelta(minutes=5)
START_RETRY_SECONDS = 10
FIRST_START_GRACE = dt.timedelta(hours=12)


def last_slot(
    now: dt.datetime, at: dt.time, tz_name: str, weekday: str | None = None
) -> dt.datetime:
    """The latest time at or before `now` (UTC) when a job at wall-clock `at` in `tz_name`
    (on `weekday`, if given) was due. A wall-clock time skipped by DST runs at the first
    valid instant after it; a repeated one runs at its first occurrence."""
    tz = ZoneInfo(tz_name)
    local_now = now.astimezone(tz)
    day = local_now.date()
    for _ in range(8 if weekday else 2):
        if weekday is None or WEEKDAYS[day.weekday()] == weekday:
            slot = _localize(tz, dt.datetime.combine(day, at))
            if slot <= now:
                return slot.astimezone(dt.UTC)
        day -= DAY
    raise AssertionError("unreachable: a slot exists within eight days")


def next_slot(
    now: dt.datetime, at: dt.time, tz_name: str, weekday: str | None = None
) -> dt.datetime:
    """The first time strictly after `now` (UTC) when the job is due."""
    tz = ZoneInfo(tz_name)
    day = now.astimezone(tz).date()
    for _ in range(9):
        if weekday is None or WEEKDAYS[day.weekday()] == weekday:
            slot = _localize(tz, dt.datetime.combine(day, at))
            if slot > now:
                return slot.astimezone(dt.UTC)
        day += DAY
    raise AssertionError("unreachable: a slot exists within nine days")


def _localize(tz: ZoneInfo, naive: dt.datetime) -> dt.datetime:
    """The instant (UTC) of a wall-clock time in `tz`. With fold=0 (PEP 495) a time skipped by
    DST takes the offset from before the change, which is the instant right after the gap, and
    a repeated time is its first occurrence."""
    return naive.replace(tzinfo=tz, fold=0).astimezone(dt.UTC)


def first_start_baseline(
    now: dt.datetime, at: dt.time, tz_name: str, weekday: str | None = None
) -> dt.datetime | None:
    """What the very first start counts as handled: nothing, when the latest slot passed less
    than FIRST_START_GRACE ago (deployed at 10:00 for a 09:00 digest: send it now), else
    that slot (a digest from many hours ago is not worth sending late)."""
    slot = last_slot(now, at, tz_name, weekday)
    return None if now - slot < FIRST_START_GRACE else slot


def should_run_slot(slot: dt.datetime, handled: dt.datetime | None) -> bool:
    """A slot runs once: when nothing was handled yet, or only an earlier slot was."""
    return handled is None or slot > handled


@dataclass
class SlotJob:
    """A daily or weekly job and the latest slot it has handled."""

    name: str
    report: ReportConfig
    weekly: bool
    handled: dt.datetime | None = None
    retry_at: dt.datetime | None = None

    def due(self, now: dt.datetime, tz: str) -> dt.datetime | None:
        slot = last_slot(now, self.report.at, tz, self.report.day if self.weekly else None)
        if not should_run_slot(slot, self.handled):
            return None
        if self.retry_at is not None and now < self.retry_at:
            return None
        return slot


@dataclass
class Daemon:
    """Owns the Scheduler, the lease and the stop flag."""

    app: App
    holder: str = field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}:"
                        f"{uuid.uuid4().hex[:8]}")
    stopping: bool = False
    leader: bool = False
    took_over: bool = False  # became the leader after standing by: catch up at once
    _standing_by: bool = field(default=False, repr=False)
    sleep: Callable[[float], None] = time.sleep
    slots: list[SlotJob] = field(default_factory=list)
    scheduler: schedule.Scheduler | None = None
    interactive: Any = None  # the Slack bot (bot.interactive.service) when slack.app_token is set

    def setup(self) -> schedule.Scheduler:
        import schedule

        cfg = self.app.config
        sched = schedule.Scheduler()
        sched.every(int(cfg.sync_every.total_seconds())).seconds.do(self.wrapped("sync",
                                                                                 self.sync))
        if cfg.alerts.rules:
            sched.every(int(cfg.alerts.check_every.total_seconds())).seconds.do(
                self.wrapped("alerts", self.alerts))
        # at least once a lease period, so a delivery a dead leader left is not kept waiting
        flush_every = max(1, min(60, int(self.lease_ttl.total_seconds())))
        sched.every(flush_every).seconds.do(self.wrapped("outbox", self.flush))
        for name, report in (("daily", cfg.daily), ("weekly", cfg.weekly)):
            if report.enabled and not report.to:
                log.warning("reports.%s is enabled but has no destinations (`to`): not "
                            "scheduled", name)
            if report.enabled and report.to:
                job = SlotJob(name, report, weekly=name == "weekly")
                job.handled = self._load_handled(name)
                if job.handled is None:
                    job.handled = first_start_baseline(
                        self.app.now(), report.at, cfg.timezone,
                        report.day if job.weekly else None)
                    self._save_handled(job)
                upcoming = next_slot(self.app.now(), report.at, cfg.timezone,
                                     report.day if job.weekly else None)
                log.info("%s report: every %s at %s (%s); next at %s UTC", name,
                         report.day if job.weekly else "day", report.at, cfg.timezone,
                         f"{upcoming:%Y-%m-%d %H:%M:%S}")
                self.slots.append(job)
        sched.every(SLOT_CHECK_SECONDS).seconds.do(self.check_slots)
        if cfg.slack.app_token:
            sched.every(60).seconds.do(self.listen)
        self.scheduler = sched
        return sched

    # --- jobs -----------------------------------------------------------------------------

    def run_job(self, name: str, fn: Callable[[], str]) -> bool:
        """Run one job while holding the lease: one log line with its duration and outcome;
        an exception is logged, never raised. True when the job ran and succeeded."""
        started = time.monotonic()
        try:
            if not self.hold_lease():
                return False
            from bot.store.heartbeat import Heartbeat

            # renewed while the job runs, so a long job never outlives the lease
            with Heartbeat(self.app.store(), self.holder, self.app.now,
                           every=self.lease_ttl.total_seconds() / 3,
                           leases={LEASE: self.lease_ttl}):
                outcome = fn()
        except Exception as exc:  # noqa: BLE001 - a failing job must not stop the loop
            log.error("job %s failed in %.2fs: %s", name, time.monotonic() - started, exc)
            log.debug("job %s traceback", name, exc_info=True)
            return False
        log.info("job %s ok in %.2fs: %s", name, time.monotonic() - started, outcome)
        return True

    def wrapped(self, name: str, fn: Callable[[], str]) -> Callable[[], None]:
        """`fn` as a scheduler job (schedule's `run_pending` does not catch exceptions)."""

        def run() -> None:
            self.run_job(name, fn)

        return run

    def sync(self) -> str:
        from bot.jobs.sync import run_sync

        with self.app.client() as client:
            summary = run_sync(client, self.app.store(), now=self.app.now(),
                               backfill=self.app.config.history.backfill).summary()
        if self.interactive is not None and self.interactive.listener.started:
            summary = " ".join(filter(None, (summary, self.interactive.after_sync())))
        return summary

    def listen(self) -> None:
        """Connect the interactive Slack bot (Socket Mode) unless it is connected; it
        reconnects by itself after that."""
        from bot.interactive.service import Interactive

        try:
            if self.interactive is None:
                self.interactive = Interactive(self.app)
            self.interactive.ensure_started()
        except BotError as exc:
            log.error("Slack Socket Mode not connected (trying again in a minute): %s", exc)

    def alerts(self) -> str:
        from bot.jobs.alerts import run_alerts

        result = run_alerts(self.app)
        parts = [f"{e.action} {e.obs.rule.id} {e.obs.name or e.obs.subject}: "
                 + ", ".join(o.status.label for o in outs) for e, outs in result.events]
        if result.retried:  # deliveries earlier checks could not make
            parts.append(f"{len(result.retried)} earlier alert deliveries retried: "
                         + ", ".join(o.status.label for o in result.retried))
        return "; ".join(parts) or "nothing changed"

    def flush(self) -> str:
        from bot.deliver.outbox import Outbox

        cfg = self.app.config
        outbox = Outbox(self.app.store(), self.app.transports(), cfg.delivery_max_age)
        done = outbox.flush(self.app.now(), jobs=("daily", "weekly"))
        return ", ".join(o.line() for o in done) if done else "nothing pending"

    def run_report(self, job: SlotJob, slot: dt.datetime) -> str:
        from bot.compute import aggregate
        from bot.jobs.send import build, deliver

        built = build(self.app, job.name, aggregate.latest_complete_day(slot))
        outcomes = deliver(self.app, built, list(job.report.to))
        # "given up" is final (logged by the outbox); a failure or a configuration error (which
        # may be fixed while the daemon runs) is worth a retry
        failed = [o for o in outcomes if o.status in (Status.FAILED, Status.CONFIG_ERROR)]
        summary = f"{built.period}: " + ", ".join(o.line() for o in outcomes)
        if failed:
            raise RuntimeError(summary)
        return summary

    def check_slots(self) -> None:
        """Run each report whose latest slot has not been handled yet (also the catch-up)."""
        now = self.app.now()
        for job in self.slots:
            slot = job.due(now, self.app.config.timezone)
            if slot is None:
                continue
            name = f"{job.name} (slot {slot:%Y-%m-%d %H:%M} UTC)"
            if self.run_job(name, functools.partial(self.run_report, job, slot)):
                job.handled, job.retry_at = slot, None
                try:
                    self._save_handled(job)
                except BotError as exc:  # a restart re-runs the slot: the outbox says "sent"
                    log.warning("could not record that %s ran: %s", name, exc)
            elif self.leader:
                job.retry_at = now + RETRY_AFTER
                log.info("job %s: retrying at %s UTC", name, f"{job.retry_at:%H:%M:%S}")
            else:
                return

    def _save_handled(self, job: SlotJob) -> None:
        if job.handled is not None:
            self.app.store().set_meta(f"scheduler.{job.name}.handled", job.handled.isoformat())

    def _load_handled(self, name: str) -> dt.datetime | None:
        raw = self.app.store().get_meta(f"scheduler.{name}.handled")
        return dt.datetime.fromisoformat(raw) if raw else None

    def reload_handled(self) -> None:
        """Take on the slots another daemon (the leader before us) has handled since."""
        for job in self.slots:
            stored = self._load_handled(job.name)
            if stored is not None and (job.handled is None or stored > job.handled):
                job.handled, job.retry_at = stored, None

    # --- lease and loop ---------------------------------------------------------------------

    @property
    def lease_ttl(self) -> dt.timedelta:
        return self.app.config.lease_ttl

    def hold_lease(self) -> bool:
        """Take or renew the daemon lease; False while another daemon holds it."""
        got = self.app.store().lease_acquire(LEASE, self.holder, self.app.now(), self.lease_ttl)
        if got and not self.leader:
            log.info("acquired the database lease (%s): this daemon runs the jobs", self.holder)
            self.took_over = self._standing_by
        elif not got and (self.leader or not self._standing_by):
            log.info("another daemon holds the database lease: %s stands by", self.holder)
        self._standing_by = not got
        self.leader = got
        return got

    def catch_up(self) -> None:
        """After taking over from another daemon: what a fresh start does, at once."""
        self.took_over = False
        try:
            self.reload_handled()
        except BotError as exc:
            log.warning("could not read which reports the previous leader sent: %s", exc)
        if self.scheduler is not None:
            self.scheduler.run_all()

    def stop(self, signum: int, _frame: Any = None) -> None:
        log.info("received %s, stopping after the current job", signal.Signals(signum).name)
        self.stopping = True

    def loop(self) -> int:
        sched = self.scheduler or self.setup()
        log.info("daemon started (%s); %d jobs scheduled", self.holder, len(sched.get_jobs()))
        sched.run_all()  # sync, alerts, pending deliveries, and catch-up of missed slots
        last_renew = time.monotonic()
        while not self.stopping:
            sched.run_pending()
            if time.monotonic() - last_renew > self.lease_ttl.total_seconds() / 3:
                last_renew = time.monotonic()
                try:
                    self.hold_lease()
                except BotError as exc:  # a busy database: try again at the next renewal
                    log.warning("could not renew the database lease: %s", exc)
            if self.took_over and not self.stopping:
                self.catch_up()
            wait = min(sched.idle_seconds or 1.0, 1.0)
            if wait > 0 and not self.stopping:
                self.sleep(wait)
        if self.interactive is not None:
            self.interactive.stop()
        try:
            self.app.store().lease_release(LEASE, self.holder)
        except BotError as exc:
            log.warning("could not release the database lease (it expires by itself): %s", exc)
        log.info("daemon stopped")
        return 0


def run_daemon(app: App) -> int:
    daemon = Daemon(app)
    signal.signal(signal.SIGTERM, daemon.stop)
    signal.signal(signal.SIGINT, daemon.stop)
    while True:  # a database that cannot be reached yet (it starts later, it restarts)
        try:
            daemon.setup()
            break
        except DataError as exc:
            log.error("cannot start yet: %s; trying again in %ds", exc, START_RETRY_SECONDS)
            daemon.slots.clear()
            for _ in range(START_RETRY_SECONDS):  # a second at a time: SIGTERM stops it
                if daemon.stopping:
                    log.info("daemon stopped")
                    return 0
                daemon.sleep(1)
    return daemon.loop()
