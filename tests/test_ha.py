"""High availability: two `run` daemons on one PostgreSQL database, the leader SIGKILLed
mid-job; the standby takes over within the lease time and every digest and alert arrives at
Slack exactly once.

Real processes, real sockets: both daemons are `openrouter-usage run` subprocesses against the
test PostgreSQL server, the fake OpenRouter and the fake Slack Web API. The lease is 3 s here
(`storage.lease`), so a take-over takes seconds; the test waits on the processes (log lines,
posts), never on the clock for its own sake.
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from bot.compute.aggregate import latest_complete_day
from tests.conftest import Clock
from tests.fake_openrouter import MANAGEMENT_KEY, FakeOpenRouter, sample_org
from tests.fake_slack import FakeSlack

LEASE_SECONDS = 3
EXE = str(Path(sys.executable).parent / "openrouter-usage")
TAKEOVERS: list[tuple[str, float, float]] = []  # (how the leader was cut, take-over, delivered)


class DaemonProcess:
    """One `openrouter-usage run` subprocess whose log lines are read as they come."""

    def __init__(self, name: str, env: dict[str, str], cwd: Path) -> None:
        self.name = name
        self.proc = subprocess.Popen([EXE, "run"], env=env, cwd=cwd, text=True,
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)
        self.lines: list[tuple[float, str]] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append((time.monotonic(), line.rstrip("\n")))

    def log(self) -> str:
        return "\n".join(line for _, line in self.lines)

    def first(self, text: str, after: float = 0.0) -> float | None:
        """When a line containing `text` was logged (at or after `after`), if it was."""
        return next((t for t, line in list(self.lines) if text in line and t >= after), None)

    def wait_for(self, text: str, timeout: float = 60.0, after: float = 0.0) -> float:
        at = wait_until(lambda: self.first(text, after), timeout,
                        lambda: f"{self.name} to log {text!r}; it logged:\n{self.log()}")
        assert at is not None
        return at

    def kill(self) -> None:
        self.proc.kill()  # SIGKILL: no clean-up, no lease release, the TCP connections just die
        self.proc.wait(timeout=30)
        self._close()

    def _close(self) -> None:
        self._reader.join(timeout=10)
        if self.proc.stderr is not None:
            self.proc.stderr.close()

    def stop(self) -> int:
        """SIGTERM: stops between jobs; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self._close()
        return code


def wait_until(check: Callable[[], Any], timeout: float, what: Callable[[], str]) -> Any:
    """Poll `check` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what()}")
        time.sleep(0.05)


@pytest.fixture()
def cluster(fake_openrouter: FakeOpenRouter, fake_slack: FakeSlack, pg_url: str,
            tmp_path: Path, clock: Clock) -> Iterator[dict[str, Any]]:
    """Config and environment for daemons sharing one PostgreSQL database; stops them all."""
    now = clock.now  # the daemons run at it too (OPENROUTER_USAGE_TEST_NOW, inherited)
    org = sample_org(last_day=latest_complete_day(now), days=10)
    fake_openrouter.credits = org["credits"]
    fake_openrouter.activity_rows = org["activity"]
    fake_openrouter.key_activity = org["key_activity"]
    fake_openrouter.keys = org["keys"]
    due = (now - dt.timedelta(minutes=2)).time().replace(microsecond=0)  # due at start
    config = tmp_path / "config.yaml"
    config.write_text(f"""
timezone: UTC
storage:
  url: "{pg_url}"
  lease: {LEASE_SECONDS}s
slack: {{token: "${{SLACK_BOT_TOKEN}}", base_url: "{fake_slack.base_url}"}}
reports:
  daily: {{at: "{due:%H:%M:%S}", to: ["slack:#ops"]}}
  weekly: {{enabled: false}}
alerts:
  check_every: 2s
  rules:
    - {{kind: low_credits, below_usd: 1000000, name: credits, to: ["slack:#alerts"]}}
sync_every: 1h
""")
    env = dict(os.environ, OPENROUTER_MANAGEMENT_KEY=MANAGEMENT_KEY,
               OPENROUTER_BASE_URL=fake_openrouter.base_url, SLACK_BOT_TOKEN=fake_slack.token,
               OPENROUTER_USAGE_CONFIG=str(config))
    env.pop("OPENROUTER_API_KEY", None)
    daemons: list[DaemonProcess] = []

    def start(name: str) -> DaemonProcess:
        daemon = DaemonProcess(name, env, tmp_path)
        daemons.append(daemon)
        return daemon

    yield {"or": fake_openrouter, "slack": fake_slack, "start": start}
    for daemon in daemons:
        daemon.stop()


def delivered(slack: FakeSlack) -> Counter[tuple[str, str, str]]:
    """Posts by the delivery they carry in their metadata: (job, period, channel)."""
    keys: Counter[tuple[str, str, str]] = Counter()
    for post in slack.posts:
        payload = (post.get("metadata") or {}).get("event_payload") or {}
        keys[(payload.get("job", "?"), payload.get("period", "?"), post["channel_id"])] += 1
    return keys


def jobs_of(counts: Counter[tuple[str, str, str]]) -> Counter[str]:
    return Counter(job for job, _, _ in counts.elements())


@pytest.mark.parametrize("cut", ["mid-sync", "mid-post-stored", "mid-post-lost",
                                 "mid-digest-stored"])
def test_leader_killed_mid_job_standby_takes_over_and_sends_each_once(cluster, cut) -> None:
    fake_or: FakeOpenRouter = cluster["or"]
    slack: FakeSlack = cluster["slack"]
    # the leader's first call of its kind hangs, so it is killed in the middle of that job
    if cut == "mid-sync":
        fake_or.fail_next("/credits", "slow", delay=120)  # the sync's fetch never answers
    elif cut == "mid-post-stored":  # the alert (the leader's first post) is
        slack.fail_after_store("chat.postMessage", "hold")  # posted; the answer never comes
    elif cut == "mid-digest-stored":  # the alert goes through; the digest after it is
        slack.fail_after_store("chat.postMessage", "slow", delay=0)
        slack.fail_after_store("chat.postMessage", "hold")  # posted; the answer never comes
    else:
        slack.fail_next("chat.postMessage", "hold")  # the post never reaches Slack

    leader = cluster["start"]("leader")
    leader.wait_for("acquired the database lease")
    standby = cluster["start"]("standby")
    standby.wait_for("stands by")

    if cut == "mid-sync":
        wait_until(lambda: fake_or.requests_to("/credits"), 60, lambda: "the leader's sync")
    else:
        held = 2 if cut == "mid-digest-stored" else 1
        wait_until(lambda: len(slack.calls_to("chat.postMessage")) >= held, 60,
                   lambda: "the leader's post")
    assert standby.first("acquired the database lease") is None  # one leader at a time
    killed = time.monotonic()
    leader.kill()

    took_over = standby.wait_for("acquired the database lease", after=killed) - killed
    expected = Counter({"daily": 1, "alert": 1})
    wait_until(lambda: jobs_of(delivered(slack)) >= expected, 60,
               lambda: f"the digest and the alert; Slack has {delivered(slack)}; the "
                       f"standby logged:\n{standby.log()}")
    done = time.monotonic() - killed
    # let the new leader finish what it is doing, then stop it: nothing more can arrive
    standby.wait_for("job daily (slot", after=killed)
    assert standby.stop() == 0, standby.log()

    counts = delivered(slack)
    assert jobs_of(counts) == expected, counts  # the digest and the alert, each exactly once
    assert all(n == 1 for n in counts.values()), counts
    assert took_over <= LEASE_SECONDS * 4 / 3 + 2, standby.log()  # lease + one renewal + tick
    TAKEOVERS.append((cut, took_over, done))
    print(f"\n{cut}: standby took over {took_over:.2f}s after SIGKILL; digest and alert "
          f"delivered {done:.2f}s after it (lease {LEASE_SECONDS}s)")
