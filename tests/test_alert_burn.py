"""Burn rates against the fake OpenRouter with a check every minute on an injected clock: a key
that starts spending $2 a minute is alerted by the next check and resolved after it stops; the
fallback measures the change of keys' usage_daily between checks, across UTC midnight too."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from pathlib import Path

from bot.compute.burn import ACCOUNT, BurnState, Sample, between
from bot.jobs.alerts import run_alerts
from tests.alert_world import key_hash, make_world, slack_texts

D = Decimal
MINUTE = dt.timedelta(minutes=1)
T0 = dt.datetime(2026, 11, 18, 10, 0, tzinfo=dt.UTC)


def test_a_key_spending_two_dollars_a_minute_is_alerted_by_the_next_check(
        fake_openrouter, fake_slack, tmp_path: Path) -> None:
    world = make_world(tmp_path, fake_openrouter, """
  check_every: 1m
  to: ["slack:#alerts"]
  rules:
    - {kind: burn_rate, name: runaway, per: key, above_usd_per_hour: 60, window: 15m}
    - {kind: burn_rate, name: account-burn, above_usd_per_hour: 100, min_usd: 1}
""", slack=fake_slack)
    t = world.timeline
    t.key("prod-agent", limit=100, limit_remaining=97, limit_reset="monthly")
    t.key("web")
    for day in (dt.date(2026, 11, 16), dt.date(2026, 11, 17)):
        t.spend(day, "prod-agent", "anthropic/claude-opus-4", 3)
        t.spend(day, "web", "openai/gpt-4o-mini", 1)
    t.today = {"prod-agent": D(3), "web": D("0.50")}

    def check(now: dt.datetime) -> list:
        return run_alerts(world.app(now)).events

    # twenty quiet minutes (web trickles 1 cent a minute)
    for i in range(21):
        t.today["web"] = D("0.50") + D("0.01") * i
        assert check(T0 + MINUTE * i) == []
    # from 10:20 the agent loops on an expensive model: $2 a minute for 5 minutes
    start = T0 + MINUTE * 20
    fired_at = resolved_at = None
    for i in range(1, 41):
        now = start + MINUTE * i
        t.today["prod-agent"] = D(3) + D(2) * min(i, 5)
        for event, outcomes in check(now):
            assert all(o.ok for o in outcomes)
            if event.obs.rule.id != "runaway":
                continue
            if event.action == "fire":
                assert fired_at is None
                fired_at = now
                obs = event.obs
            elif event.action == "resolve":
                resolved_at = now
    assert fired_at == start + MINUTE  # by the next check
    assert obs.subject == key_hash("prod-agent") and obs.value == D(120)
    assert obs.facts["since"] == start and obs.facts["run_spent"] == D(2)
    # $5 so far today; at $120 an hour for the 13 h 39 min left of the UTC day
    assert obs.facts["day_if_it_goes_on"] == D(5) + D(120) * D(819) / 60
    [text] = [x for x in slack_texts(fake_slack) if "Burn rate" in x and "prod-agent" in x
              and "Alert" in x]
    for part in ("API key prod-agent is spending $120.00 an hour: $2.00 in the 1 min to "
                 "2026-11-18 10:21 UTC",
                 "Models behind it on Tue 2026-11-17: anthropic/claude-opus-4",
                 "Spent $2.00 since it started at 2026-11-18 10:20 UTC",
                 "If it goes on, today will cost $1,643.00",
                 "Key limit left: $97.00 of $100.00", "https://openrouter.ai/settings/keys"):
        assert part in text, part
    # it stopped at 10:25; the rate falls as the window moves past the spend
    assert resolved_at is not None and start + MINUTE * 5 < resolved_at
    assert resolved_at <= start + MINUTE * (5 + 15 + 1)
    resolves = [x for x in slack_texts(fake_slack) if "Resolved" in x and "Burn rate" in x]
    assert len(resolves) == 1


def sample(at: str, **costs: str) -> Sample:
    return Sample(dt.datetime.fromisoformat(at), {k: D(v) for k, v in costs.items()})


def test_midnight_restarts_the_counters_and_the_interval_counts_from_it() -> None:
    before = sample("2026-11-18T23:55:00+00:00", a="40", b="3")
    after = sample("2026-11-19T00:05:00+00:00", a="2", b="0")
    iv = between(before, after)
    assert iv.start == dt.datetime(2026, 11, 19, tzinfo=dt.UTC) and iv.spend == {"a": D(2)}
    state = BurnState()
    state.advance(before, keep=dt.timedelta(minutes=15))
    state.advance(after, keep=dt.timedelta(minutes=15))
    rate = state.rate("a", after.at, dt.timedelta(minutes=15))
    assert rate is not None and rate.seconds == 300 and rate.per_hour == D(24)
    same_day = between(sample("2026-11-19T00:05:00+00:00", a="2"),
                       sample("2026-11-19T00:10:00+00:00", a="1.5"))  # a correction down
    assert same_day.spend == {}


def test_usual_rate_needs_three_weeks_of_the_same_hour_and_state_round_trips() -> None:
    state = BurnState()
    week = dt.timedelta(days=7)
    wednesday = dt.datetime(2026, 11, 18, 14, 0, tzinfo=dt.UTC)
    for weeks_back, spend in ((3, "2"), (2, "4")):
        at = wednesday - week * weeks_back
        state.advance(Sample(at, {"k": D(10)}), keep=dt.timedelta(hours=3))
        state.advance(Sample(at + dt.timedelta(hours=1), {"k": D(10) + D(spend)}),
                      keep=dt.timedelta(hours=3))
    assert state.usual("k", wednesday) is None  # two weeks watched: not enough
    at = wednesday - week
    state.advance(Sample(at, {"k": D(20)}), keep=dt.timedelta(hours=3))
    state.advance(Sample(at + dt.timedelta(hours=1), {"k": D(26)}), keep=dt.timedelta(hours=3))
    assert state.usual("k", wednesday + dt.timedelta(minutes=30)) == D(4)  # median of 2, 4, 6
    assert state.usual(ACCOUNT, wednesday) == D(4)
    again = BurnState.from_json(state.to_json())
    assert again.usual("k", wednesday) == D(4) and again.samples == state.samples
