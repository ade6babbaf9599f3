"""The `run` daemon: catch-up, failing jobs, the lease, and a real subprocess with SIGTERM.

Times are wall-clock times in the configured zone on the injected clock's day (`clock.local`),
so the same tests hold on a DST-change day.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from bot.app import App
from bot.config import load_config
from bot.scheduler import Daemon, last_slot
from tests.conftest import Clock
from tests.fake_openrouter import MANAGEMENT_KEY, FakeOpenRouter, sample_org
from tests.fake_slack import FakeSlack

NINE = dt.time(9, 0)


@pytest.fixture()
def setup(fake_openrouter: FakeOpenRouter, fake_slack: FakeSlack, tmp_path: Path,
          monkeypatch: pytest.MonkeyPatch, clock: Clock) -> dict[str, Any]:
    org = sample_org(last_day=clock.yesterday, days=10)
    fake_openrouter.credits = org["credits"]
    fake_openrouter.activity_rows = org["activity"]
    fake_openrouter.key_activity = org["key_activity"]
    fake_openrouter.keys = org["keys"]
    env = {
        "OPENROUTER_MANAGEMENT_KEY": MANAGEMENT_KEY,
        "OPENROUTER_BASE_URL": fake_openrouter.base_url,
        "SLACK_BOT_TOKEN": fake_slack.token,
    }
    monkeypatch.chdir(tmp_path)
    return {"or": fake_openrouter, "slack": fake_slack, "env": env, "tmp": tmp_path,
            "clock": clock}


def write_config(setup: dict[str, Any], at: dt.time, more: str = "") -> Path:
    """A daily digest to Slack at `at` in the clock's zone; no weekly report; `more` YAML."""
    path = setup["tmp"] / "config.yaml"
    path.write_text(f"""
timezone: {setup["clock"].zone}
storage: {{path: {setup["tmp"] / "history.db"}}}
slack: {{token: "${{SLACK_BOT_TOKEN}}", base_url: "{setup["slack"].base_url}"}}
reports:
  daily: {{at: "{at:%H:%M:%S}", to: ["slack:#ops"]}}
  weekly: {{enabled: false}}
sync_every: 1h
{more}""")
    return path


def daemon_at(setup: dict[str, Any], config: Path, now: dt.datetime) -> Daemon:
    app = App(config=load_config(config, setup["env"]), env=setup["env"], now=lambda: now)
    daemon = Daemon(app)  # each with its own lease holder id
    daemon.setup()
    return daemon


def test_first_start_waits_for_the_next_slot_then_catches_up_after_downtime(setup) -> None:
    clock = setup["clock"]
    config = write_config(setup, NINE)
    start = clock.local(0, dt.time(22, 0))
    daemon = daemon_at(setup, config, start)
    daemon.check_slots()
    assert setup["slack"].posts == []  # first start 13 h after the slot: not sent that late
    daemon.app.close()

    # the daemon was down over the next day's 09:00; restarted at 01:00 the day after, it
    # sends that one once
    later = clock.local(2, dt.time(1, 0))
    daemon = daemon_at(setup, config, later)
    daemon.check_slots()
    daemon.check_slots()
    assert len(setup["slack"].posts) == 1
    daemon.app.close()
    # and another restart the same day sends nothing more
    daemon = daemon_at(setup, config, clock.local(2, dt.time(4, 0)))
    daemon.check_slots()
    assert len(setup["slack"].posts) == 1
    daemon.app.close()


def test_first_start_soon_after_the_slot_sends_it(setup) -> None:
    config = write_config(setup, NINE)
    start = setup["clock"].local(0, dt.time(10, 0))  # deployed an hour late
    daemon = daemon_at(setup, config, start)
    daemon.check_slots()
    daemon.check_slots()
    assert len(setup["slack"].posts) == 1
    daemon.app.close()


def test_a_failing_job_is_logged_and_retried_without_stopping_others(
    setup, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="bot")
    clock = setup["clock"]
    config = write_config(setup, NINE)
    daemon = daemon_at(setup, config, clock.local(0, dt.time(8, 0)))
    setup["or"].fail_next("/credits", 401, n=1000)
    sync = daemon.wrapped("sync", daemon.sync)
    sync()  # raises inside; wrapped logs one line and returns
    assert "job sync failed" in caplog.text
    daemon.app.now = lambda: clock.local(0, dt.time(10, 0))  # the 09:00 slot is due
    daemon.check_slots()
    assert "job daily (slot" in caplog.text and "failed" in caplog.text
    assert setup["slack"].posts == []
    job = daemon.slots[0]
    assert job.retry_at is not None
    setup["or"].faults.clear()
    daemon.check_slots()  # before retry_at: not yet
    assert setup["slack"].posts == []
    daemon.app.now = lambda: clock.local(0, dt.time(10, 6))  # past the 5-minute retry
    daemon.check_slots()
    assert len(setup["slack"].posts) == 1
    daemon.app.close()


def test_a_digest_sent_by_the_daemon_logs_one_info_line(
    setup, caplog: pytest.LogCaptureFixture
) -> None:
    config = write_config(setup, NINE)
    daemon = daemon_at(setup, config, setup["clock"].local(0, dt.time(10, 0)))
    assert daemon.hold_lease()
    caplog.set_level(logging.INFO, logger="bot")
    daemon.check_slots()
    assert len(setup["slack"].posts) == 1
    info = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert len(info) == 1 and info[0].startswith("job daily (slot ")
    assert "slack:#ops: sent" in info[0]
    daemon.app.close()


def test_two_daemons_on_one_database_never_both_send(setup) -> None:
    clock = setup["clock"]
    config = write_config(setup, NINE)
    start = clock.local(0, dt.time(8, 0))
    first = daemon_at(setup, config, start)
    second = daemon_at(setup, config, start)
    assert first.hold_lease() and not second.hold_lease()
    for d in (first, second):
        d.app.now = lambda: clock.local(0, dt.time(10, 0))
    second.check_slots()
    first.check_slots()
    second.check_slots()
    assert len(setup["slack"].posts) == 1
    for d in (first, second):
        d.app.close()


def scheduled(daemon: Daemon, every: dt.timedelta) -> Callable[[], Any]:
    """The one job the daemon's scheduler runs every `every`."""
    assert daemon.scheduler is not None
    [job] = [j for j in daemon.scheduler.get_jobs()
             if j.unit == "seconds" and j.interval == every.total_seconds()]
    assert job.job_func is not None
    return job.job_func


def test_the_alerts_job_runs_every_check_every_and_notifies_once_per_alert(
    setup, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="bot")
    clock = setup["clock"]
    config = write_config(setup, NINE, """alerts:
  check_every: 7m
  rules: [{kind: low_credits, below_usd: 1000000, name: credits, to: ["slack:#alerts"]}]
""")
    daemon = daemon_at(setup, config, clock.now)
    check = scheduled(daemon, dt.timedelta(minutes=7))

    check()
    alerts = [p for p in setup["slack"].posts if p["channel"] == "#alerts"]
    assert len(alerts) == 1 and "credits are low" in alerts[0]["text"]
    assert "job alerts ok in" in caplog.text and "fire credits" in caplog.text

    caplog.clear()
    daemon.app.now = lambda: clock.now + dt.timedelta(minutes=7)
    check()  # still low: nothing new until repeat_every
    assert [p for p in setup["slack"].posts if p["channel"] == "#alerts"] == alerts
    assert "job alerts ok in" in caplog.text and "nothing changed" in caplog.text
    daemon.app.close()


def test_the_outbox_job_delivers_a_digest_its_slot_could_not_and_the_slot_retry_adds_none(
    setup, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="bot")
    clock = setup["clock"]
    config = write_config(setup, NINE)
    daemon = daemon_at(setup, config, clock.local(0, dt.time(10, 0)))
    setup["slack"].fail_next("chat.postMessage", 503, n=1)
    daemon.check_slots()  # the 09:00 digest fails: kept pending in the outbox
    assert setup["slack"].posts == [] and daemon.slots[0].retry_at is not None

    daemon.app.now = lambda: clock.local(0, dt.time(10, 2))  # before the slot's retry
    scheduled(daemon, dt.timedelta(seconds=60))()  # the outbox job, every minute
    assert len(setup["slack"].posts) == 1
    assert "job outbox ok in" in caplog.text and "slack:#ops: sent" in caplog.text

    daemon.app.now = lambda: clock.local(0, dt.time(10, 6))  # the slot's own retry is due
    daemon.check_slots()
    assert len(setup["slack"].posts) == 1  # already sent: not posted twice
    assert daemon.slots[0].retry_at is None
    daemon.app.close()


class DaemonProcess:
    """`openrouter-usage run` as a child process whose stderr is collected as it comes."""

    def __init__(self, env: dict[str, str], cwd: Path) -> None:
        exe = str(Path(sys.executable).parent / "openrouter-usage")
        self.proc = subprocess.Popen([exe, "run"], env=env, cwd=cwd, text=True,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.lines: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        with self.proc.stderr:
            for line in self.proc.stderr:
                self.lines.append(line)

    def wait_for(self, text: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not any(text in line for line in self.lines):
            assert self.proc.poll() is None, "".join(self.lines)
            assert time.monotonic() < deadline, f"no {text!r} in: {''.join(self.lines)}"
            time.sleep(0.02)

    def stop(self, signum: int) -> str:
        """Send `signum`, wait for the exit (killing it if it hangs) and return its stderr."""
        self.proc.send_signal(signum)
        try:
            self.proc.wait(timeout=30)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
        self.reader.join(timeout=5)
        return "".join(self.lines)


def test_run_subprocess_sends_once_stops_on_sigterm_and_restarts_without_duplicate(
    setup,
) -> None:
    # the slot passed an hour ago (the daemon runs at the injected clock, passed to it in
    # OPENROUTER_USAGE_TEST_NOW): the first start catches it up at once, no waiting
    clock = setup["clock"]
    at = (clock.now - dt.timedelta(hours=1)).astimezone(ZoneInfo(clock.zone)).time()
    config = write_config(setup, at)
    env = dict(os.environ, **setup["env"], OPENROUTER_USAGE_CONFIG=str(config))

    daemon = DaemonProcess(env, setup["tmp"])
    try:
        daemon.wait_for("job daily (slot")
    finally:
        err = daemon.stop(signal.SIGTERM)
    assert daemon.proc.returncode == 0, err
    assert len(setup["slack"].posts) == 1
    assert "job daily (slot" in err and " ok in " in err and "daemon stopped" in err
    assert "job sync ok in" in err
    assert MANAGEMENT_KEY not in err and setup["slack"].token not in err

    # a signal only stops the loop between jobs: the start-up round (sync, outbox, the slot
    # check that would catch up a missed digest) still runs to the end before it exits
    daemon = DaemonProcess(env, setup["tmp"])
    try:
        daemon.wait_for("daemon started")
    finally:
        err = daemon.stop(signal.SIGINT)
    assert daemon.proc.returncode == 0, err
    assert "job outbox ok in" in err and "daemon stopped" in err
    assert len(setup["slack"].posts) == 1  # no duplicate after the restart


def test_last_slot_handles_weekly_in_local_zone() -> None:
    now = dt.datetime(2026, 11, 30, 7, 30, tzinfo=dt.UTC)  # Monday 08:30 Berlin
    slot = last_slot(now, dt.time(8, 0), "Europe/Berlin", "monday")
    assert slot == dt.datetime(2026, 11, 30, 7, 0, tzinfo=dt.UTC)


def test_a_locked_database_fails_the_job_not_the_daemon(
    setup, caplog: pytest.LogCaptureFixture
) -> None:
    import sqlite3

    caplog.set_level(logging.INFO, logger="bot")
    clock = setup["clock"]
    config = write_config(setup, NINE)
    daemon = daemon_at(setup, config, clock.local(0, dt.time(8, 0)))
    daemon.app.store().conn.execute("PRAGMA busy_timeout = 50")
    other = sqlite3.connect(setup["tmp"] / "history.db", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    daemon.wrapped("sync", daemon.sync)()
    daemon.app.now = lambda: clock.local(0, dt.time(10, 0))
    daemon.check_slots()
    assert "job sync failed" in caplog.text and "database is locked" in caplog.text
    assert "job daily (slot" in caplog.text and setup["slack"].posts == []
    other.execute("ROLLBACK")
    other.close()
    daemon.app.now = lambda: clock.local(0, dt.time(10, 6))
    daemon.check_slots()
    assert len(setup["slack"].posts) == 1
    daemon.app.close()
