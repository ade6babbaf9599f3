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
    assert why is not None and why.driver == "mix"
    top = why.contributors[0]
    assert (top.key, top.model, top.cost, top.usual) == ("agents", "anthropic/claude-opus-4",
                                                         D(300), D(0))
    assert top.role == "new_model"
    # the new opus traffic: 10M tokens at $30 per million, on top of the usual 63.3M at a
    # blended $1.58: as volume only those 10M tokens at the usual blended rate, the rest is
    # the mix moving to a pricier model; no key x model changed its own price
    usual_tokens = D(80) / 6 * 1_000_000 + D(20) / D("0.4") * 1_000_000
    assert why.tokens - why.usual_tokens == 10_000_000
    assert abs(why.usual_tokens - usual_tokens) < 2
    blended = D(100) / why.usual_tokens * 1_000_000
    assert why.volume_effect == 10_000_000 * blended / 1_000_000
    assert why.price_effect == 0
    assert why.volume_effect + why.mix_effect + why.price_effect == D(300)
    [account_post] = [t for t in slack_texts(fake_slack, posts)
                      if "Spend spiked on 2026-11-18" in t and "usual Wednesday" in t]
    assert "against the usual Wednesday" in account_post
    assert ("agents x anthropic/claude-opus-4: $300.00, new model (5,000 requests, 10.0M "
            "tokens at $30.00 per M)") in account_post
    assert ("Mostly the mix of models: volume +$15.79 (73.3M vs 63.3M tokens at the usual "
            "blended $1.58 per M), mix +$284.21 (blended $5.45 vs $1.58 per M; new model "
            "anthropic/claude-opus-4), price +$0.00") in account_post
    assert "Mostly volume" not in account_post
    per_key = fired_obs[("spike-per-key", key_hash("agents"))]
    assert per_key.name == "agents" and per_key.value == D(380)


def test_price_change_is_told_apart_from_volume() -> None:
    """Same tokens at 3x the $ per million tokens: price; 3x the tokens at the same price:
    volume; spend that starts from nothing is volume, each contributor a new model."""
    usual = [row(f"2026-11-{d:02d}", model="m", usage="10", prompt=1_000_000, key="k")
             for d in (4, 11)]
    pricier = explain([row("2026-11-18", model="m", usage="30", prompt=1_000_000, key="k")],
                      usual, {"k": "prod"}, baseline_days=2)
    assert pricier.driver == "price" and pricier.price_effect == D(20)
    assert (pricier.price, pricier.usual_price) == (D(30), D(10))
    assert pricier.contributors[0].role == "price"
    busier = explain([row("2026-11-18", model="m", usage="30", prompt=3_000_000, key="k")],
                     usual, {"k": "prod"}, baseline_days=2)
    assert busier.driver == "volume" and busier.volume_effect == D(20)
    assert busier.contributors[0].key == "prod" and busier.contributors[0].role == "volume"
    new = explain([row("2026-11-18", model="x", usage="5", prompt=10, key="k")], [], {},
                  baseline_days=2)
    assert new.volume_effect == D(5) and new.driver == "volume"
    assert new.contributors[0].role == "new_model"


def test_a_new_expensive_model_is_mix_not_volume() -> None:
    """The same tokens as usual, a third of them moved to a model at 10x the $ per million:
    no volume at all; the change is mix, and the contributor is a new model. Another key
    starting on a model others already use is new for that key, not a new model."""
    usual = [row("2026-11-11", model="cheap", usage="3", prompt=3_000_000, key="a")]
    now = [row("2026-11-18", model="cheap", usage="2", prompt=2_000_000, key="a"),
           row("2026-11-18", model="pricey", usage="10", prompt=1_000_000, key="a")]
    x = explain(now, usual, {"a": "app"})
    assert (x.volume_effect, x.price_effect, x.mix_effect) == (D(0), D(0), D(9))
    assert x.driver == "mix"
    assert [(c.model, c.role) for c in x.contributors] == [("pricey", "new_model")]
    assert x.new_models == ["pricey"]
    # more tokens *and* a pricier model: both parts have their size
    now2 = [row("2026-11-18", model="cheap", usage="6", prompt=6_000_000, key="a"),
            row("2026-11-18", model="cheap", usage="1", prompt=1_000_000, key="b"),
            row("2026-11-18", model="pricey", usage="10", prompt=1_000_000, key="a")]
    y = explain(now2, usual, {"a": "app", "b": "batch"}, top=5)
    assert y.volume_effect == D(5)  # 5M more tokens at the usual $1 per M
    assert y.mix_effect == D(9) and y.price_effect == 0 and y.driver == "several"
    roles = {(c.key, c.model): c.role for c in y.contributors}
    assert roles == {("app", "pricey"): "new_model", ("app", "cheap"): "volume",
                     ("batch", "cheap"): "new"}


def test_a_fall_is_explained_by_what_fell() -> None:
    """When spend fell, the contributors are the largest decreases, a stopped one first."""
    usual = [row("2026-11-17", model="m", usage="40", prompt=4_000_000, key="a"),
             row("2026-11-17", model="n", usage="10", prompt=1_000_000, key="b")]
    now = [row("2026-11-18", model="n", usage="12", prompt=1_200_000, key="b")]
    x = explain(now, usual, {"a": "app", "b": "batch"})
    assert x.delta == D(-38) and not x.rising
    assert [(c.key, c.role, c.delta) for c in x.contributors] == [("app", "gone", D(-40))]
