"""Spikes that know the calendar, against the fake OpenRouter on an injected clock: a Monday
after a quiet weekend is not a spike, a Wednesday at 4x the usual Wednesday is, and the alert
names the key x model behind it and whether volume or price moved."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from pathlib import Path

from bot.compute.explain import explain
from bot.jobs.alerts import run_alerts
from tests.alert_world import World, each_day, make_world, slack_texts
from tests.rows import row

D = Decimal
MONDAY = dt.date(2026, 11, 16)
WEDNESDAY = dt.date(2026, 11, 18)


def plant(world: World) -> None:
    """Five weeks of office hours: $100 on weekdays, $4 on weekends; on WEDNESDAY the agents
    key also runs claude-opus-4 for $300."""
    t = world.timeline
    for day in each_day(dt.date(2026, 10, 12), WEDNESDAY):
        weekend = day.weekday() >= 5
        t.spend(day, "agents", "anthropic/claude-sonnet-4", 3 if weekend else 80)
        t.spend(day, "batch", "openai/gpt-4o-mini", 1 if weekend else 20)
    t.spend(WEDNESDAY, "agents", "anthropic/claude-opus-4", 300)


RULES = """
  to: ["slack:#alerts"]
  rules:
    - {kind: spike, name: spike, factor: 3, min_usd: 20}
    - {kind: spike, name: spike-7d, factor: 1.3, min_usd: 20, baseline: 7d}
    - {kind: spike, name: spike-per-key, factor: 3, min_usd: 20, per: key}
    - {kind: spike, name: spike-per-model, factor: 3, min_usd: 20, per: model}
"""


def test_monday_after_a_quiet_weekend_is_not_a_spike_wednesday_at_4x_is(
        fake_openrouter, fake_slack, tmp_path: Path) -> None:
    world = make_world(tmp_path, fake_openrouter, RULES, slack=fake_slack)
    plant(world)

    # Tuesday morning: Monday ($100) against the usual Monday ($100) is calm; against the
    # trailing 7 days (a weekend in them: $72 a day) the old baseline would call it a spike
    result = run_alerts(world.app(dt.datetime.combine(MONDAY + dt.timedelta(days=1),
                                                      dt.time(9), dt.UTC)))
    fired = {(e.obs.rule.id, e.obs.subject) for e, _ in result.events if e.action == "fire"}
    assert fired == {("spike-7d", "account")}

    # Thursday morning: Wednesday cost $400, 4x the usual Wednesday
    posts = len(fake_slack.posts)
    result = run_alerts(world.app(dt.datetime.combine(WEDNESDAY + dt.timedelta(days=1),
                                                      dt.time(9), dt.UTC)))
    fired_obs = {(e.obs.rule.id, e.obs.subject): e.obs for e, _ in result.events
                 if e.action == "fire"}
    from tests.alert_world import key_hash

    assert set(fired_obs) == {("spike", "account"), ("spike-per-key", key_hash("agents")),
                              ("spike-per-model", "anthropic/claude-opus-4")}
    spike = fired_obs[("spike", "account")]
    assert (spike.value, spike.facts["average"]) == (D(400), D(100))
    why = spike.why
    assert why is not None and why.driver == "volume"
    top = why.contributors[0]
    assert (top.key, top.model, top.cost, top.usual) == ("agents", "anthropic/claude-opus-4",
                                                         D(300), D(0))
    # the new opus traffic: 10M tokens at $30 per million, on top of the usual 63.3M
    assert why.tokens - why.usual_tokens == 10_000_000 and why.volume_effect == D(300)
    [account_post] = [t for t in slack_texts(fake_slack, posts)
                      if "Spend spiked on 2026-11-18" in t and "usual Wednesday" in t]
    assert "against the usual Wednesday" in account_post
    assert ("agents x anthropic/claude-opus-4: $300.00, new (5,000 requests at $30.00 per M "
            "tokens)") in account_post
    assert "Mostly volume" in account_post
    per_key = fired_obs[("spike-per-key", key_hash("agents"))]
    assert per_key.name == "agents" and per_key.value == D(380)


def test_price_change_is_told_apart_from_volume() -> None:
    """Same tokens at 3x the $ per million tokens: price; 3x the tokens at the same price:
    volume; a new model is all volume."""
    usual = [row(f"2026-11-{d:02d}", model="m", usage="10", prompt=1_000_000, key="k")
             for d in (4, 11)]
    pricier = explain([row("2026-11-18", model="m", usage="30", prompt=1_000_000, key="k")],
                      usual, {"k": "prod"}, baseline_days=2)
    assert pricier.driver == "price" and pricier.price_effect == D(20)
    assert (pricier.price, pricier.usual_price) == (D(30), D(10))
    busier = explain([row("2026-11-18", model="m", usage="30", prompt=3_000_000, key="k")],
                     usual, {"k": "prod"}, baseline_days=2)
    assert busier.driver == "volume" and busier.volume_effect == D(20)
    assert busier.contributors[0].key == "prod"
    new = explain([row("2026-11-18", model="x", usage="5", prompt=10, key="k")], [], {},
                  baseline_days=2)
    assert new.volume_effect == D(5) and new.driver == "volume"
