"""Alert evaluation and lifecycle with a fixed clock: fire, hold, repeat, resolve, hysteresis."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest

from bot.compute.alert_rules import Inputs, State, evaluate, step
from bot.config import AlertRule
from bot.jobs.alerts import plan
from bot.models import ApiKey, Credits
from tests.rows import row

T0 = dt.datetime(2026, 11, 25, 9, 0, tzinfo=dt.UTC)
DAY = dt.date(2026, 11, 24)
REPEAT = dt.timedelta(hours=24)
MARGIN = Decimal("0.05")


def inputs(remaining: str = "100", total: str = "1000", rows=None, keys=None) -> Inputs:
    credits = Credits(Decimal(total), Decimal(total) - Decimal(remaining))
    return Inputs(as_of=T0, day=DAY, credits=credits, keys=keys or [], rows=rows or [])


LOW = AlertRule(kind="low_credits", index=0, below_usd=50.0)


def one(rule: AlertRule, data: Inputs):
    [obs] = evaluate(rule, data, MARGIN)
    return obs


def test_low_credits_fires_holds_repeats_and_resolves_with_margin() -> None:
    obs = one(LOW, inputs(remaining="40"))
    assert obs.firing and not obs.clear
    assert obs.value.startswith("$40.00")
    assert "openrouter.ai/settings/credits" in obs.advice

    state, action = step(None, obs, T0, REPEAT)
    assert action == "fire" and state is not None and state.since == T0

    # still low an hour later: hold, no message
    state2, action = step(state, one(LOW, inputs(remaining="39")), T0 + dt.timedelta(hours=1),
                          REPEAT)
    assert action is None and state2 is not None and state2.value.startswith("$39.00")
    assert state2.last_notified_at == T0

    # back above the threshold but inside the 5% margin ($50..$52.50): no flapping
    hover = one(LOW, inputs(remaining="51"))
    assert not hover.firing and not hover.clear
    state3, action = step(state2, hover, T0 + dt.timedelta(hours=2), REPEAT)
    assert action is None and state3 is not None and state3.status == "firing"

    # 24 h after the first message, still firing: repeat
    state4, action = step(state3, one(LOW, inputs(remaining="45")), T0 + REPEAT, REPEAT)
    assert action == "repeat" and state4 is not None and state4.last_notified_at == T0 + REPEAT
    assert state4.since == T0

    # clears the margin: one resolve, then nothing
    cleared = one(LOW, inputs(remaining="52.50"))
    assert cleared.clear
    state5, action = step(state4, cleared, T0 + REPEAT + dt.timedelta(hours=1), REPEAT)
    assert action == "resolve" and state5 is not None and state5.status == "resolved"
    state6, action = step(state5, cleared, T0 + REPEAT + dt.timedelta(hours=2), REPEAT)
    assert action is None

    # and fires again as a new episode when it drops again
    later = T0 + dt.timedelta(days=3)
    state7, action = step(state6, one(LOW, inputs(remaining="10")), later, REPEAT)
    assert action == "fire" and state7 is not None and state7.since == later


def test_low_credits_percent_of_purchased() -> None:
    rule = AlertRule(kind="low_credits", index=0, below_percent=10.0)
    assert one(rule, inputs(remaining="99", total="1000")).firing
    assert not one(rule, inputs(remaining="100", total="1000")).firing
    assert not one(rule, inputs(remaining="104", total="1000")).clear  # margin: 10.5%
    assert one(rule, inputs(remaining="105", total="1000")).clear


def test_runway_uses_usage_only_over_seven_days() -> None:
    rows = [row(f"2026-11-{d:02d}", usage="10", byok="100") for d in range(18, 25)]
    rule = AlertRule(kind="runway", index=1, below_days=7.0)
    obs = one(rule, inputs(remaining="60", rows=rows))  # 60 / 10 a day = 6 days
    assert obs.firing and obs.value == "6.0 days"
    assert not one(rule, inputs(remaining="70", rows=rows)).firing
    assert not one(rule, inputs(remaining="73", rows=rows)).clear  # 7.3 < 7.35
    assert one(rule, inputs(remaining="74", rows=rows)).clear
    assert one(rule, inputs(remaining="10", rows=[])).clear  # nothing spent: no runway alert


def key(name: str, limit: str | None, left: str | None, daily: str = "0", disabled=False):
    return ApiKey(hash=f"h-{name}", name=name, disabled=disabled,
                  limit=Decimal(limit) if limit else None,
                  limit_remaining=Decimal(left) if left else None, usage_daily=Decimal(daily))


def test_daily_spend_sums_keys_usage_daily() -> None:
    rule = AlertRule(kind="daily_spend", index=2, above_usd=100.0)
    keys = [key("a", None, None, daily="60"), key("b", None, None, daily="41")]
    obs = one(rule, inputs(keys=keys))
    assert obs.firing and obs.value == "$101.00"
    keys[1] = key("b", None, None, daily="35")
    assert one(rule, inputs(keys=keys)).clear  # $95 is 5% under $100
    keys[1] = key("b", None, None, daily="37")
    assert not one(rule, inputs(keys=keys)).clear and not one(rule, inputs(keys=keys)).firing


def test_spike_needs_factor_and_minimum() -> None:
    rule = AlertRule(kind="spike", index=3, factor=2.0, min_usd=20.0)
    trailing = [row(f"2026-11-{d:02d}", usage="10") for d in range(17, 24)]
    assert one(rule, inputs(rows=trailing + [row("2026-11-24", usage="25")])).firing
    assert not one(rule, inputs(rows=trailing + [row("2026-11-24", usage="19")])).firing
    small = [row(f"2026-11-{d:02d}", usage="1") for d in range(17, 24)]
    assert not one(rule, inputs(rows=small + [row("2026-11-24", usage="15")])).firing


def test_key_limit_one_alert_per_key_skipping_disabled_and_unlimited() -> None:
    rule = AlertRule(kind="key_limit", index=4, below_percent=10.0)
    keys = [key("<!channel>", "100", "5"), key("ok", "100", "50"), key("free", None, None),
            key("off", "100", "1", disabled=True)]
    obs = evaluate(rule, inputs(keys=keys), MARGIN)
    assert [(o.subject, o.firing) for o in obs] == [("h-<!channel>", True), ("h-ok", False)]
    assert obs[0].subject_name == "<!channel>"  # escaped by the templates, not here


def test_model_spend_per_model_and_resolves_when_model_goes_away() -> None:
    rule = AlertRule(kind="model_spend", index=5, above_usd=50.0)
    rows = [row("2026-11-24", model="big", usage="60"), row("2026-11-24", model="small", usage="1")]
    events, states = plan((rule,), inputs(rows=rows), {}, now=T0, repeat_every=REPEAT,
                          margin=MARGIN)
    assert [(e.action, e.obs.subject) for e in events] == [("fire", "big")]
    assert [s.subject for s in states] == ["big"]
    known = {(s.rule_id, s.subject): s for s in states}
    events, states = plan((rule,), inputs(rows=[]), known, now=T0 + dt.timedelta(days=1),
                          repeat_every=REPEAT, margin=MARGIN)
    assert [(e.action, e.obs.subject) for e in events] == [("resolve", "big")]
    assert events[0].obs.note == "the model was not used on the latest day"
    assert events[0].obs.title == "Model spend: big"
    assert states[0].status == "resolved"


def test_plan_survives_restart_via_states() -> None:
    data = inputs(remaining="40")
    events, states = plan((LOW,), data, {}, now=T0, repeat_every=REPEAT, margin=MARGIN)
    assert [e.action for e in events] == ["fire"]
    # a "restart": only the saved states carry over
    saved = {(s.rule_id, s.subject): State(**vars(s)) for s in states}
    events, _ = plan((LOW,), data, saved, now=T0 + dt.timedelta(minutes=15),
                     repeat_every=REPEAT, margin=MARGIN)
    assert events == []


@pytest.mark.parametrize("remaining", ["49.99", "0", "-5"])
def test_low_credits_edges(remaining: str) -> None:
    assert one(LOW, inputs(remaining=remaining)).firing


def test_exactly_at_threshold_is_not_firing() -> None:
    assert not one(LOW, inputs(remaining="50")).firing


def test_thread_of_a_retried_first_message_is_recorded_even_with_pipes_in_names() -> None:
    from bot.deliver.outbox import Outcome
    from bot.jobs.alerts import Event, _record_threads, period
    from bot.store import AlertState, Store, connect

    store = Store(connect(":memory:"))
    store.alert_put(AlertState(rule_id="spend|big", subject="odd|model", status="firing",
                               value="$60", since=T0, last_notified_at=T0))
    rule = AlertRule(kind="model_spend", index=0, above_usd=1.0, name="spend|big")
    [obs] = evaluate(rule, inputs(rows=[row("2026-11-24", model="odd|model", usage="60")]),
                     MARGIN)
    state = State("spend|big", "odd|model", "firing", "$60", T0, T0, {})
    key = period(Event("fire", obs, state))
    _record_threads(store, [Outcome("slack:#a", "sent", "", "123.456", "alert", key)])
    [saved] = store.alert_all()
    assert saved.threads == {"slack:#a": "123.456"}
