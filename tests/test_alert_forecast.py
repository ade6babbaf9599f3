"""Periods, paces and projections (pure), and the rules built on them: key_limit's forecast,
budgets per key and per model, and the options that configure them."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest

from bot.compute import forecast
from bot.compute.alert_rules import Inputs, evaluate
from bot.config import AlertRule, parse_config
from bot.errors import ConfigError
from bot.models import ApiKey
from tests.rows import row

D = Decimal
MARGIN = D("0.05")
NOON = dt.datetime(2026, 11, 20, 12, 0, tzinfo=dt.UTC)  # a Friday
LATEST = dt.date(2026, 11, 19)


def test_periods_are_utc_days_monday_weeks_and_calendar_months() -> None:
    friday = dt.date(2026, 11, 20)
    assert forecast.span_of("day", friday) == forecast.Span("day", friday, friday)
    week = forecast.span_of("week", friday)
    assert (week.start, week.end, week.key) == (dt.date(2026, 11, 16), dt.date(2026, 11, 22),
                                                "2026-W47")
    month = forecast.span_of("month", dt.date(2026, 2, 14))
    assert (month.start, month.end, month.key, month.days) == (
        dt.date(2026, 2, 1), dt.date(2026, 2, 28), "2026-02", 28)
    assert forecast.day_fraction(NOON) == D("0.5")


def test_weekday_weights_and_median() -> None:
    # four weeks of $10 weekdays and $3 weekends
    daily = {LATEST - dt.timedelta(days=i): D(3) if (LATEST - dt.timedelta(days=i)).weekday() >= 5
             else D(10) for i in range(28)}
    weights = forecast.weekday_weights(daily, LATEST)
    assert weights[0] == D(70) / D(56) and weights[6] == D(21) / D(56)  # 56 = a week's spend
    assert sum(weights) == 7
    assert forecast.weekday_weights({}, LATEST) == (D(1),) * 7
    assert forecast.level(daily, LATEST) == D(8)
    odd = dict(daily, **{})
    odd[LATEST - dt.timedelta(days=7)] = D(1000)  # one odd Thursday does not move the median
    assert forecast.weekday_median(odd, LATEST) == D(10)


def test_projection_by_hand() -> None:
    # $100 spent by noon on Friday the 20th, $10 a day, flat: +5 today, +10 for each of 10 days
    proj = forecast.project(D(100), limit=D(180), first=dt.date(2026, 11, 20),
                            first_done=D("0.5"), end=dt.date(2026, 11, 30), pace=D(10),
                            weights=(D(1),) * 7)
    assert proj.total == D(205) and proj.over
    assert proj.crossing == dt.date(2026, 11, 28)  # 105 + 8 x 10 = 185 > 180
    # no spend on weekends: +5 on Friday, +50 for Mon 23..Fri 27, +10 on Monday the 30th
    weekendless = (D(1),) * 5 + (D(0),) * 2
    later = forecast.project(D(100), limit=D(180), first=dt.date(2026, 11, 20),
                             first_done=D("0.5"), end=dt.date(2026, 11, 30), pace=D(10),
                             weights=weekendless)
    assert later.total == D(165) and not later.over and later.crossing is None


def limited(left: str, reset: str | None = "monthly") -> ApiKey:
    return ApiKey("h-ci", "ci", limit=D(100), limit_remaining=D(left), limit_reset=reset,
                  usage_monthly=D(100) - D(left), usage_daily=D("2.5"))


def key_history(per_day: str) -> list:
    return [row(str(LATEST - dt.timedelta(days=i)), usage=per_day, key="h-ci")
            for i in range(28)]


def test_key_limit_forecast_names_the_day_the_key_runs_out() -> None:
    rule = AlertRule(kind="key_limit", index=0, forecast=True)
    data = Inputs(as_of=NOON, day=LATEST, credits=None, keys=[limited("40")], rows=[],
                  key_rows=key_history("5"))
    [obs] = evaluate(rule, data, MARGIN)
    # $60 used; $5 a day: +2.50 today, +50 for Nov 21..30 = $112.50 by the month's end
    assert (obs.aspect, obs.subject, obs.value, obs.threshold) == ("forecast", "h-ci forecast",
                                                                   D("112.5"), D(100))
    assert obs.firing and obs.facts["crossing"] == dt.date(2026, 11, 28)
    slow = Inputs(as_of=NOON, day=LATEST, credits=None, keys=[limited("40")], rows=[],
                  key_rows=key_history("3"))
    [calm] = evaluate(rule, slow, MARGIN)  # 60 + 1.5 + 30 = 91.50: clear of the 5% margin
    assert not calm.firing and calm.clear
    lifetime = Inputs(as_of=NOON, day=LATEST, credits=None, keys=[limited("40", reset=None)],
                      rows=[], key_rows=key_history("5"))
    [seven_days] = evaluate(rule, lifetime, MARGIN)  # 60 + 2.5 + 6 x 5 = 92.50 within a week
    assert seven_days.value == D("92.5") and not seven_days.firing
    both = AlertRule(kind="key_limit", index=0, forecast=True, below_percent=D(50))
    assert [o.aspect for o in evaluate(both, data, MARGIN)] == ["", "forecast"]
    no_history = Inputs(as_of=NOON, day=LATEST, credits=None, keys=[limited("40")], rows=[])
    assert evaluate(rule, no_history, MARGIN) == []


def test_budget_per_key_counts_the_keys_own_period_usage() -> None:
    rule = AlertRule(kind="budget", index=0, amount_usd=D(80), per="key", period="month")
    keys = [limited("40"), ApiKey("h-web", "web", usage_monthly=D(10), byok_usage_monthly=D(2))]
    data = Inputs(as_of=NOON, day=LATEST, credits=None, keys=keys, rows=[])
    seen = {(o.subject, o.value, o.firing) for o in evaluate(rule, data, MARGIN)}
    assert seen == {("h-ci 2026-11 50%", D(75), True), ("h-ci 2026-11 80%", D(75), False),
                    ("h-ci 2026-11 100%", D(75), False), ("h-web 2026-11 50%", D(15), False),
                    ("h-web 2026-11 80%", D(15), False), ("h-web 2026-11 100%", D(15), False)}


def test_budget_per_model_counts_completed_days_and_says_so() -> None:
    rule = AlertRule(kind="budget", index=0, amount_usd=D(100), per="model",
                     model="a/expensive", notify_at=(D(50),))
    rows = [row(f"2026-11-{d:02d}", model="a/expensive", usage="4") for d in range(1, 20)]
    rows += [row("2026-11-19", model="b/cheap", usage="99")]
    data = Inputs(as_of=NOON, day=LATEST, credits=None, keys=[], rows=rows)
    [obs] = evaluate(rule, data, MARGIN)
    assert obs.subject == "a/expensive 2026-11 50%" and obs.value == D(76) and obs.firing
    assert obs.facts["known_through"] == LATEST


def test_a_jump_past_two_notices_says_only_the_higher_one() -> None:
    rule = AlertRule(kind="budget", index=0, amount_usd=D(100))
    data = Inputs(as_of=NOON, day=LATEST, credits=None, keys=[ApiKey("h", "k", usage_daily=D(0))],
                  rows=[row("2026-11-19", usage="85")])
    quiet = {o.subject: o.quiet for o in evaluate(rule, data, MARGIN) if o.firing}
    assert quiet == {"account 2026-11 50%": True, "account 2026-11 80%": False}


def rules(*items: str) -> tuple[AlertRule, ...]:
    import yaml

    doc = yaml.safe_load("alerts:\n  to: [stdout]\n  rules:\n" + "".join(
        f"    - {item}\n" for item in items))
    return parse_config(doc, {}).alerts.rules


def test_config_of_the_new_options() -> None:
    budget, spike, limit = rules(
        "{kind: budget, amount_usd: 500, period: week, per: key, key: ci, notify_at: [90, 25],"
        " forecast: true}",
        "{kind: spike, factor: 3, per: model, model: a/b, baseline: 7d}",
        "{kind: key_limit, forecast: true}")
    assert (budget.amount_usd, budget.period, budget.per, budget.key, budget.notify_at,
            budget.forecast) == (D(500), "week", "key", "ci", (D(25), D(90)), True)
    assert (spike.per, spike.model, spike.baseline) == ("model", "a/b", "7d")
    assert limit.forecast and limit.below_percent is None
    [default] = rules("{kind: budget, amount_usd: 10}")
    assert (default.period, default.per, default.notify_at, default.forecast) == (
        "month", "account", (D(50), D(80), D(100)), False)
    [narrowed] = rules("{kind: spike, factor: 2, key: prod}")
    assert narrowed.per == "key"


@pytest.mark.parametrize(("item", "message"), [
    ("{kind: budget}", "alerts.rules[0]: a budget rule needs amount_usd"),
    ("{kind: budget, amount_usd: 5, period: year}", "alerts.rules[0].period: expected one of"),
    ("{kind: budget, amount_usd: 5, notify_at: 50}", "alerts.rules[0].notify_at: expected a list"),
    ("{kind: budget, amount_usd: 5, notify_at: [0]}", "alerts.rules[0].notify_at[0]: expected"),
    ("{kind: budget, amount_usd: 5, per: model, key: x}", "rules[0].key: only with per: key"),
    ("{kind: spike, factor: 2, baseline: month}", "alerts.rules[0].baseline: expected one of"),
    ("{kind: key_limit, forecast: false}", "a key_limit rule needs below_percent or forecast"),
    ("{kind: key_limit, forecast: maybe}", "alerts.rules[0].forecast: expected true or false"),
])
def test_config_errors_name_the_option(item: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        rules(item)
