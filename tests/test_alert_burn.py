"""Burn rates against the fake OpenRouter with a check every minute on an injected clock: a key
that starts spending $2 a minute is alerted by the next check and resolved after it stops, from
the analytics API's minute buckets (per key, per model, and for the account against the usual
for the hour of the week from hourly buckets); without the analytics API the fallback measures
the change of keys' usage_daily between checks, across UTC midnight too."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from pathlib import Path

from bot.compute.burn import ACCOUNT, BurnState, Sample, between
from bot.jobs.alerts import run_alerts
from tests.alert_world import each_day, key_hash, make_world, slack_texts

D = Decimal
MINUTE = dt.timedelta(minutes=1)
T0 = dt.datetime(2026, 11, 18, 10, 0, tzinfo=dt.UTC)


def test_without_minute_data_keys_usage_between_checks_catches_a_runaway(
        fake_openrouter, fake_slack, tmp_path: Path) -> None:
    """The analytics API answers 404: the change of keys' usage_daily between checks."""
    fake_openrouter.analytics_status = 404
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


OPUS, MINI = "anthropic/claude-opus-4", "openai/gpt-4o-mini"


def test_minute_data_catches_a_runaway_key_and_model_and_knows_the_usual_hour(
        fake_openrouter, fake_slack, tmp_path: Path) -> None:
    """Minute buckets from the analytics API: web trickles 10 cents a minute all day; from
    10:20 prod-agent loops on opus at $2 a minute for 5 minutes. The key and the model are
    alerted by the next check and resolved once the window has moved past the spend; the
    account (5x its usual for Wednesday 10:00, the median of the last 4 Wednesdays' 10:00
    hour from hourly buckets) fires once the run has lifted the 15-minute rate past it."""
    world = make_world(tmp_path, fake_openrouter, """
  check_every: 1m
  to: ["slack:#alerts"]
  rules:
    - {kind: burn_rate, name: runaway, per: key, above_usd_per_hour: 60, window: 15m}
    - {kind: burn_rate, name: model-burn, per: model, above_usd_per_hour: 60, window: 15m}
    - {kind: burn_rate, name: account-burn, factor: 5, min_usd: 1, window: 15m}
""", slack=fake_slack)
    t = world.timeline
    t.key("prod-agent", limit=100, limit_remaining=97, limit_reset="monthly")
    t.key("web")
    for day in each_day(dt.date(2026, 10, 19), dt.date(2026, 11, 17)):  # a month of history
        t.spend(day, "web", MINI, 144)
    agent, web = key_hash("prod-agent"), key_hash("web")
    spend = fake_openrouter.minute_spend
    for weeks in range(1, 5):  # the same hours of the last 4 Wednesdays: $6 each
        hour = T0 - dt.timedelta(days=7 * weeks)
        spend += [(hour + MINUTE * m, web, MINI, D("0.10"), D(0)) for m in range(120)]
    start = T0 + MINUTE * 20
    t.today = {"prod-agent": D(3), "web": D(60)}

    fired: dict[str, tuple[dt.datetime, object]] = {}
    resolved: dict[str, dt.datetime] = {}
    for i in range(61):
        now = T0 + MINUTE * i
        minute = now - MINUTE  # the minute that just ended
        spend.append((minute + dt.timedelta(seconds=30), web, MINI, D("0.10"), D(0)))
        if start <= minute < start + MINUTE * 5:
            spend.append((minute + dt.timedelta(seconds=20), agent, OPUS, D(2), D(0)))
            t.today["prod-agent"] += 2
        for event, outcomes in run_alerts(world.app(now)).events:
            assert all(o.ok for o in outcomes)
            if event.action == "fire":
                assert event.obs.rule.id not in fired
                fired[event.obs.rule.id] = (now, event.obs)
            elif event.action == "resolve":
                resolved[event.obs.rule.id] = now

    at, key = fired["runaway"]
    assert at == start + MINUTE and key.subject == agent  # by the next check
    assert key.value == D(120) and key.facts["since"] == start
    assert key.facts["run_spent"] == D(2) and key.facts["models"] == [OPUS]
    at, model = fired["model-burn"]
    assert at == start + MINUTE and model.subject == OPUS and model.facts["keys"] == ["prod-agent"]
    # the account: usual $6 for this hour, so the line is $30 an hour; over the 15 minutes
    # (web's $1.50 and the agent's $2 a minute) it passes $30 with the agent's 4th minute
    at, account = fired["account-burn"]
    assert account.facts["usual"] == D(6) and account.threshold == D(30)
    assert at == start + MINUTE * 4 and account.value == (D("1.5") + 8) * 4
    assert account.why is not None and account.why.contributors[0].key == "prod-agent"
    [account_text] = [x for x in slack_texts(fake_slack) if "Alert" in x
                      and "The account is spending" in x]
    assert "Top contributors against the usual for this hour:" in account_text
    assert "prod-agent: $8.00, usually nothing in as long" in account_text
    for rule in ("runaway", "model-burn", "account-burn"):  # after the window moves past it
        assert start + MINUTE * 5 < resolved[rule] <= start + MINUTE * (5 + 15 + 1), rule
    texts = slack_texts(fake_slack)
    [key_text] = [x for x in texts if "Alert" in x and "API key prod-agent is spending" in x]
    for part in ("API key prod-agent is spending $120.00 an hour: $2.00 in the 1 min to "
                 "2026-11-18 10:21 UTC",
                 "Models behind it in the last 1 min: anthropic/claude-opus-4",
                 "Spent $2.00 since it started at 2026-11-18 10:20 UTC",
                 "Key limit left: $97.00 of $100.00"):
        assert part in key_text, part
    [model_text] = [x for x in texts if "Alert" in x
                    and "Model anthropic/claude-opus-4 is spending" in x]
    assert "Keys behind it in the last 1 min: prod-agent" in model_text
    assert "If it goes on, the rest of the UTC day costs $1,638.00" in model_text
    # one minute query a check, and the 4 hourly ones once in the hour
    bodies = fake_openrouter.analytics_queries
    assert {b["granularity"] for b in bodies} == {"minute", "hour"}
    assert len([b for b in bodies if b["granularity"] == "hour"]) == 4 * 2  # 10:00 and 11:00
    assert len([b for b in bodies if b["granularity"] == "minute"]) == 61


def test_the_usual_waits_for_three_weeks_of_history(fake_openrouter, tmp_path: Path) -> None:
    """An account two weeks old: the factor has no usual yet, so only the floor counts."""
    world = make_world(tmp_path, fake_openrouter, """
  to: ["stdout"]
  rules:
    - {kind: burn_rate, name: burn, factor: 2, window: 15m}
""")
    t = world.timeline
    for day in each_day(dt.date(2026, 11, 4), dt.date(2026, 11, 17)):
        t.spend(day, "web", MINI, 10)
    fake_openrouter.minute_spend = [(T0 + MINUTE * m, key_hash("web"), MINI, D(5), D(0))
                                    for m in range(10)]
    result = run_alerts(world.app(T0 + MINUTE * 10), dry_run=True)
    assert result.events == []
    from bot.jobs.alerts import gather_inputs

    data = gather_inputs(world.app(T0 + MINUTE * 10), T0 + MINUTE * 10, save=False)
    assert data.recent is not None and data.recent.usual is None


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


def test_minute_buckets_map_names_back_to_hashes_and_halve_cut_answers(
        fake_openrouter) -> None:
    """Two keys named "staging" (told apart by hash filter), a deleted key and spend without
    a key (placeholders), and answers cut at 3 rows asked again in halves of their time."""
    from bot.models import placeholder_hash
    from bot.openrouter import OpenRouterClient
    from tests.fake_openrouter import MANAGEMENT_KEY

    a, b, c = "a" * 64, "b" * 64, "c" * 64
    fake_openrouter.keys = [
        {"hash": a, "name": "staging", "workspace_id": "w1"},
        {"hash": b, "name": "staging", "workspace_id": "w2"},
        {"hash": c, "name": "web"},
    ]
    fake_openrouter.workspaces = None  # plain /keys
    fake_openrouter.deleted_keys = {"d" * 64: "old-bot"}
    fake_openrouter.minute_spend = [
        (T0 + MINUTE * 1, a, MINI, D(1), D(0)),
        (T0 + MINUTE * 2, b, OPUS, D(2), D(0)),
        (T0 + MINUTE * 2, a, OPUS, D(4), D(0)),
        (T0 + MINUTE * 3, c, MINI, D("0.5"), D("0.25")),
        (T0 + MINUTE * 4, "d" * 64, MINI, D(3), D(0)),
        (T0 + MINUTE * 5, None, MINI, D(7), D(0)),
        (T0 + MINUTE * 40, c, MINI, D(9), D(0)),  # outside the window asked for
    ]
    fake_openrouter.analytics_max_rows = 3
    with OpenRouterClient(MANAGEMENT_KEY, fake_openrouter.base_url, timeout=5.0,
                          sleep=lambda _s: None) as client:
        keys = client.keys()
        got = client.key_model_spend(T0, T0 + MINUTE * 15, keys, "minute")
    assert sorted((x.at - T0, x.key_hash, x.model, x.cost) for x in got) == sorted([
        (MINUTE * 1, a, MINI, D(1)),
        (MINUTE * 2, b, OPUS, D(2)),
        (MINUTE * 2, a, OPUS, D(4)),
        (MINUTE * 3, c, MINI, D("0.75")),  # credits and BYOK
        (MINUTE * 4, placeholder_hash("old-bot"), MINI, D(3)),
        (MINUTE * 5, placeholder_hash(""), MINI, D(7)),
    ])
    minute_bodies = [q for q in fake_openrouter.analytics_queries
                     if q["granularity"] == "minute"]
    assert len(minute_bodies) > 3  # cut answers were asked again in parts
    assert all(q["dimensions"] == ["api_key_id", "model"] for q in minute_bodies)


def test_check_says_where_burn_rates_come_from_and_whether_factor_has_history(
        fake_openrouter, tmp_path: Path) -> None:
    from bot.jobs.check import Verdict, checks

    world = make_world(tmp_path, fake_openrouter, """
  to: ["stdout"]
  rules:
    - {kind: burn_rate, name: burn, factor: 3, above_usd_per_hour: 20}
    - {kind: burn_rate, name: per-model, per: model, above_usd_per_hour: 20}
""")
    t = world.timeline
    for day in each_day(dt.date(2026, 11, 4), dt.date(2026, 11, 17)):  # two weeks
        t.spend(day, "web", MINI, 10)

    def line(now: dt.datetime) -> str:
        [burn] = [c.run() for c in checks(world.app(now)) if c.name == "Burn rate"]
        assert burn.verdict is Verdict.OK
        return burn.detail

    run_alerts(world.app(T0))  # keeps the 30 days /activity has in history
    assert line(T0) == ("minute data from the analytics API; factor: not enough history yet "
                        "(its usual needs 3 weeks of spend in history; run `openrouter-usage "
                        "sync`): only above_usd_per_hour counts")
    for day in each_day(dt.date(2026, 10, 20), dt.date(2026, 11, 3)):
        t.spend(day, "web", MINI, 10)
    run_alerts(world.app(T0 + MINUTE))
    assert line(T0 + MINUTE) == ("minute data from the analytics API; factor: enough history "
                                 "(spend since 2026-10-20 or before)")
    fake_openrouter.analytics_status = 404
    assert line(T0 + MINUTE) == (
        "keys' usage between checks (no minute data: analytics API 404); per: model rules "
        "need minute data and say nothing; factor: the usual is known for 0 of the 168 hours "
        "of the week (each needs checks in that hour in 3 of the last 4 weeks)")
