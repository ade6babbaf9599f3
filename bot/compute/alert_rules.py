"""Pure alert logic: evaluate rules into observations, and step each alert's lifecycle.

The lifecycle follows Alertmanager: an alert fires once when its condition starts, repeats
after ``repeat_every`` while it holds, and resolves once when the value has cleared the
threshold by the hysteresis margin. Between the threshold and the margin nothing changes.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, replace
from decimal import Decimal

from bot import fmt
from bot.compute import aggregate
from bot.compute.aggregate import DAY
from bot.compute.digest import today_so_far
from bot.config import AlertRule
from bot.models import ActivityRow, ApiKey, Credits

CREDITS_URL = "https://openrouter.ai/settings/credits"
KEYS_URL = "https://openrouter.ai/settings/keys"
ACTIVITY_URL = "https://openrouter.ai/activity"


@dataclass(frozen=True)
class Observation:
    """One (rule, subject) measured now: is it over the line, or clear of it by the margin?"""

    rule: AlertRule
    subject: str  # "account", a key hash, or a model name
    subject_name: str  # what people call the subject
    value: str  # the figure, formatted
    threshold: str  # the threshold, formatted
    firing: bool
    clear: bool
    summary: str  # one line: what crossed
    advice: str  # what to do
    title: str = ""  # what the alert is about, e.g. "Low credits"
    link: str = ""  # where to act (a trusted OpenRouter URL)
    note: str = ""  # why it cleared, when not by its value (the subject went away)


@dataclass(frozen=True)
class State:
    """An alert's remembered state (mirrors the store's AlertState)."""

    rule_id: str
    subject: str
    status: str  # "firing" | "resolved"
    value: str
    since: dt.datetime
    last_notified_at: dt.datetime
    threads: dict[str, str]


def _d(value: float) -> Decimal:
    return Decimal(str(value))


def step(
    state: State | None, obs: Observation, now: dt.datetime, repeat_every: dt.timedelta
) -> tuple[State | None, str | None]:
    """The next state and the notification due: "fire", "repeat", "resolve" or None."""
    firing = state is not None and state.status == "firing"
    if not firing:
        if obs.firing:
            return State(obs.rule.id, obs.subject, "firing", obs.value, now, now, {}), "fire"
        return state, None
    assert state is not None
    if obs.clear and not obs.firing:
        return replace(state, status="resolved", value=obs.value, last_notified_at=now), "resolve"
    if now - state.last_notified_at >= repeat_every:
        return replace(state, value=obs.value, last_notified_at=now), "repeat"
    return replace(state, value=obs.value), None


@dataclass(frozen=True)
class Inputs:
    """What the rules look at, all fetched at `as_of`."""

    as_of: dt.datetime
    day: dt.date  # the latest completed UTC day
    credits: Credits | None
    keys: list[ApiKey]
    rows: list[ActivityRow]  # org-wide rows covering day-7 .. day


def evaluate(rule: AlertRule, data: Inputs, margin: Decimal) -> list[Observation]:
    """Observations of one rule; `margin` is the hysteresis as a fraction (0.05)."""
    up, down = 1 + margin, 1 - margin
    if rule.kind == "low_credits":
        if data.credits is None:
            return []
        remaining = data.credits.remaining
        total = data.credits.total_credits
        pct = remaining / total * 100 if total > 0 else Decimal(0)
        usd, per = rule.below_usd, rule.below_percent
        firing = (usd is not None and remaining < _d(usd)) or (
            per is not None and pct < _d(per)
        )
        clear = (usd is None or remaining >= _d(usd) * up) and (per is None or pct >= _d(per) * up)
        limits = [fmt.money(_d(usd))] if usd is not None else []
        if per is not None:
            limits.append(f"{per:g}% of {fmt.money(total)} purchased")
        return [
            Observation(
                rule, "account", "credits", f"{fmt.money(remaining)} ({pct:.1f}%)",
                " or ".join(limits), firing, clear,
                f"OpenRouter credits are low: {fmt.money(remaining)} left",
                f"Add credits at {CREDITS_URL} before requests start failing.",
                "Low credits", CREDITS_URL,
            )
        ]
    if rule.kind == "runway":
        if data.credits is None:
            return []
        week = aggregate.totals(aggregate.in_range(data.rows, data.day - DAY * 6, data.day))
        runway = aggregate.runway_days(data.credits.remaining, week.usage / 7)
        limit = _d(rule.below_days or 0)
        firing = runway is not None and runway < limit
        clear = runway is None or runway >= limit * up
        return [
            Observation(
                rule, "account", "runway", fmt.days_label(runway), f"{limit:g} days", firing,
                clear,
                f"Credits run out in {fmt.days_label(runway)} at the last 7 days' pace",
                f"Add credits at {CREDITS_URL} or cut spend; see {ACTIVITY_URL}.",
                "Credits runway", CREDITS_URL,
            )
        ]
    if rule.kind == "daily_spend":
        today = today_so_far(data.keys)
        if today is None:
            return []
        limit = _d(rule.above_usd or 0)
        return [
            Observation(
                rule, "account", "today's spend", fmt.money(today.cost), fmt.money(limit),
                today.cost > limit, today.cost <= limit * down,
                f"Spend today (UTC) is {fmt.money(today.cost)}, above {fmt.money(limit)}",
                f"See which keys and models are spending at {ACTIVITY_URL}.",
                "Daily spend", ACTIVITY_URL,
            )
        ]
    if rule.kind == "spike":
        on_day = aggregate.totals(aggregate.in_range(data.rows, data.day, data.day)).cost
        trailing = aggregate.totals(
            aggregate.in_range(data.rows, data.day - DAY * 7, data.day - DAY)
        ).cost / 7
        factor, floor = _d(rule.factor or 0), _d(rule.min_usd)
        line = factor * trailing
        firing = on_day > line and on_day > floor
        clear = on_day <= line * down or on_day <= floor * down
        return [
            Observation(
                rule, "account", f"spend on {data.day}", fmt.money(on_day),
                f"{factor:g}x the 7-day average ({fmt.money(trailing)}) and {fmt.money(floor)}",
                firing, clear,
                f"Spend spiked on {data.day} (UTC): {fmt.money(on_day)}, "
                f"{fmt.delta_label(on_day, trailing)} against the 7-day average",
                "Run `openrouter-usage report --date "
                f"{data.day} --by-key` to see which keys and models caused it.",
                "Spend spike", ACTIVITY_URL,
            )
        ]
    if rule.kind == "key_limit":
        out = []
        for key in data.keys:
            if key.disabled or key.limit is None or key.limit <= 0:
                continue
            left = key.limit_remaining if key.limit_remaining is not None else key.limit
            pct = left / key.limit * 100
            limit = _d(rule.below_percent or 0)
            out.append(
                Observation(
                    rule, key.hash, key.display_name,
                    f"{fmt.money(left)} of {fmt.money(key.limit)} ({pct:.1f}%)", f"{limit:g}%",
                    pct < limit, pct >= limit * up,
                    f"API key {key.display_name} has {pct:.1f}% of its limit left",
                    f"Raise the key's limit at {KEYS_URL} or expect its requests to fail"
                    + (f" (limit resets {key.limit_reset})." if key.limit_reset else "."),
                    f"Key limit: {key.display_name}", KEYS_URL,
                )
            )
        return out
    if rule.kind == "model_spend":
        limit = _d(rule.above_usd or 0)
        groups = aggregate.group_by(
            aggregate.in_range(data.rows, data.day, data.day), lambda r: r.model
        )
        out = []
        for model, fig in sorted(groups.items()):
            if rule.model and model != rule.model:
                continue
            out.append(
                Observation(
                    rule, model, model, fmt.money(fig.cost), fmt.money(limit),
                    fig.cost > limit, fig.cost <= limit * down,
                    f"{model} cost {fmt.money(fig.cost)} on {data.day} (UTC)",
                    f"Check which keys use {model}: `openrouter-usage report --date {data.day} "
                    "--by-key`.",
                    f"Model spend: {model}", ACTIVITY_URL,
                )
            )
        return out
    raise ValueError(f"unknown alert kind {rule.kind}")
