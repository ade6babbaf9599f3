"""Budgets against the fake OpenRouter, a day at a time on an injected clock: notices at 50, 80
and 100% once each in a month, a forecast that fires on the day the weekday-weighted pace
passes the budget and names the day it will be crossed, and a new month that starts clean."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml

from bot.compute import forecast
from bot.jobs.alerts import run_alerts
from tests.alert_world import DAY, World, each_day, make_world, slack_texts

D = Decimal
BUDGET = D(2400)
NOON = dt.time(12, 0)
JUMP = dt.date(2026, 11, 10)  # spend more than triples from this day on


def plant(world: World) -> None:
    """October and the first 9 days of November at $60 a day, then $200 a day."""
    t = world.timeline
    for day in each_day(dt.date(2026, 10, 1), dt.date(2026, 12, 3)):
        t.spend(day, "batch", "openai/gpt-4o-mini", 10)
        t.spend(day, "agents", "anthropic/claude-sonnet-4", 50 if day < JUMP else 190)


def oracle(world: World, now: dt.datetime) -> tuple[Decimal, Decimal, dt.date | None]:
    """Spent so far in the month, the projection at its end and the day it passes the budget,
    computed plainly from the planted spend: the last 7 completed days' average, each weekday
    weighted by its share of the 4 weeks before, today's remaining part included."""
    t, today = world.timeline, now.date()
    elapsed = D((now - dt.datetime.combine(today, dt.time(), dt.UTC)).total_seconds()) / 86400
    month = today.replace(day=1)
    spent = sum((t.day_cost(d) for d in each_day(month, today - DAY)), D(0))
    spent += t.day_cost(today) * elapsed
    pace = sum((t.day_cost(today - DAY * i) for i in range(1, 8)), D(0)) / 7
    by_weekday = [D(0)] * 7
    for i in range(1, 29):
        by_weekday[(today - DAY * i).weekday()] += t.day_cost(today - DAY * i)
    weights = [w * 7 / sum(by_weekday) for w in by_weekday]
    total, crossing = spent, None
    end = forecast.span_of("month", today).end
    for day in each_day(today, end):
        total += pace * weights[day.weekday()] * ((1 - elapsed) if day == today else 1)
        if crossing is None and total > BUDGET:
            crossing = day
    return spent, total, crossing


def test_monthly_budget_notices_once_each_forecast_on_the_day_the_pace_crosses(
        fake_openrouter, fake_slack, tmp_path: Path) -> None:
    world = make_world(tmp_path, fake_openrouter, f"""
  to: ["slack:#alerts"]
  repeat_every: 7d
  rules:
    - {{kind: budget, name: llm-budget, amount_usd: {BUDGET}, period: month, forecast: true}}
""", slack=fake_slack)
    plant(world)
    fired: dict[str, list[dt.date]] = {}
    forecast_text = ""
    projected_over: list[dt.date] = []  # the days so far whose projection passed the budget
    for day in each_day(dt.date(2026, 11, 1), dt.date(2026, 11, 30)):
        now = dt.datetime.combine(day, NOON, dt.UTC)
        posts = len(fake_slack.posts)
        result = run_alerts(world.app(now))
        spent, total, crossing = oracle(world, now)
        if total > BUDGET:
            projected_over.append(day)
        for event, outcomes in result.events:
            assert all(o.ok for o in outcomes)
            if event.action == "repeat":  # a forecast that holds repeats after repeat_every
                assert event.obs.aspect == "forecast"
                continue
            assert event.action == "fire"
            label = f"{event.obs.threshold}%" if event.obs.aspect == "notify" else "forecast"
            fired.setdefault(label, []).append(day)
            if label == "forecast":
                assert event.obs.facts["crossing"] == crossing
                assert event.obs.value == total
                [forecast_text] = slack_texts(fake_slack, posts)
        # the notices follow the actual spend, the forecast the oracle's projection
        for p in (50, 80, 100):
            crossed = [d for d in fired.get(f"{p}%", [])]
            assert bool(crossed) == (spent >= BUDGET * p / 100), (day, p)
        assert bool(fired.get("forecast")) == bool(projected_over)

    # each notice once in the month; the forecast once, on the first day the pace passed it
    assert {label: len(days) for label, days in fired.items()} == {
        "50%": 1, "80%": 1, "100%": 1, "forecast": 1}
    [forecast_day] = fired["forecast"]
    assert forecast_day == projected_over[0] and JUMP < forecast_day < fired["100%"][0]
    _, _, crossing = oracle(world, dt.datetime.combine(forecast_day, NOON, dt.UTC))
    assert crossing is not None and f"pass the $2,400.00 budget on {crossing:%a} {crossing}" \
        in forecast_text
    assert "November 2026 (UTC)" in forecast_text
    notices = [t for t in slack_texts(fake_slack) if "monthly budget:" in t and "has spent" in t]
    assert len(notices) == 3

    # a new month starts clean: November's alerts end without a word, December's notices
    # wait for December's spend
    posts = len(fake_slack.posts)
    result = run_alerts(world.app(dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)))
    ended = [e for e, _ in result.events if "2026-11" in e.obs.subject]
    assert ended and {e.action for e in ended} == {"resolve"} and all(e.quiet for e in ended)
    assert all(outcomes == [] for e, outcomes in result.events if e.quiet)
    assert not [e for e, _ in result.events if e.obs.aspect == "notify" and e.action == "fire"]
    assert not [t for t in slack_texts(fake_slack, posts) if "November" in t]


PROD = "6a1f0c2e-0000-4000-8000-00000000a001"
CONTRACTORS = "6a1f0c2e-0000-4000-8000-00000000a002"


def test_workspace_budgets_count_each_workspaces_keys(fake_openrouter, fake_slack,
                                                     tmp_path: Path) -> None:
    """Keys in three workspaces, two of them named "staging": a weekly budget per workspace
    sums each workspace's keys (a disabled key's spend too), a budget narrowed by
    `workspace: <slug>` watches that one, and the forecast of a workspace runs on its own
    keys' history."""
    world = make_world(tmp_path, fake_openrouter, """
  to: ["slack:#alerts"]
  rules:
    - {kind: budget, name: ws-week, amount_usd: 500, period: week, per: workspace}
    - {kind: budget, name: contractors, amount_usd: 100, period: week, workspace: contr,
       notify_at: [100], forecast: true}
""", slack=fake_slack)
    fake_openrouter.workspaces = [
        {"id": "0df9e665-d932-5740-b2c7-b52af166bc11", "name": "Default", "slug": "default"},
        {"id": PROD, "name": "Production", "slug": "prod"},
        {"id": CONTRACTORS, "name": "Contractors", "slug": "contr"},
    ]
    t = world.timeline
    t.key("staging", workspace_id=PROD)
    t.key("api", workspace_id=PROD)
    # the same name in another workspace (the timeline tells them apart by a trailing space)
    t.keys["staging "] = {"name": "staging", "workspace_id": CONTRACTORS}
    t.key("old", workspace_id=CONTRACTORS, disabled=True)
    t.key("misc")  # the default workspace
    wednesday = dt.date(2026, 11, 18)
    for day in each_day(dt.date(2026, 10, 19), wednesday):
        t.spend(day, "staging", "openai/gpt-4o-mini", 40)
        t.spend(day, "api", "anthropic/claude-sonnet-4", 60)
        t.spend(day, "staging ", "anthropic/claude-sonnet-4", 10)
        t.spend(day, "misc", "openai/gpt-4o-mini", 1)
    for day in each_day(dt.date(2026, 11, 16), wednesday):  # this week: contractors busier
        t.spend(day, "staging ", "anthropic/claude-sonnet-4", 20)
    t.spend(dt.date(2026, 11, 16), "old", "openai/gpt-4o-mini", 15)  # then disabled
    now = dt.datetime.combine(wednesday, NOON, dt.UTC)
    result = run_alerts(world.app(now))

    obs = {e.obs.subject: e.obs for e, _ in result.events}
    # Monday, Tuesday and half of Wednesday: Production $100 a day, Contractors $30 + $15
    week = D("2.5")
    assert obs[f"{PROD} 2026-W47 50%"].facts["spent"] == 100 * week  # 250: 50% of 500
    spent = {s.split()[0]: o.facts["spent"] for s, o in obs.items()
             if o.rule.name == "ws-week"}
    assert spent == {PROD: D(250)}  # only Production reached a notice (50%)
    contractors = [o for o in obs.values() if o.rule.name == "contractors"]
    assert {o.aspect for o in contractors} == {"forecast"}
    [fc] = contractors
    assert fc.subject.startswith(CONTRACTORS) and fc.name == "Contractors"
    assert fc.facts["spent"] == 30 * week + 15  # 90: under the $100 budget so far
    # the pace of the last 7 completed days (weekdays weighted) carries it over on Thursday
    assert fc.facts["crossing"] == wednesday + DAY
    texts = slack_texts(fake_slack)
    assert any("Workspace Production has spent 50.0% of its $500.00 weekly budget: $250.00 in "
               "the week of Mon 2026-11-16 (UTC)" in x for x in texts)
    assert any("At the current pace, workspace Contractors will spend $" in x
               and "pass the $100.00 budget on Thu 2026-11-19" in x
               and "report --from 2026-11-16 --by-workspace" in x for x in texts)
    # the two keys named "staging" stay apart in the inputs' names
    from bot.jobs.alerts import gather_inputs
    from tests.alert_world import key_hash

    data = gather_inputs(world.app(now), now, save=False)
    assert data.key_name(key_hash("staging")) == "staging (Production)"
    assert data.key_name(key_hash("staging ")) == "staging (Contractors)"


def test_workspace_scope_in_config() -> None:
    from bot.config import parse_config
    from bot.errors import ConfigError

    def rules(rule: str) -> Any:
        return parse_config({"alerts": {"to": ["stdout"], "rules": [yaml.safe_load(rule)]}},
                            {})

    r = rules("{kind: budget, amount_usd: 10, workspace: Contractors}").alerts.rules[0]
    assert (r.per, r.workspace) == ("workspace", "Contractors")
    assert rules("{kind: budget, amount_usd: 10, per: workspace}").alerts.rules[0].per == \
        "workspace"
    with pytest.raises(ConfigError, match=r"alerts.rules\[0\].workspace: only with per: "
                                          "workspace"):
        rules("{kind: budget, amount_usd: 10, per: key, workspace: x}")
    with pytest.raises(ConfigError, match=r"alerts.rules\[0\].per"):
        rules("{kind: spike, factor: 3, per: workspace}")


def test_a_budget_already_over_names_the_day_it_was_crossed(fake_openrouter, fake_slack,
                                                            tmp_path: Path) -> None:
    """$100 a day against a $1,000 monthly budget: the 11th takes the month past it; the
    forecast checked on the 14th names the 11th (from history), not the 14th. The same for a
    key whose monthly limit ran out on the 7th."""
    world = make_world(tmp_path, fake_openrouter, """
  to: ["slack:#alerts"]
  rules:
    - {kind: budget, name: month, amount_usd: 1000, period: month, forecast: true,
       notify_at: [100]}
    - {kind: key_limit, name: limit, forecast: true}
""", slack=fake_slack)
    t = world.timeline
    t.key("agents", limit=280, limit_remaining=0, limit_reset="monthly")
    for day in each_day(dt.date(2026, 10, 1), dt.date(2026, 11, 14)):
        t.spend(day, "agents", "anthropic/claude-sonnet-4", 40)
        t.spend(day, "batch", "openai/gpt-4o-mini", 60)
    now = dt.datetime(2026, 11, 14, 12, 0, tzinfo=dt.UTC)
    result = run_alerts(world.app(now))
    fired = {e.obs.rule.id + " " + e.obs.aspect: e.obs for e, _ in result.events
             if e.action == "fire"}
    budget = fired["month forecast"]
    # $100 a day: through the 10th $1,000 exactly, the 11th takes it over
    assert budget.facts["already_over"] and budget.facts["crossing"] == dt.date(2026, 11, 11)
    key = fired["limit forecast"]
    # $40 a day against $280: used up on the 7th (the limit restarts with the month)
    assert key.facts["already_over"] and key.facts["crossing"] == dt.date(2026, 11, 7)
    texts = slack_texts(fake_slack)
    assert any("The account passed the $1,000.00 monthly budget on Wed 2026-11-11: $1,350.00 "
               "so far in November 2026 (UTC)" in x for x in texts)
    assert any("API key agents reached its $280.00 limit on Sat 2026-11-07 (UTC); it resets "
               "monthly" in x for x in texts)
    assert not any("on Sat 2026-11-14" in x for x in texts)
