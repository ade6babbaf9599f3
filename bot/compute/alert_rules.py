"""Pure alert logic: a table of rules that measure, and the lifecycle that steps each alert.

Each rule kind is one small function in :data:`RULES`: it measures its subjects (the account,
each key, each model) and returns :class:`Observation` values holding numbers only, namely the
figure, the threshold it is held against, whether it is over the line and whether it is clear
of it by the hysteresis margin. The words (titles, summaries, what to do) are in the templates
(``templates/_alerts.j2``).

The lifecycle follows Alertmanager: an alert fires once when its condition starts, repeats
after ``repeat_every`` while it holds, and resolves once when the value has cleared the
threshold by the margin. Between the threshold and the margin nothing changes.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import Any, Literal

from bot.compute import aggregate
from bot.compute.aggregate import DAY
from bot.compute.digest import today_so_far
from bot.config import AlertRule
from bot.models import ZERO, ActivityRow, AlertState, ApiKey, Credits

HUNDRED = Decimal(100)

Action = Literal["fire", "repeat", "resolve"]


@dataclass(frozen=True)
class Observation:
    """One (rule, subject) measured now, in the rule's unit (USD, days or percent).

    ``value`` is None when there is no figure (a runway while nothing is spent). ``facts``
    holds the further figures a rule's words use (e.g. the 7-day average behind a spike).
    ``gone`` marks a firing subject that is no longer observed: it clears without a value.
    """

    rule: AlertRule
    subject: str  # "account", a key hash, or a model name
    value: Decimal | None
    threshold: Decimal | None
    firing: bool
    clear: bool
    name: str = ""  # what people call the subject (a key's or a model's name); "" for the account
    facts: dict[str, Any] = field(default_factory=dict)
    gone: bool = False


@dataclass(frozen=True)
class Inputs:
    """What the rules look at, fetched together."""

    day: dt.date  # the latest completed UTC day
    credits: Credits | None
    keys: list[ApiKey]
    rows: list[ActivityRow]  # org-wide rows covering day-7 .. day


def below(value: Decimal, limit: Decimal, margin: Decimal) -> tuple[bool, bool]:
    """(firing, clear) of a "value below limit" condition with the hysteresis margin."""
    return value < limit, value >= limit * (1 + margin)


def above(value: Decimal, limit: Decimal, margin: Decimal) -> tuple[bool, bool]:
    """(firing, clear) of a "value above limit" condition with the hysteresis margin."""
    return value > limit, value <= limit * (1 - margin)


Rule = Callable[[AlertRule, Inputs, Decimal], list[Observation]]


def low_credits(rule: AlertRule, data: Inputs, margin: Decimal) -> list[Observation]:
    """Credits remaining (USD) below `below_usd` and/or below `below_percent` of purchased."""
    if data.credits is None:
        return []
    remaining, purchased = data.credits.remaining, data.credits.total_credits
    percent = remaining / purchased * HUNDRED if purchased > 0 else ZERO
    checks = []
    if rule.below_usd is not None:
        checks.append(below(remaining, rule.below_usd, margin))
    if rule.below_percent is not None:
        checks.append(below(percent, rule.below_percent, margin))
    return [
        Observation(
            rule, "account", remaining, rule.below_usd,
            firing=any(f for f, _ in checks), clear=all(c for _, c in checks),
            facts={"percent": percent, "below_percent": rule.below_percent,
                   "purchased": purchased},
        )
    ]


def runway(rule: AlertRule, data: Inputs, margin: Decimal) -> list[Observation]:
    """Days of credits left at the last 7 days' average usage, below `below_days`."""
    if data.credits is None:
        return []
    week = aggregate.totals(aggregate.in_range(data.rows, data.day - DAY * 6, data.day))
    days = aggregate.runway_days(data.credits.remaining, week.usage / 7)
    limit = rule.below_days or ZERO
    firing, clear = below(days, limit, margin) if days is not None else (False, True)
    return [Observation(rule, "account", days, limit, firing, clear)]


def daily_spend(rule: AlertRule, data: Inputs, margin: Decimal) -> list[Observation]:
    """Today's spend so far (USD, every key's daily usage) above `above_usd`."""
    today = today_so_far(data.keys)
    if today is None:
        return []
    limit = rule.above_usd or ZERO
    return [Observation(rule, "account", today.cost, limit, *above(today.cost, limit, margin))]


def spike(rule: AlertRule, data: Inputs, margin: Decimal) -> list[Observation]:
    """The latest day's cost above `factor` x the trailing 7-day average and above `min_usd`."""
    on_day = aggregate.totals(aggregate.in_range(data.rows, data.day, data.day)).cost
    week_before = aggregate.in_range(data.rows, data.day - DAY * 7, data.day - DAY)
    average = aggregate.totals(week_before).cost / 7
    factor = rule.factor or ZERO
    line, floor = factor * average, rule.min_usd
    firing = on_day > line and on_day > floor
    clear = on_day <= line * (1 - margin) or on_day <= floor * (1 - margin)
    return [
        Observation(
            rule, "account", on_day, line, firing, clear,
            facts={"day": data.day, "average": average, "factor": factor, "min_usd": floor,
                   "change": aggregate.change(on_day, average)},
        )
    ]


def key_limit(rule: AlertRule, data: Inputs, margin: Decimal) -> list[Observation]:
    """Per key with a limit: the percentage of it left, below `below_percent`."""
    out = []
    limit = rule.below_percent or ZERO
    for key in data.keys:
        if key.disabled or key.limit is None or key.limit <= 0:
            continue
        left = key.limit_remaining if key.limit_remaining is not None else key.limit
        percent = left / key.limit * HUNDRED
        out.append(
            Observation(
                rule, key.hash, percent, limit, *below(percent, limit, margin),
                name=key.display_name,
                facts={"left": left, "limit": key.limit, "limit_reset": key.limit_reset},
            )
        )
    return out


def model_spend(rule: AlertRule, data: Inputs, margin: Decimal) -> list[Observation]:
    """Per model used on the latest day (or the one `model`): its cost above `above_usd`."""
    limit = rule.above_usd or ZERO
    on_day = aggregate.in_range(data.rows, data.day, data.day)
    groups = aggregate.group_by(on_day, lambda r: r.model)
    return [
        Observation(
            rule, model, fig.cost, limit, *above(fig.cost, limit, margin), name=model,
            facts={"day": data.day},
        )
        for model, fig in sorted(groups.items())
        if not rule.model or model == rule.model
    ]


RULES: dict[str, Rule] = {
    "low_credits": low_credits,
    "runway": runway,
    "daily_spend": daily_spend,
    "spike": spike,
    "key_limit": key_limit,
    "model_spend": model_spend,
}


def evaluate(rule: AlertRule, data: Inputs, margin: Decimal) -> list[Observation]:
    """Observations of one rule; `margin` is the hysteresis as a fraction (0.05)."""
    return RULES[rule.kind](rule, data, margin)


def gone(rule: AlertRule, subject: str, name: str) -> Observation:
    """A firing subject that is no longer observed (model unused, key removed) has cleared."""
    return Observation(rule, subject, None, None, firing=False, clear=True, name=name, gone=True)


def _figure(value: Decimal | None) -> str:
    return "" if value is None else str(value)


def step(
    state: AlertState | None, obs: Observation, now: dt.datetime, repeat_every: dt.timedelta
) -> tuple[AlertState | None, Action | None]:
    """The next state and the notification due: "fire", "repeat", "resolve" or None."""
    value = _figure(obs.value)
    if state is None or state.status != "firing":
        if obs.firing:
            return AlertState(obs.rule.id, obs.subject, "firing", value, now, now, {}), "fire"
        return state, None
    if obs.clear and not obs.firing:
        return replace(state, status="resolved", value=value, last_notified_at=now), "resolve"
    if now - state.last_notified_at >= repeat_every:
        return replace(state, value=value, last_notified_at=now), "repeat"
    return replace(state, value=value), None
