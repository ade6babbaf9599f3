"""Options read from the config change what the commands do: `reports.*.skip_if_empty`,
`delivery_max_age`, `openrouter.retry_budget`; and `alerts` exits 1 while a delivery fails.

The CLI runs in process against the fake OpenRouter and the fake Slack Web API, at the injected
clock (later runs pass `now=`); no wait is real (`sleep=`).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest

from bot.cli import main
from tests.conftest import Clock
from tests.fake_openrouter import MANAGEMENT_KEY, FakeOpenRouter, sample_org
from tests.fake_slack import FakeSlack

HOUR = dt.timedelta(hours=1)


class World:
    """The fakes, a config file the test writes, and the CLI run at a chosen time."""

    def __init__(self, fake_openrouter: FakeOpenRouter, fake_slack: FakeSlack, tmp_path: Path,
                 clock: Clock) -> None:
        self.openrouter, self.slack, self.tmp, self.clock = (
            fake_openrouter, fake_slack, tmp_path, clock)
        self.waits: list[float] = []

    def configure(self, text: str) -> None:
        (self.tmp / "config.yaml").write_text(f"""
storage: {{path: "{self.tmp / 'history.db'}"}}
slack: {{token: "${{SLACK_BOT_TOKEN}}", base_url: "{self.slack.base_url}"}}
{text}""")

    def run(self, capsys: pytest.CaptureFixture[str], *argv: str,
            later: dt.timedelta = dt.timedelta(0)) -> tuple[int, str]:
        """The CLI `later` after the test's clock; returns the exit code and stdout + stderr."""
        now = self.clock.now + later
        code = main(["--config", str(self.tmp / "config.yaml"), *argv], now=lambda: now,
                    sleep=self.waits.append)
        out, err = capsys.readouterr()
        return code, out + err


@pytest.fixture()
def world(fake_openrouter: FakeOpenRouter, fake_slack: FakeSlack, tmp_path: Path,
          monkeypatch: pytest.MonkeyPatch, clock: Clock) -> World:
    org = sample_org(last_day=clock.yesterday, days=14)
    fake_openrouter.credits = org["credits"]
    fake_openrouter.activity_rows = org["activity"]
    fake_openrouter.key_activity = org["key_activity"]
    fake_openrouter.keys = org["keys"]
    monkeypatch.chdir(tmp_path)
    for var in ("OPENROUTER_API_KEY", "OPENROUTER_USAGE_CONFIG"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("OPENROUTER_MANAGEMENT_KEY", MANAGEMENT_KEY)
    monkeypatch.setenv("OPENROUTER_BASE_URL", fake_openrouter.base_url)
    monkeypatch.setenv("SLACK_BOT_TOKEN", fake_slack.token)
    return World(fake_openrouter, fake_slack, tmp_path, clock)


def without_spend(world: World, days: set[dt.date]) -> None:
    """The org spent nothing on `days` (no activity rows, for the account or any key)."""
    def keep(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [r for r in rows if dt.date.fromisoformat(str(r["date"])[:10]) not in days]

    world.openrouter.activity_rows = keep(world.openrouter.activity_rows)
    world.openrouter.key_activity = {h: keep(rows)
                                     for h, rows in world.openrouter.key_activity.items()}


# --- skip_if_empty ------------------------------------------------------------------------------


@pytest.mark.parametrize(("job", "days"), [("daily", 1), ("weekly", 7)])
def test_skip_if_empty_sends_nothing_for_a_period_without_spend_until_forced(
    world: World, capsys, job: str, days: int
) -> None:
    last = world.clock.digest_day
    without_spend(world, {last - dt.timedelta(days=n) for n in range(days)})
    world.configure(f'reports: {{{job}: {{to: ["slack:#ops"], skip_if_empty: true}}}}')

    code, out = world.run(capsys, "send", job)
    assert code == 0, out
    assert "slack:#ops: skipped (no spend in the period)" in out
    assert world.slack.posts == []

    code, out = world.run(capsys, "send", job, "--force")
    assert code == 0 and "slack:#ops: sent" in out and len(world.slack.posts) == 1


def test_skip_if_empty_still_sends_a_period_with_spend(world: World, capsys) -> None:
    world.configure('reports: {daily: {to: ["slack:#ops"], skip_if_empty: true}}')
    code, out = world.run(capsys, "send", "daily")
    assert code == 0 and "slack:#ops: sent" in out and len(world.slack.posts) == 1


def test_without_skip_if_empty_a_period_without_spend_is_sent(world: World, capsys) -> None:
    without_spend(world, {world.clock.digest_day})
    world.configure('reports: {daily: {to: ["slack:#ops"]}}')
    code, out = world.run(capsys, "send", "daily")
    assert code == 0 and "slack:#ops: sent" in out and len(world.slack.posts) == 1


# --- delivery_max_age ---------------------------------------------------------------------------


def test_delivery_max_age_from_the_config_gives_up_a_digest_slack_did_not_take(
    world: World, capsys
) -> None:
    world.configure('delivery_max_age: 2h\nreports: {daily: {to: ["slack:#ops"]}}')
    day = str(world.clock.digest_day)  # the same digest later, whatever day "now" has reached
    world.slack.fail_next("chat.postMessage", 503, n=1)
    code, out = world.run(capsys, "send", "daily", "--date", day)
    assert code == 1 and "slack:#ops: failed" in out

    # three hours on, past the configured two: given up, not sent, though Slack is back
    code, out = world.run(capsys, "send", "daily", "--date", day, later=3 * HOUR)
    assert code == 1
    assert "slack:#ops: given up (undelivered for more than 2:00:00" in out
    assert world.slack.posts == []
    code, out = world.run(capsys, "send", "daily", "--date", day, "--force", later=3 * HOUR)
    assert code == 0 and len(world.slack.posts) == 1


def test_by_default_a_digest_slack_did_not_take_is_still_retried_hours_later(
    world: World, capsys
) -> None:
    world.configure('reports: {daily: {to: ["slack:#ops"]}}')  # delivery_max_age: 24h
    day = str(world.clock.digest_day)
    world.slack.fail_next("chat.postMessage", 503, n=1)
    assert world.run(capsys, "send", "daily", "--date", day)[0] == 1
    code, out = world.run(capsys, "send", "daily", "--date", day, later=3 * HOUR)
    assert code == 0 and "slack:#ops: sent" in out and len(world.slack.posts) == 1


# --- openrouter.retry_budget --------------------------------------------------------------------


@pytest.mark.parametrize(("budget", "waits"), [("5s", 2), (None, 9)])
def test_retry_budget_from_the_config_bounds_the_waits_on_a_failing_api(
    world: World, capsys, budget: str | None, waits: int
) -> None:
    line = f", retry_budget: {budget}" if budget else ""  # default 60s
    world.configure(f"openrouter: {{max_attempts: 10{line}}}")
    world.openrouter.fail_next("/credits", 429, n=100, headers={"Retry-After": "3"})
    code, out = world.run(capsys, "report")
    assert code == 1 and "429" in out
    assert len(world.waits) == waits and world.waits[0] == 3
    assert sum(world.waits) <= (5 if budget else 60)


# --- alerts exit codes --------------------------------------------------------------------------


def test_alerts_exits_1_while_a_delivery_fails_and_0_once_the_next_check_delivers_it(
    world: World, capsys
) -> None:
    world.configure('alerts:\n  rules: [{kind: low_credits, below_usd: 1000000, name: credits, '
                    'to: ["slack:#alerts"]}]')
    world.slack.fail_next("chat.postMessage", 503, n=1)
    code, out = world.run(capsys, "alerts")
    assert code == 1
    assert "FIRE" in out and "slack:#alerts: failed" in out
    assert world.slack.posts == []

    code, out = world.run(capsys, "alerts", later=dt.timedelta(minutes=15))
    assert code == 0, out
    assert "slack:#alerts: sent" in out and len(world.slack.posts) == 1
    code, out = world.run(capsys, "alerts", later=dt.timedelta(minutes=30))
    assert code == 0 and "nothing changed" in out and len(world.slack.posts) == 1
