"""The `run` daemon: catch-up, failing jobs, the lease, and a real subprocess with SIGTERM."""

from __future__ import annotations

import datetime as dt
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from bot.app import App
from bot.config import load_config
from bot.scheduler import Daemon, last_slot
from tests.fake_openrouter import MANAGEMENT_KEY, FakeOpenRouter, sample_org
from tests.fake_slack import FakeSlack

NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)
if NOW.time() < dt.time(0, 40):
    NOW = NOW.replace(hour=1)
YESTERDAY = NOW.date() - dt.timedelta(days=1)


@pytest.fixture()
def setup(fake_openrouter: FakeOpenRouter, fake_slack: FakeSlack, tmp_path: Path,
          monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    org = sample_org(last_day=YESTERDAY, days=10)
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
    return {"or": fake_openrouter, "slack": fake_slack, "env": env, "tmp": tmp_path}


def write_config(setup: dict[str, Any], at: dt.time, timezone: str = "UTC") -> Path:
    path = setup["tmp"] / "config.yaml"
    path.write_text(f"""
timezone: {timezone}
storage: {{path: {setup["tmp"] / "history.db"}}}
slack: {{token: "${{SLACK_BOT_TOKEN}}", base_url: "{setup["slack"].base_url}"}}
reports:
  daily: {{at: "{at:%H:%M:%S}", to: ["slack:#ops"]}}
  weekly: {{enabled: false}}
sync_every: 1h
""")
    return path


def daemon_at(setup: dict[str, Any], config: Path, now: dt.datetime) -> Daemon:
    app = App(config=load_config(config, setup["env"]), env=setup["env"], now=lambda: now)
    daemon = Daemon(app)  # each with its own lease holder id
    daemon.setup()
    return daemon


def test_first_start_waits_for_the_next_slot_then_catches_up_after_downtime(setup) -> None:
    config = write_config(setup, dt.time(9, 0))
    start = dt.datetime.combine(NOW.date(), dt.time(22, 0), dt.UTC)
    daemon = daemon_at(setup, config, start)
    daemon.check_slots()
    assert setup["slack"].posts == []  # first start 13 h after the slot: not sent that late
    daemon.app.close()

    # the daemon was down over the next day's 09:00; restarted at 01:00 the day after, it
    # sends that one once
    later = start + dt.timedelta(days=1, hours=3)
    daemon = daemon_at(setup, config, later)
    daemon.check_slots()
    daemon.check_slots()
    assert len(setup["slack"].posts) == 1
    daemon.app.close()
    # and another restart the same day sends nothing more
    daemon = daemon_at(setup, config, later + dt.timedelta(hours=1))
    daemon.check_slots()
    assert len(setup["slack"].posts) == 1
    daemon.app.close()


def test_first_start_soon_after_the_slot_sends_it(setup) -> None:
    config = write_config(setup, dt.time(9, 0))
    start = dt.datetime.combine(NOW.date(), dt.time(10, 0), dt.UTC)  # deployed an hour late
    daemon = daemon_at(setup, config, start)
    daemon.check_slots()
    daemon.check_slots()
    assert len(setup["slack"].posts) == 1
    daemon.app.close()


def test_a_failing_job_is_logged_and_retried_without_stopping_others(
    setup, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="bot")
    config = write_config(setup, dt.time(9, 0))
    start = dt.datetime.combine(NOW.date(), dt.time(8, 0), dt.UTC)
    daemon = daemon_at(setup, config, start)
    setup["or"].fail_next("/credits", 401, n=1000)
    sync = daemon.wrapped("sync", daemon.sync)
    sync()  # raises inside; wrapped logs one line and returns
    assert "job sync failed" in caplog.text
    daemon.app.now = lambda: start + dt.timedelta(hours=2)  # 10:00, the 09:00 slot is due
    daemon.check_slots()
    assert "job daily (slot" in caplog.text and "failed" in caplog.text
    assert setup["slack"].posts == []
    job = daemon.slots[0]
    assert job.retry_at is not None
    setup["or"].faults.clear()
    daemon.check_slots()  # before retry_at: not yet
    assert setup["slack"].posts == []
    daemon.app.now = lambda: start + dt.timedelta(hours=2, minutes=6)
    daemon.check_slots()
    assert len(setup["slack"].posts) == 1
    daemon.app.close()


def test_a_digest_sent_by_the_daemon_logs_one_info_line(
    setup, caplog: pytest.LogCaptureFixture
) -> None:
    config = write_config(setup, dt.time(9, 0))
    daemon = daemon_at(setup, config, dt.datetime.combine(NOW.date(), dt.time(10, 0), dt.UTC))
    assert daemon.hold_lease()
    caplog.set_level(logging.INFO, logger="bot")
    daemon.check_slots()
    assert len(setup["slack"].posts) == 1
    info = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert len(info) == 1 and info[0].startswith("job daily (slot ")
    assert "slack:#ops: sent" in info[0]
    daemon.app.close()


def test_two_daemons_on_one_database_never_both_send(setup) -> None:
    config = write_config(setup, dt.time(9, 0))
    start = dt.datetime.combine(NOW.date(), dt.time(8, 0), dt.UTC)
    first = daemon_at(setup, config, start)
    second = daemon_at(setup, config, start)
    assert first.hold_lease() and not second.hold_lease()
    for d in (first, second):
        d.app.now = lambda: start + dt.timedelta(hours=2)
    second.check_slots()
    first.check_slots()
    second.check_slots()
    assert len(setup["slack"].posts) == 1
    for d in (first, second):
        d.app.close()


def stop(proc: subprocess.Popen[str], signum: int) -> str:
    """Send `signum`, wait for the exit (killing it if it hangs) and return its stderr."""
    proc.send_signal(signum)
    try:
        return proc.communicate(timeout=30)[1]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def test_run_subprocess_sends_once_stops_on_sigterm_and_restarts_without_duplicate(
    setup,
) -> None:
    at = (dt.datetime.now(dt.UTC) + dt.timedelta(seconds=6)).time().replace(microsecond=0)
    config = write_config(setup, at)
    env = dict(os.environ, **setup["env"], OPENROUTER_USAGE_CONFIG=str(config))
    exe = str(Path(sys.executable).parent / "openrouter-usage")

    def start() -> subprocess.Popen[str]:
        return subprocess.Popen([exe, "run"], env=env, cwd=setup["tmp"], text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    proc = start()
    try:
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline and not setup["slack"].posts:
            time.sleep(0.2)
        assert len(setup["slack"].posts) == 1
        time.sleep(1.5)
    finally:
        err = stop(proc, signal.SIGTERM)
    assert proc.returncode == 0, err
    assert "job daily (slot" in err and " ok in " in err and "daemon stopped" in err
    assert "job sync ok in" in err
    assert MANAGEMENT_KEY not in err and setup["slack"].token not in err

    proc = start()
    try:
        time.sleep(4)
    finally:
        err = stop(proc, signal.SIGINT)
    assert proc.returncode == 0, err
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
    config = write_config(setup, dt.time(9, 0))
    start = dt.datetime.combine(NOW.date(), dt.time(8, 0), dt.UTC)
    daemon = daemon_at(setup, config, start)
    daemon.app.store().conn.execute("PRAGMA busy_timeout = 50")
    other = sqlite3.connect(setup["tmp"] / "history.db", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    daemon.wrapped("sync", daemon.sync)()
    daemon.app.now = lambda: start + dt.timedelta(hours=2)
    daemon.check_slots()
    assert "job sync failed" in caplog.text and "database is locked" in caplog.text
    assert "job daily (slot" in caplog.text and setup["slack"].posts == []
    other.execute("ROLLBACK")
    other.close()
    daemon.app.now = lambda: start + dt.timedelta(hours=2, minutes=6)
    daemon.check_slots()
    assert len(setup["slack"].posts) == 1
    daemon.app.close()
