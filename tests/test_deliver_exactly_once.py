"""Exactly once for real: each duplicate and each stuck delivery of issue 9 (Slack and SMTP),
reproduced with a fake that misbehaves exactly that way, through the whole pipeline.

The CLI runs on an injected clock (`main(now=...)`, also the clock the fake Slack stamps its
messages with) and an injected sleep that records each wait; one test kills a real daemon
subprocess mid-post. Each test shows one message delivered, none lost, and the exit code.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from bot.app import App
from bot.cli import main
from bot.config import EmailConfig, load_config
from bot.deliver.outbox import Outbox, Transports
from bot.deliver.slack import SlackSender
from bot.models import Destination, MailMessage, Status
from bot.store import Store, connect
from tests.conftest import Clock
from tests.fake_openrouter import MANAGEMENT_KEY, FakeOpenRouter, sample_org
from tests.fake_slack import FakeSlack
from tests.fake_smtp import SmtpServer

NOW = dt.datetime(2026, 11, 25, 10, 0, tzinfo=dt.UTC)
MINUTE = dt.timedelta(minutes=1)
PERIOD = "2026-11-24"  # the digest's day at NOW
OPS = "slack:#ops"
LEAD = "email:lead@example.com"


@dataclass
class World:
    slack: FakeSlack
    smtp: SmtpServer
    config: Path
    env: dict[str, str]
    db: Path
    now: dt.datetime = NOW
    sleeps: list[float] = field(default_factory=list)

    def run(self, capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
        code = main(list(argv), now=lambda: self.now, sleep=self.sleeps.append)
        out, err = capsys.readouterr()
        return code, out + err

    def app(self) -> App:
        return App(config=load_config(self.config, self.env), env=self.env,
                   now=lambda: self.now, sleep=self.sleeps.append)

    def rows(self) -> list[tuple[str, str, str]]:
        with sqlite3.connect(self.db) as conn:
            return conn.execute(
                "SELECT job, destination, status FROM deliveries ORDER BY id").fetchall()


@pytest.fixture()
def world(fake_openrouter: FakeOpenRouter, fake_slack: FakeSlack, smtp_server: SmtpServer,
          tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> World:
    org = sample_org(last_day=NOW.date() - dt.timedelta(days=1), days=10)
    fake_openrouter.credits = org["credits"]
    fake_openrouter.activity_rows = org["activity"]
    fake_openrouter.key_activity = org["key_activity"]
    fake_openrouter.keys = org["keys"]
    config = tmp_path / "config.yaml"
    config.write_text(f"""
storage: {{path: {tmp_path / "history.db"}}}
slack:
  token: ${{SLACK_BOT_TOKEN}}
  webhook_url: {fake_slack.webhook_url}
  base_url: {fake_slack.base_url}
email:
  host: 127.0.0.1
  port: {smtp_server.port}
  security: none
  from: "OpenRouter usage <usage@example.com>"
  timeout: 0.2
reports:
  daily: {{to: ["{OPS}"]}}
  weekly: {{enabled: false}}
alerts:
  to: ["slack:#alerts"]
  repeat_every: 24h
  rules:
    - {{kind: low_credits, below_usd: 1000000, name: credits}}
    - {{kind: key_limit, below_percent: 101, name: limits}}
""")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("OPENROUTER_API_KEY", raising=False)
    env = {
        "OPENROUTER_MANAGEMENT_KEY": MANAGEMENT_KEY,
        "OPENROUTER_BASE_URL": fake_openrouter.base_url,
        "SLACK_BOT_TOKEN": fake_slack.token,
        "OPENROUTER_USAGE_CONFIG": str(config),
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    w = World(fake_slack, smtp_server, config, env, tmp_path / "history.db")
    fake_slack.clock = lambda: w.now.timestamp()  # Slack's clock agrees with ours
    return w


def post_calls(w: World) -> int:
    return len(w.slack.calls_to("chat.postMessage"))


# --- duplicates -----------------------------------------------------------------------------


def test_connection_dropped_after_slack_stored_the_post_gives_one_digest(world, capsys) -> None:
    world.slack.fail_after_store("chat.postMessage", "drop")

    code, out = world.run(capsys, "send", "daily")

    assert code == 0 and f"daily {PERIOD}: {OPS}: sent" in out
    assert len(world.slack.posts) == 1 and post_calls(world) == 1  # no blind retry
    world.now += MINUTE
    code, out = world.run(capsys, "send", "daily")
    assert code == 0 and "already sent" in out and len(world.slack.posts) == 1


@pytest.mark.parametrize("status", [500, 502])
def test_gateway_error_after_slack_processed_the_post_gives_one_digest(
    world, capsys, status: int
) -> None:
    world.slack.fail_after_store("chat.postMessage", status)

    code, out = world.run(capsys, "send", "daily")

    assert code == 0 and f"{OPS}: sent" in out
    assert len(world.slack.posts) == 1 and post_calls(world) == 1
    assert world.rows() == [("daily", OPS, "sent")]


@pytest.mark.parametrize("status", [503, 504])
def test_server_error_before_slack_processed_it_is_posted_once_by_a_later_run(
    world, capsys, status: int
) -> None:
    world.slack.fail_next("chat.postMessage", status)

    code, out = world.run(capsys, "send", "daily")
    assert code == 1 and "may have been posted" in out and world.slack.posts == []
    code, out = world.run(capsys, "send", "daily")  # the same minute: not retried yet
    assert code == 1 and post_calls(world) == 1 and "after 10:01 UTC" in out

    world.now += 2 * MINUTE
    code, out = world.run(capsys, "send", "daily")
    assert code == 0 and len(world.slack.posts) == 1 and post_calls(world) == 2


class ShortSlackTimeout(Transports):
    """The app's transports with a Slack client that gives up after 0.2 s (the CLI's
    timeout is 30 s)."""

    def slack(self) -> SlackSender:
        if self._slack is None:
            cfg = self.config.slack
            self._slack = SlackSender(token=cfg.token, base_url=cfg.base_url, timeout=0.2,
                                      sleep=self._sleep)
        return self._slack


def submit_digest(w: World, outbox: Outbox) -> Any:
    from bot.jobs.send import build, render_for
    from bot.render.messages import Renderer

    app = w.app()
    built = build(app, "daily", NOW.date() - dt.timedelta(days=1))
    msg = render_for(Renderer(None), built, Destination.parse(OPS), False)
    return outbox.submit("daily", built.period, Destination.parse(OPS), msg, w.now)


def test_answer_after_the_client_timeout_is_found_not_sent_again(world) -> None:
    app = world.app()
    outbox = Outbox(app.store(), ShortSlackTimeout(app.config), dt.timedelta(hours=24))
    world.slack.fail_after_store("chat.postMessage", "hold")

    outcome = submit_digest(world, outbox)

    assert outcome.status is Status.SENT and outcome.ref == world.slack.posts[0]["ts"]
    world.now += 10 * MINUTE
    assert outbox.flush(world.now) == []  # nothing left to re-send
    assert len(world.slack.posts) == 1 and post_calls(world) == 1


def test_a_post_slack_takes_after_the_timeout_is_found_by_the_next_run(world) -> None:
    app = world.app()
    outbox = Outbox(app.store(), ShortSlackTimeout(app.config), dt.timedelta(hours=24))
    world.slack.fail_next("chat.postMessage", "hold")  # Slack takes it only later

    first = submit_digest(world, outbox)
    assert first.status is Status.FAILED and world.slack.posts == []
    world.slack.release()
    deadline = time.monotonic() + 5
    while not world.slack.posts and time.monotonic() < deadline:
        time.sleep(0.005)  # until the fake's thread has stored it

    world.now += 2 * MINUTE
    [later] = outbox.flush(world.now)

    assert later.status is Status.SENT and later.ref == world.slack.posts[0]["ts"]
    assert len(world.slack.posts) == 1 and post_calls(world) == 1


def test_a_long_retry_after_does_not_hold_an_alerts_run_past_its_lease(world, capsys) -> None:
    world.slack.fail_next("chat.postMessage", 429, n=1000, headers={"Retry-After": "330"})

    code, out = world.run(capsys, "alerts")

    assert code == 1 and "left for the next run" in out
    assert world.sleeps == [] and world.slack.posts == []  # nothing waited 330 s
    with sqlite3.connect(world.db) as conn:
        assert conn.execute("SELECT COUNT(*) FROM leases").fetchone()[0] == 0
    world.slack.faults.clear()
    world.now += 2 * MINUTE  # the next cron run: not overlapping, and not refused
    code, out = world.run(capsys, "alerts")
    assert code == 0, out
    first_round = len(world.slack.posts)
    assert first_round >= 2
    texts = [json.dumps(p.get("metadata")) for p in world.slack.posts]
    assert len(set(texts)) == first_round  # each alert once
    world.now += 15 * MINUTE
    code, out = world.run(capsys, "alerts")
    assert code == 0 and len(world.slack.posts) == first_round


def test_a_long_retry_after_leaves_the_digest_for_the_next_run(world, capsys) -> None:
    world.slack.fail_next("chat.postMessage", 429, headers={"Retry-After": "700"})

    code, out = world.run(capsys, "send", "daily")

    assert code == 1 and "rate limited for 700s" in out and "left for the next run" in out
    assert world.sleeps == [] and world.slack.posts == []
    assert world.rows() == [("daily", OPS, "pending")]
    world.now += 2 * MINUTE
    code, out = world.run(capsys, "send", "daily")
    assert code == 0 and len(world.slack.posts) == 1
    assert not world.slack.calls_to("conversations.history")  # a 429 needs no look-up


def test_a_database_lock_right_after_slack_accepted_does_not_resend(world) -> None:
    app = world.app()
    store = app.store()
    store.conn.execute("PRAGMA busy_timeout = 20")
    transports = app.transports()
    outbox = Outbox(store, transports, dt.timedelta(hours=24))
    locker = sqlite3.connect(world.db, isolation_level=None)
    send = transports.send

    def send_then_lock(*args: Any, **kwargs: Any) -> str:
        ref = send(*args, **kwargs)
        locker.execute("BEGIN IMMEDIATE")  # another process writes right now
        return ref

    def wait(seconds: float) -> None:
        if locker.in_transaction:
            locker.execute("COMMIT")  # ...and is done by the retry

    transports.send = send_then_lock  # type: ignore[method-assign]
    outbox.sleep = wait

    outcome = submit_digest(world, outbox)

    assert outcome.status is Status.SENT and outcome.ref == world.slack.posts[0]["ts"]
    assert world.rows() == [("daily", OPS, "sent")]
    world.now += 30 * MINUTE
    assert outbox.flush(world.now) == [] and len(world.slack.posts) == 1


def test_smtp_answer_after_the_timeout_gives_two_copies_with_one_message_id_not_three(
    world, capsys
) -> None:
    world.smtp.hold_after_data(1)

    code, out = world.run(capsys, "send", "daily", "--to", LEAD)
    assert code == 1 and "may have taken" in out
    assert len(world.smtp.messages) == 1  # stored; and not tried again in this run
    code, out = world.run(capsys, "send", "daily", "--to", LEAD)  # a rerun at once
    assert code == 1 and len(world.smtp.messages) == 1

    world.now += 2 * MINUTE
    code, out = world.run(capsys, "send", "daily", "--to", LEAD)
    assert code == 0 and f"{LEAD}: sent" in out
    first, second = world.smtp.messages
    assert first.message["Message-ID"] == second.message["Message-ID"]  # clients fold it
    world.now += 2 * MINUTE
    code, out = world.run(capsys, "send", "daily", "--to", LEAD)
    assert code == 0 and "already sent" in out and len(world.smtp.messages) == 2


# --- a daemon killed mid-post -----------------------------------------------------------------


def test_a_daemon_killed_mid_post_is_resolved_by_the_lookup_after_restart(
    fake_openrouter: FakeOpenRouter, fake_slack: FakeSlack, tmp_path: Path, clock: Clock
) -> None:
    now = clock.now  # the daemon runs at it too (OPENROUTER_USAGE_TEST_NOW, inherited)
    org = sample_org(last_day=now.date() - dt.timedelta(days=2), days=10)
    fake_openrouter.credits = org["credits"]
    fake_openrouter.activity_rows = org["activity"]
    fake_openrouter.key_activity = org["key_activity"]
    fake_openrouter.keys = org["keys"]
    db = tmp_path / "history.db"
    config = tmp_path / "config.yaml"
    at = (now - MINUTE).time()  # a slot just passed: the first start sends it
    config.write_text(f"""
storage: {{path: {db}}}
slack: {{token: "${{SLACK_BOT_TOKEN}}", base_url: "{fake_slack.base_url}"}}
reports:
  daily: {{at: "{at:%H:%M:%S}", to: ["slack:#ops"]}}
  weekly: {{enabled: false}}
sync_every: 1h
""")
    env = dict(os.environ, OPENROUTER_MANAGEMENT_KEY=MANAGEMENT_KEY,
               OPENROUTER_BASE_URL=fake_openrouter.base_url, SLACK_BOT_TOKEN=fake_slack.token,
               OPENROUTER_USAGE_CONFIG=str(config))
    env.pop("OPENROUTER_API_KEY", None)
    exe = str(Path(sys.executable).parent / "openrouter-usage")

    def start() -> subprocess.Popen[str]:
        return subprocess.Popen([exe, "run"], env=env, cwd=tmp_path, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def until(condition: Any, seconds: float = 40) -> None:
        end = time.monotonic() + seconds
        while not condition() and time.monotonic() < end:
            time.sleep(0.05)

    def status() -> list[str]:
        with sqlite3.connect(db) as conn:
            return [s for (s,) in conn.execute("SELECT status FROM deliveries")]

    fake_slack.fail_after_store("chat.postMessage", "hold")  # stored; the answer never comes
    proc = start()
    try:
        until(lambda: fake_slack.posts)
        assert len(fake_slack.posts) == 1 and status() == ["sending"]
    finally:
        proc.kill()  # SIGKILL mid-post
        proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    # the killed daemon's lease runs out (90 s) before another can lead: skip the wait
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE leases SET expires_at = '2000-01-01T00:00:00.000000+00:00'")

    proc = start()
    try:
        until(lambda: status() == ["sent"])
    finally:
        proc.send_signal(signal.SIGTERM)
        err = proc.communicate(timeout=30)[1]
    assert proc.returncode == 0, err
    assert status() == ["sent"]
    assert len(fake_slack.posts) == 1 and len(fake_slack.calls_to("chat.postMessage")) == 1
    assert "found in the channel" in err
    assert MANAGEMENT_KEY not in err and fake_slack.token not in err


# --- stuck deliveries -----------------------------------------------------------------------


@pytest.mark.parametrize("retry_after", ["1.5", "date"])
def test_a_non_integer_retry_after_is_waited_and_nothing_is_stuck(
    world, capsys, retry_after: str
) -> None:
    value = retry_after
    if retry_after == "date":
        value = email.utils.formatdate(time.time() + 20, usegmt=True)
    world.slack.fail_next("chat.postMessage", 429, headers={"Retry-After": value})

    code, out = world.run(capsys, "send", "daily")

    assert code == 0 and f"{OPS}: sent" in out and len(world.slack.posts) == 1
    [waited] = world.sleeps
    assert waited == 1.5 if retry_after == "1.5" else 18 <= waited <= 22
    assert world.rows() == [("daily", OPS, "sent")]


def test_ok_without_ts_is_sent_and_never_reposted(world, capsys) -> None:
    world.slack.fail_after_store("chat.postMessage", "no_ts")

    code, out = world.run(capsys, "send", "daily")

    assert code == 0 and f"{OPS}: sent" in out and "failed" not in out
    world.now += 30 * MINUTE
    code, out = world.run(capsys, "send", "daily")
    assert code == 0 and "already sent" in out
    assert len(world.slack.posts) == 1 and post_calls(world) == 1


MAIL = MailMessage(subject="s", text="t", html="<p>t</p>")


@pytest.mark.parametrize("bad", ["from", "password"])
def test_a_sender_that_raises_mid_send_leaves_the_delivery_pending_not_sending(
    world, smtp_auth_server: SmtpServer, bad: str
) -> None:
    app = world.app()
    cfg = app.config
    if bad == "from":  # CR/LF in email.from: the MIME headers cannot be built
        email_cfg = EmailConfig(host="127.0.0.1", port=world.smtp.port, security="none",
                                sender="usage@example.com\r\nBcc: all@example.com")
    else:  # a non-ASCII password: smtplib cannot encode it
        email_cfg = EmailConfig(host="127.0.0.1", port=smtp_auth_server.port, security="none",
                                username=smtp_auth_server.username, password="pässwörd",
                                sender="usage@example.com")
    from dataclasses import replace

    store = Store(connect(world.db))
    outbox = Outbox(store, Transports(replace(cfg, email=email_cfg)), dt.timedelta(hours=24))

    outcome = outbox.submit("weekly", "p", Destination.parse(LEAD), MAIL, NOW)

    assert outcome.status is Status.FAILED and not outcome.ok
    assert world.rows() == [("weekly", LEAD, "pending")]  # never stuck in "sending"
    [again] = outbox.flush(NOW + 2 * MINUTE)
    assert again.status is Status.FAILED  # tried again, not "in progress"
    assert world.smtp.messages == [] and smtp_auth_server.messages == []


# --- where delivery can only be at-least-once --------------------------------------------------


def test_without_history_scopes_check_says_at_least_once_and_a_lost_answer_is_reposted(
    world, capsys
) -> None:
    world.slack.scopes.remove("channels:history")
    code, out = world.run(capsys, "check")
    assert "Slack #ops: the bot is a member of #ops; without channels:history" in out
    assert "at-least-once" in out

    world.slack.fail_after_store("chat.postMessage", "drop")
    code, out = world.run(capsys, "send", "daily")
    assert code == 1 and len(world.slack.posts) == 1  # it arrived, but nobody can tell
    world.now += 2 * MINUTE
    code, out = world.run(capsys, "send", "daily")
    assert code == 0 and len(world.slack.posts) == 2  # the documented at-least-once
    assert "posting again (at-least-once)" in out  # the warning on stderr says so


def test_a_webhook_lost_answer_is_sent_again_later_at_least_once(world, capsys) -> None:
    code, out = world.run(capsys, "check")
    assert "Slack webhook" not in out  # not configured as a destination: not checked
    world.slack.fail_after_store("webhook", "drop")

    code, out = world.run(capsys, "send", "daily", "--to", "slack:webhook")
    assert code == 1 and "webhook cannot be checked" in out
    assert len(world.slack.webhook_posts) == 1 and len(world.slack.calls_to("webhook")) == 1
    world.now += 2 * MINUTE
    code, out = world.run(capsys, "send", "daily", "--to", "slack:webhook")
    assert code == 0 and len(world.slack.webhook_posts) == 2
