"""`alerts --dry-run` through the CLI for each newer rule kind (burn_rate from minute data,
budget notices and forecast, spike by key, key_limit forecast) and each destination (Slack,
e-mail, PagerDuty, webhook, Apprise, stdout): it prints what each would get, sends nothing and
leaves the database exactly as it was; the real run that follows sends those same alerts."""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from bot.cli import main
from bot.jobs.alerts import run_alerts
from tests.alert_world import World, each_day, key_hash, make_world
from tests.conftest import no_wait
from tests.fake_pagerduty import ROUTING_KEY
from tests.fake_webhook import SECRET

D = Decimal
MINUTE = dt.timedelta(minutes=1)
WEDNESDAY = dt.date(2026, 11, 18)
NOW = dt.datetime(2026, 11, 19, 10, 30, tzinfo=dt.UTC)  # Thursday morning
EARLIER = NOW - dt.timedelta(days=1, hours=2)  # Wednesday morning
OPUS, MINI = "anthropic/claude-opus-4", "openai/gpt-4o-mini"
DESTS = ["slack:#alerts", "email:oncall@example.com", "pagerduty:PD_ROUTING_KEY",
         "webhook:ops-bridge", "apprise:chat", "stdout"]
RULES = """
  to: {dests}
  rules:
    - {{kind: burn_rate, name: runaway, per: key, above_usd_per_hour: 60}}
    - {{kind: budget, name: month, amount_usd: 3600, period: month, forecast: true,
       notify_at: [50]}}
    - {{kind: spike, name: key-spike, per: key, factor: 3, min_usd: 20}}
    - {{kind: key_limit, name: limit-forecast, forecast: true}}
"""


def world_for(tmp: Path, fake_openrouter: Any, fake_slack: Any, pd: Any, hook: Any) -> World:
    world = make_world(tmp, fake_openrouter, RULES.format(dests=json.dumps(DESTS)),
                       slack=fake_slack, extra_yaml=f"""email: {{host: 127.0.0.1, port: 9,
  security: none, from: bot@example.com}}
pagerduty:
  events_url: {pd.url}
webhooks:
  ops-bridge:
    url: {hook.url}
    secret: ${{OPS_BRIDGE_SECRET}}
apprise:
  chat: ${{CHAT_APPRISE_URL}}
""", env={"PD_ROUTING_KEY": ROUTING_KEY, "OPS_BRIDGE_SECRET": SECRET,
          "CHAT_APPRISE_URL": hook.root.replace("http://", "json://") + "/plain/chat"})
    t = world.timeline
    t.key("agents", limit=500, limit_remaining=120, limit_reset="monthly")
    for day in each_day(dt.date(2026, 10, 1), WEDNESDAY + dt.timedelta(days=1)):
        t.spend(day, "agents", "anthropic/claude-sonnet-4", 60)
        t.spend(day, "batch", MINI, 40)
    t.spend(WEDNESDAY, "agents", OPUS, 300)  # 6x the usual Wednesday for agents
    # from 10:25 today the batch key loops on opus: $2 a minute
    world.fake.minute_spend = [(NOW - MINUTE * m, key_hash("batch"), OPUS, D(2), D(0))
                               for m in range(1, 6)]
    return world


def dump(db: Path) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table."""
    conn = sqlite3.connect(db)
    try:
        tables = [t for (t,) in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
        return {t: sorted(conn.execute(f'SELECT * FROM "{t}"').fetchall(), key=repr)
                for t in tables}
    finally:
        conn.close()


def test_dry_run_prints_each_new_rule_for_each_destination_and_changes_nothing(
        fake_openrouter, fake_slack, fake_pagerduty, fake_webhook, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    world = world_for(tmp_path, fake_openrouter, fake_slack, fake_pagerduty, fake_webhook)
    monkeypatch.chdir(tmp_path)
    for name, value in world.env.items():
        monkeypatch.setenv(name, value)
    # an earlier check made the database (burn-rate samples, history); nothing fired then
    # (agents had a higher limit; the month's pace was $100 a day)
    world.timeline.today = {"agents": D(10), "batch": D(5)}
    world.timeline.key("agents", limit=2000, limit_remaining=1900)
    fake_openrouter.minute_spend, planted = [], fake_openrouter.minute_spend
    assert run_alerts(world.app(EARLIER)).events == []
    fake_openrouter.minute_spend = planted
    world.timeline.today = {"agents": D(40), "batch": D(30)}
    world.timeline.key("agents", limit=500, limit_remaining=120)
    before = dump(tmp_path / "history.db")
    posts, events = len(fake_slack.posts), len(fake_pagerduty.events)

    world.app(NOW)  # serve the timeline as of NOW
    code = main(["--config", str(world.config), "alerts", "--dry-run"],
                now=lambda: NOW, sleep=no_wait)
    out = capsys.readouterr().out
    assert code == 0
    fired = {"runaway": "batch", "month forecast": "the account", "month 50%": "the account",
             "key-spike": "agents", "limit-forecast": "agents"}
    headers = [line for line in out.splitlines() if line.startswith("--- alert fire ")]
    assert len(headers) == len(fired) * len(DESTS)
    for rule in ("runaway", "month", "key-spike", "limit-forecast"):
        for dest in DESTS:
            assert f"--- alert fire {rule} -> {dest} (dry run, nothing sent) ---" in out
    # the status lines: one per alert, every destination a dry run
    lines = [line for line in out.splitlines() if line.startswith("FIRE ")]
    assert len(lines) == len(fired)
    assert all(line.count("dry run") == len(DESTS) for line in lines), lines
    for part in (
        # burn_rate from minute data, in Slack, PagerDuty, the webhook and Apprise
        "API key batch is spending $120.00 an hour: $10.00 in the 5 min to 2026-11-19 "
        "10:30 UTC",
        "Models behind it in the last 5 min: anthropic/claude-opus-4",
        '"dedup_key": "openrouter-usage/runaway/' + key_hash("batch") + '"',
        '"status": "firing"',
        # budget: the 50% notice and the forecast naming its crossing day
        "The account has spent",
        "At the current pace, the account will spend",
        "budget on ",
        # spike per key, explained
        "API key agents spiked on 2026-11-18 (UTC): $360.00, +500.0% against the usual "
        "Wednesday",
        "agents x anthropic/claude-opus-4: $300.00, new model",
        # key_limit forecast
        "At its current pace, API key agents reaches its $500.00 limit on",
        # e-mail: subject and where its HTML went
        "Subject: Alert: API key batch is spending $120.00 an hour",
        "HTML body written to out/alert-",
    ):
        assert part in out, part
    assert list((tmp_path / "out").glob("alert-*oncall_at_example.com.html"))
    assert ROUTING_KEY not in out and SECRET not in out
    # nothing was sent and nothing in the database changed
    assert len(fake_slack.posts) == posts and len(fake_pagerduty.events) == events
    assert fake_webhook.bodies == [] and fake_webhook.plain == []
    assert dump(tmp_path / "history.db") == before

    # the real check fires exactly what the dry run showed
    result = run_alerts(world.app(NOW))
    got = {f"{e.obs.rule.id} {e.obs.aspect}".strip() if e.obs.rule.kind == "budget"
           else e.obs.rule.id for e, _ in result.events if e.action == "fire"}
    assert got == {"runaway", "month forecast", "month notify", "key-spike", "limit-forecast"}
    assert len(fake_pagerduty.events) == events + len(fired)
