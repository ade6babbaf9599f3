"""Alert rules and lifecycle with a fixed clock: fire, hold, repeat, resolve, hysteresis."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest

from bot.compute.alert_rules import RULES, Inputs, Observation, evaluate, step
from bot.config import ALERT_KINDS, AlertRule
from bot.jobs.alerts import plan
from bot.models import AlertState, ApiKey, Credits
from tests.rows import row

D = Decimal
T0 = dt.datetime(2026, 11, 25, 9, 0, tzinfo=dt.UTC)
DAY = dt.date(2026, 11, 24)
REPEAT = dt.timedelta(hours=24)
MARGIN = D("0.05")


def inputs(remaining: str = "100", total: str = "1000", rows=None, keys=None) -> Inputs:
    credits = Credits(D(total), D(total) - D(remaining))
    return Inputs(as_of=T0, day=DAY, credits=credits, keys=keys or [], rows=rows or [])


LOW = AlertRule(kind="low_credits", index=0, below_usd=D(50))


def one(rule: AlertRule, data: Inputs) -> Observation:
    [obs] = evaluate(rule, data, MARGIN)
    return obs


def state_of(obs: Observation) -> tuple[bool, bool]:
    return obs.firing, obs.clear


FIRING, HOVER, CLEAR = (True, False), (False, False), (False, True)


def test_every_configurable_kind_has_a_rule() -> None:
    assert set(RULES) == set(ALERT_KINDS)


def test_low_credits_fires_holds_repeats_and_resolves_with_margin() -> None:
    obs = one(LOW, inputs(remaining="40"))
    assert obs.firing and not obs.clear
    assert (obs.value, obs.threshold) == (D(40), D(50))
    assert obs.facts["percent"] == D(4) and obs.facts["purchased"] == D(1000)

    state, action = step(None, obs, T0, REPEAT)
    assert action == "fire" and state is not None and state.since == T0

    # still low an hour later: hold, no message
    state2, action = step(state, one(LOW, inputs(remaining="39")), T0 + dt.timedelta(hours=1),
                          REPEAT)
    assert action is None and state2 is not None and state2.value == "39"
    assert state2.last_notified_at == T0

    # back above the threshold but inside the 5% margin ($50..$52.50): no flapping
    hover = one(LOW, inputs(remaining="51"))
    assert state_of(hover) == HOVER
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


def test_low_credits_percent_of_purchased_with_margin() -> None:
    rule = AlertRule(kind="low_credits", index=0, below_percent=D(10))
    assert state_of(one(rule, inputs(remaining="99", total="1000"))) == FIRING
    assert state_of(one(rule, inputs(remaining="100", total="1000"))) == HOVER  # at: not firing
    assert state_of(one(rule, inputs(remaining="104", total="1000"))) == HOVER  # margin: 10.5%
    assert state_of(one(rule, inputs(remaining="105", total="1000"))) == CLEAR


def test_low_credits_with_both_thresholds_fires_on_either_and_clears_on_both() -> None:
    rule = AlertRule(kind="low_credits", index=0, below_usd=D(50), below_percent=D(10))
    # $1,000 purchased: 10% is $100, the higher line
    assert state_of(one(rule, inputs(remaining="99", total="1000"))) == FIRING  # percent only
    assert state_of(one(rule, inputs(remaining="104", total="1000"))) == HOVER
    assert state_of(one(rule, inputs(remaining="105", total="1000"))) == CLEAR
    # $100 purchased: $50 is the higher line
    assert state_of(one(rule, inputs(remaining="49", total="100"))) == FIRING  # both
    assert state_of(one(rule, inputs(remaining="52", total="100"))) == HOVER  # $ inside margin
    assert state_of(one(rule, inputs(remaining="52.50", total="100"))) == CLEAR
    obs = one(rule, inputs(remaining="40", total="1000"))
    assert obs.threshold == D(50) and obs.facts["below_percent"] == D(10)


def test_low_credits_needs_credits() -> None:
    data = Inputs(as_of=T0, day=DAY, credits=None, keys=[], rows=[])
    assert evaluate(LOW, data, MARGIN) == []


def seven_days(usage: str) -> list:
    return [row(f"2026-11-{d:02d}", usage=usage, byok="100") for d in range(18, 25)]


def test_runway_uses_usage_only_over_seven_days_with_margin() -> None:
    rule = AlertRule(kind="runway", index=1, below_days=D(7))
    obs = one(rule, inputs(remaining="60", rows=seven_days("10")))  # 60 / 10 a day = 6 days
    assert state_of(obs) == FIRING and obs.value == D(6) and obs.threshold == D(7)
    assert state_of(one(rule, inputs(remaining="70", rows=seven_days("10")))) == HOVER
    assert state_of(one(rule, inputs(remaining="73", rows=seven_days("10")))) == HOVER  # < 7.35
    assert state_of(one(rule, inputs(remaining="74", rows=seven_days("10")))) == CLEAR
    idle = one(rule, inputs(remaining="10", rows=[]))  # nothing spent: no runway, no alert
    assert idle.value is None and state_of(idle) == CLEAR


def key(name: str, limit: str | None, left: str | None, daily: str = "0", disabled=False):
    return ApiKey(hash=f"h-{name}", name=name, disabled=disabled,
                  limit=D(limit) if limit else None,
                  limit_remaining=D(left) if left else None, usage_daily=D(daily))


def test_daily_spend_sums_keys_usage_daily_with_margin() -> None:
    rule = AlertRule(kind="daily_spend", index=2, above_usd=D(100))
    keys = [key("a", None, None, daily="60"), key("b", None, None, daily="41")]
    obs = one(rule, inputs(keys=keys))
    assert state_of(obs) == FIRING and obs.value == D(101)
    keys[1] = key("b", None, None, daily="40")
    assert state_of(one(rule, inputs(keys=keys))) == HOVER  # exactly at: not firing
    keys[1] = key("b", None, None, daily="37")
    assert state_of(one(rule, inputs(keys=keys))) == HOVER  # $97 is inside the margin
    keys[1] = key("b", None, None, daily="35")
    assert state_of(one(rule, inputs(keys=keys))) == CLEAR  # $95 is 5% under $100
    assert evaluate(rule, inputs(keys=[]), MARGIN) == []  # no keys: nothing to measure


def week_of(usage: str) -> list:
    return [row(f"2026-11-{d:02d}", usage=usage) for d in range(17, 24)]


def test_spike_needs_factor_and_minimum() -> None:
    rule = AlertRule(kind="spike", index=3, factor=D(2), min_usd=D(20), baseline="7d")
    obs = one(rule, inputs(rows=week_of("10") + [row("2026-11-24", usage="25")]))
    assert state_of(obs) == FIRING
    assert (obs.value, obs.threshold) == (D(25), D(20))  # the line: 2 x the $10 average
    assert obs.facts["average"] == D(10) and obs.facts["change"] == D("1.5")
    assert not one(rule, inputs(rows=week_of("10") + [row("2026-11-24", usage="19")])).firing
    small = week_of("1") + [row("2026-11-24", usage="15")]  # 15x the average, under $20
    assert not one(rule, inputs(rows=small)).firing


def test_spike_clears_with_margin_under_the_line_or_the_minimum() -> None:
    rule = AlertRule(kind="spike", index=3, factor=D(2), min_usd=D(5), baseline="7d")
    at = lambda usage: one(rule, inputs(rows=week_of("10") + [row("2026-11-24", usage=usage)]))  # noqa: E731
    assert state_of(at("21")) == FIRING
    assert state_of(at("20")) == HOVER  # at the line
    assert state_of(at("19.5")) == HOVER  # inside 5% of $20
    assert state_of(at("19")) == CLEAR
    tiny = AlertRule(kind="spike", index=3, factor=D(2), min_usd=D(100), baseline="7d")
    assert state_of(one(tiny, inputs(rows=week_of("10") + [row("2026-11-24", usage="96")]))) \
        == HOVER
    assert state_of(one(tiny, inputs(rows=week_of("10") + [row("2026-11-24", usage="95")]))) \
        == CLEAR  # 5% under the minimum


def test_key_limit_one_alert_per_key_skipping_disabled_and_unlimited() -> None:
    rule = AlertRule(kind="key_limit", index=4, below_percent=D(10))
    keys = [key("<!channel>", "100", "5"), key("ok", "100", "50"), key("free", None, None),
            key("off", "100", "1", disabled=True)]
    obs = evaluate(rule, inputs(keys=keys), MARGIN)
    assert [(o.subject, o.firing) for o in obs] == [("h-<!channel>", True), ("h-ok", False)]
    assert obs[0].name == "<!channel>"  # escaped by the templates, not here
    assert (obs[0].value, obs[0].facts["left"], obs[0].facts["limit"]) == (D(5), D(5), D(100))


def test_key_limit_hysteresis() -> None:
    rule = AlertRule(kind="key_limit", index=4, below_percent=D(10))
    at = lambda left: one(rule, inputs(keys=[key("k", "200", left)]))  # noqa: E731
    assert state_of(at("19")) == FIRING  # 9.5%
    assert state_of(at("20")) == HOVER  # 10%
    assert state_of(at("20.9")) == HOVER  # 10.45%
    assert state_of(at("21")) == CLEAR  # 10.5%
    assert at("21").value == D("10.5")
    unspent = one(rule, inputs(keys=[key("k", "200", None)]))  # no remaining given: all of it
    assert unspent.value == D(100) and state_of(unspent) == CLEAR


def test_model_spend_per_model_with_margin() -> None:
    rule = AlertRule(kind="model_spend", index=5, above_usd=D(50))
    rows = [row("2026-11-24", model="big", usage="60"), row("2026-11-24", model="mid", usage="49"),
            row("2026-11-24", model="edge", usage="50"),
            row("2026-11-23", model="old", usage="99")]  # the day before: not measured
    obs = {o.subject: state_of(o) for o in evaluate(rule, inputs(rows=rows), MARGIN)}
    assert obs == {"big": FIRING, "mid": HOVER, "edge": HOVER}
    cleared = one(rule, inputs(rows=[row("2026-11-24", model="big", usage="47.50")]))
    assert state_of(cleared) == CLEAR and cleared.name == "big"


def test_model_spend_model_filter_watches_only_that_model() -> None:
    rule = AlertRule(kind="model_spend", index=5, above_usd=D(50), model="a/b")
    rows = [row("2026-11-24", model="a/b", usage="60"), row("2026-11-24", model="c/d", usage="99")]
    assert [(o.subject, o.firing) for o in evaluate(rule, inputs(rows=rows), MARGIN)] == [
        ("a/b", True)]
    assert evaluate(rule, inputs(rows=rows[1:]), MARGIN) == []


def test_model_spend_resolves_when_model_goes_away() -> None:
    rule = AlertRule(kind="model_spend", index=5, above_usd=D(50))
    rows = [row("2026-11-24", model="big", usage="60"), row("2026-11-24", model="small", usage="1")]
    events, states = plan((rule,), inputs(rows=rows), {}, now=T0, repeat_every=REPEAT,
                          margin=MARGIN)
    assert [(e.action, e.obs.subject) for e in events] == [("fire", "big")]
    assert [s.subject for s in states] == ["big"]
    known = {(s.rule_id, s.subject): s for s in states}
    events, states = plan((rule,), inputs(rows=[]), known, now=T0 + dt.timedelta(days=1),
                          repeat_every=REPEAT, margin=MARGIN)
    assert [(e.action, e.obs.subject) for e in events] == [("resolve", "big")]
    assert events[0].obs.gone and events[0].obs.value is None
    assert states[0].status == "resolved"


def test_plan_survives_restart_via_states() -> None:
    data = inputs(remaining="40")
    events, states = plan((LOW,), data, {}, now=T0, repeat_every=REPEAT, margin=MARGIN)
    assert [e.action for e in events] == ["fire"]
    # a "restart": only the saved states carry over
    saved = {(s.rule_id, s.subject): AlertState(**vars(s)) for s in states}
    events, _ = plan((LOW,), data, saved, now=T0 + dt.timedelta(minutes=15),
                     repeat_every=REPEAT, margin=MARGIN)
    assert events == []


@pytest.mark.parametrize("remaining", ["49.99", "0", "-5"])
def test_low_credits_fires_just_under_the_threshold_at_zero_and_below(remaining: str) -> None:
    assert one(LOW, inputs(remaining=remaining)).firing


def test_exactly_at_threshold_is_not_firing() -> None:
    assert not one(LOW, inputs(remaining="50")).firing


def test_thread_of_a_retried_first_message_is_recorded_even_with_pipes_in_names() -> None:
    from bot.jobs.alerts import Event, _record_threads, period
    from bot.models import Destination, Outcome, Status
    from bot.store import Store, connect

    store = Store(connect(":memory:"))
    store.alert_put(AlertState(rule_id="spend|big", subject="odd|model", status="firing",
                               value="60", since=T0, last_notified_at=T0))
    rule = AlertRule(kind="model_spend", index=0, above_usd=D(1), name="spend|big")
    [obs] = evaluate(rule, inputs(rows=[row("2026-11-24", model="odd|model", usage="60")]),
                     MARGIN)
    state = AlertState("spend|big", "odd|model", "firing", "60", T0, T0, {})
    key = period(Event("fire", obs, state))
    assert "|" not in key.replace("spend|big", "").replace("odd|model", "")  # no separator
    _record_threads(store, [Outcome(destination=Destination.parse("slack:#a"),
                                    status=Status.SENT, ref="123.456", job="alert", period=key)])
    [saved] = store.alert_all()
    assert saved.threads == {"slack:#a": "123.456"}


def test_thread_is_recorded_from_a_delivery_written_in_the_old_period_format() -> None:
    from bot.jobs.alerts import _record_threads
    from bot.models import Destination, Outcome, Status
    from bot.store import Store, connect

    store = Store(connect(":memory:"))
    store.alert_put(AlertState(rule_id="spend|big", subject="odd|model", status="firing",
                               value="60", since=T0, last_notified_at=T0))
    stamp = T0.strftime("%Y%m%dT%H%M%SZ")
    old = f"spend|big|odd|model|{stamp}|fire|{stamp}"  # "rule|subject|since|action|at"
    _record_threads(store, [Outcome(destination=Destination.parse("slack:#a"),
                                    status=Status.SENT, ref="9.9", job="alert", period=old)])
    [saved] = store.alert_all()
    assert saved.threads == {"slack:#a": "9.9"}
