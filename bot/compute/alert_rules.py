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

from bot.compute import aggregate, forecast
from bot.compute.aggregate import DAY
from bot.compute.burn import ACCOUNT, Burn, BurnState, Rate, Recent, Run, minute_burns
from bot.compute.digest import today_so_far
from bot.compute.explain import Contributor, Explanation, explain
from bot.compute.forecast import PeriodKind, Span, daily_costs, span_of
from bot.config import AlertRule
from bot.models import ZERO, ActivityRow, AlertState, ApiKey, Credits, Workspace

HUNDRED = Decimal(100)
NO_WORKSPACE = "(no workspace)"

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
    # which check of the rule this is ("" for the rule's one check; budgets: "notify" at a
    # percentage, "forecast"; key_limit: "forecast")
    aspect: str = ""
    # a notice that fires once in its period, never repeats and never resolves in words (a
    # budget's percentage reached); `quiet` when a higher percentage fired in the same check
    once: bool = False
    quiet: bool = False
    why: Explanation | None = None  # the top contributors and volume vs price, when known


@dataclass(frozen=True)
class Inputs:
    """What the rules look at, all fetched at `as_of`."""

    as_of: dt.datetime
    day: dt.date  # the latest completed UTC day
    credits: Credits | None
    keys: list[ApiKey]
    rows: list[ActivityRow]  # org-wide rows covering at least day-34 .. day (and the days after)
    # per key x model rows over the same days, from history ([] when never synced per key)
    key_rows: list[ActivityRow] = field(default_factory=list)
    names: dict[str, str] = field(default_factory=dict)  # key hash -> name, deleted keys too
    burn: BurnState | None = None  # samples of keys' usage from this and earlier checks
    recent: Recent | None = None  # minute buckets from the analytics API, when it answers
    workspaces: dict[str, Workspace] = field(default_factory=dict)  # id -> workspace
    # key hash -> workspace id, deleted keys too ("" when unknown); else from `keys`
    key_workspaces: dict[str, str] = field(default_factory=dict)

    @property
    def today(self) -> dt.date:
        return self.as_of.astimezone(dt.UTC).date()

    def key_name(self, key_hash: str) -> str:
        return self.names.get(key_hash) or key_hash[:12]

    def workspace_of(self, key_hash: str) -> str:
        """The id of the workspace a key lives in ("" when unknown)."""
        if key_hash in self.key_workspaces:
            return self.key_workspaces[key_hash]
        return next((k.workspace_id for k in self.keys if k.hash == key_hash), "")

    def workspace_name(self, workspace_id: str) -> str:
        space = self.workspaces.get(workspace_id)
        return space.display_name if space else (workspace_id[:12] or NO_WORKSPACE)


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


@dataclass(frozen=True)
class Scoped:
    """One subject a rule watches, with its own rows."""

    subject: str  # "account", a key hash or a model name
    name: str  # what people call it ("" for the account)
    rows: list[ActivityRow]  # its daily series (org-wide rows, or a key's own)
    detail: list[ActivityRow]  # its key x model rows, for explanations ([] when unknown)


def _matches_key(rule: AlertRule, key_hash: str, name: str) -> bool:
    return rule.key is None or rule.key in (key_hash, name)


def _matches_workspace(rule: AlertRule, workspace_id: str, data: Inputs) -> bool:
    if rule.workspace is None:
        return True
    space = data.workspaces.get(workspace_id)
    names = {workspace_id, space.name, space.slug} if space else {workspace_id}
    return rule.workspace in names - {""}


def scoped(rule: AlertRule, data: Inputs) -> list[Scoped]:
    """The subjects of a rule with `per`: the account, each key or each model (or just the
    one key or model the rule names)."""
    if rule.per == "account":
        return [Scoped("account", "", data.rows, data.key_rows)]
    if rule.per == "key":
        by_key: dict[str, list[ActivityRow]] = {}
        for r in data.key_rows:
            by_key.setdefault(r.key_hash, []).append(r)
        return [Scoped(h, data.key_name(h), rows, rows) for h, rows in sorted(by_key.items())
                if _matches_key(rule, h, data.key_name(h))]
    if rule.per == "workspace":
        by_space: dict[str, list[ActivityRow]] = {}
        for r in data.key_rows:
            by_space.setdefault(data.workspace_of(r.key_hash), []).append(r)
        return [Scoped(w, data.workspace_name(w), rows, rows)
                for w, rows in sorted(by_space.items()) if _matches_workspace(rule, w, data)]
    by_model: dict[str, list[ActivityRow]] = {}
    for r in data.rows:
        if rule.model is None or r.model == rule.model:
            by_model.setdefault(r.model, []).append(r)
    detail: dict[str, list[ActivityRow]] = {}
    for r in data.key_rows:
        detail.setdefault(r.model, []).append(r)
    return [Scoped(m, m, rows, detail.get(m, [])) for m, rows in sorted(by_model.items())]


def why(scope: Scoped, data: Inputs, days: list[dt.date], baseline: list[dt.date]
        ) -> Explanation:
    """The subject's spend on `days` explained against its average over `baseline` days: by
    key x model from per-key history, else by model from the org-wide rows."""
    rows, by_key = (scope.detail, True) if scope.detail else (scope.rows, False)
    now = [r for r in rows if r.date in set(days)]
    before = [r for r in rows if r.date in set(baseline)]
    return explain(now, before, data.names, days=len(days), baseline_days=len(baseline),
                   by_key=by_key)


def spike(rule: AlertRule, data: Inputs, margin: Decimal) -> list[Observation]:
    """The latest day's cost above `factor` x its usual (the median of the same weekday in the
    4 weeks before, or with `baseline: 7d` the trailing 7-day average) and above `min_usd`;
    for the account, each key or each model."""
    out = []
    factor = rule.factor or ZERO
    day = data.day
    if rule.baseline == "weekday":
        baseline_days = [day - DAY * 7 * i for i in range(1, forecast.WEEKS + 1)]
    else:
        baseline_days = [day - DAY * i for i in range(1, 8)]
    for scope in scoped(rule, data):
        daily = daily_costs(scope.rows)
        on_day = daily.get(day, ZERO)
        if rule.baseline == "weekday":
            usual = forecast.weekday_median(daily, day)
        else:
            usual = sum((daily.get(d, ZERO) for d in baseline_days), ZERO) / 7
        line, floor = factor * usual, rule.min_usd
        firing = on_day > line and on_day > floor
        clear = on_day <= line * (1 - margin) or on_day <= floor * (1 - margin)
        if scope.subject != "account" and not (on_day or usual):
            continue  # a key or model idle on both: nothing to watch
        out.append(
            Observation(
                rule, scope.subject, on_day, line, firing, clear, name=scope.name,
                facts={"day": day, "average": usual, "factor": factor, "min_usd": floor,
                       "baseline": rule.baseline, "change": aggregate.change(on_day, usual)},
                why=why(scope, data, [day], baseline_days) if firing else None,
            )
        )
    return out


def key_limit(rule: AlertRule, data: Inputs, margin: Decimal) -> list[Observation]:
    """Per key with a limit: the percentage of it left, below `below_percent`; with
    `forecast`, whether it runs out before the limit resets (within 7 days for a limit that
    never resets) at the key's pace."""
    out = []
    limit = rule.below_percent
    daily_usage = _key_daily_usage(data.key_rows)
    for key in data.keys:
        if key.disabled or key.limit is None or key.limit <= 0:
            continue
        if not _matches_key(rule, key.hash, key.display_name):
            continue
        left = key.limit_remaining if key.limit_remaining is not None else key.limit
        facts = {"left": left, "limit": key.limit, "limit_reset": key.limit_reset}
        if limit is not None:
            percent = left / key.limit * HUNDRED
            out.append(Observation(rule, key.hash, percent, limit, *below(percent, limit, margin),
                                   name=key.display_name, facts=facts))
        if rule.forecast:
            proj = _limit_projection(key, left, daily_usage.get(key.hash, {}), data)
            if proj is None:
                continue
            out.append(Observation(
                rule, f"{key.hash} forecast", proj.total, key.limit, proj.over,
                proj.total <= key.limit * (1 - margin), name=key.display_name,
                aspect="forecast",
                facts={**facts, "projection": proj, "crossing": proj.crossing,
                       "key_hash": key.hash, "already_over": proj.spent >= key.limit},
            ))
    return out


_RESETS: dict[str, PeriodKind] = {"daily": "day", "weekly": "week", "monthly": "month"}
LIFETIME_HORIZON = 7  # days a limit that never resets is forecast over


def _key_daily_usage(rows: list[ActivityRow]) -> dict[str, dict[dt.date, Decimal]]:
    """Key hash -> OpenRouter usage (credits, what a key's limit counts) per UTC day."""
    out: dict[str, dict[dt.date, Decimal]] = {}
    for r in rows:
        days = out.setdefault(r.key_hash, {})
        days[r.date] = days.get(r.date, ZERO) + r.usage
    return out


def _limit_projection(
    key: ApiKey, left: Decimal, daily: dict[dt.date, Decimal], data: Inputs
) -> forecast.Projection | None:
    assert key.limit is not None
    today = data.today
    period = _RESETS.get((key.limit_reset or "").lower())
    end = span_of(period, today).end if period else today + DAY * (LIFETIME_HORIZON - 1)
    used = key.limit - left
    if not daily:
        return None  # no history of the key's own: no pace to project
    pace = forecast.level(daily, data.day)
    weights = forecast.weekday_weights(daily, data.day)
    proj = forecast.project(used, limit=key.limit, first=today,
                            first_done=forecast.day_fraction(data.as_of), end=end, pace=pace,
                            weights=weights)
    if used >= key.limit and period:  # used up: the day it was reached in this period
        crossed = forecast.first_over(daily, span_of(period, today).start, today - DAY,
                                      key.limit, reach=True)
        proj = replace(proj, crossing=crossed or proj.crossing)
    return proj


# --- budgets ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Spent:
    """What a budget's subject spent in the period so far and how far that is known."""

    scope: Scoped
    spent: Decimal
    first: dt.date  # the first day not (fully) counted in `spent`
    first_done: Decimal  # the part of `first` counted (0..1)


_KEY_PERIOD = {"day": "daily", "week": "weekly", "month": "monthly"}


def _budget_spent(rule: AlertRule, data: Inputs, span: Span) -> list[_Spent]:
    today, fraction = data.today, forecast.day_fraction(data.as_of)
    before = today - DAY
    out = []
    if rule.per == "key":
        keys = {k.hash: k for k in data.keys}
        scopes = {s.subject: s for s in scoped(rule, data)}
        for k in sorted(keys.values(), key=lambda k: k.hash):
            if not _matches_key(rule, k.hash, k.display_name) or k.disabled:
                continue
            suffix = _KEY_PERIOD[span.kind]
            spent = getattr(k, f"usage_{suffix}") + getattr(k, f"byok_usage_{suffix}")
            scope = scopes.get(k.hash, Scoped(k.hash, k.display_name, [], []))
            out.append(_Spent(scope, spent, today, fraction))
        return out
    if rule.per == "workspace":  # its keys' own counters, disabled keys' spend included
        suffix = _KEY_PERIOD[span.kind]
        totals: dict[str, Decimal] = {}
        for k in data.keys:
            w = k.workspace_id or data.workspace_of(k.hash)
            spent = getattr(k, f"usage_{suffix}") + getattr(k, f"byok_usage_{suffix}")
            totals[w] = totals.get(w, ZERO) + spent
        scopes = {s.subject: s for s in scoped(rule, data)}
        for w in sorted(totals):
            if _matches_workspace(rule, w, data):
                scope = scopes.get(w, Scoped(w, data.workspace_name(w), [], []))
                out.append(_Spent(scope, totals[w], today, fraction))
        return out
    for scope in scoped(rule, data):
        spent = aggregate.totals(aggregate.in_range(scope.rows, span.start, before)).cost
        if rule.per == "account" and data.keys:
            so_far = today_so_far(data.keys)
            assert so_far is not None
            out.append(_Spent(scope, spent + so_far.cost, today, fraction))
        else:  # a model's spend today is not known before the day is over
            out.append(_Spent(scope, spent, today, ZERO))
    return out


def budget(rule: AlertRule, data: Inputs, margin: Decimal) -> list[Observation]:
    """Spend in the current `period` against `amount_usd`: a notice at each `notify_at`
    percentage (once per period), and with `forecast` an alert while the projected spend at
    the period's end is over the budget, naming the day it is crossed."""
    amount = rule.amount_usd or ZERO
    span = span_of(rule.period, data.today)
    out = []
    for s in _budget_spent(rule, data, span):
        who = s.scope.subject
        percent = s.spent / amount * HUNDRED if amount > 0 else ZERO
        facts: dict[str, Any] = {"spent": s.spent, "amount": amount, "span": span,
                                 "percent": percent, "known_through": s.first - DAY
                                 if s.first_done == 0 else None}
        reached = [p for p in rule.notify_at if percent >= p]
        for p in rule.notify_at:
            out.append(Observation(
                rule, f"{who} {span.key} {percent_label(p)}", percent, p, percent >= p, False,
                name=s.scope.name, aspect="notify", once=True,
                quiet=bool(reached) and p < max(reached), facts=facts,
            ))
        if not rule.forecast:
            continue
        daily = daily_costs(s.scope.rows)
        history = any(daily.get(data.day - DAY * i) for i in range(forecast.WEEKS * 7))
        if history:
            pace = forecast.level(daily, data.day)
            weights = forecast.weekday_weights(daily, data.day)
        else:  # no history: the period's own pace so far, flat across weekdays
            elapsed = Decimal((s.first - span.start).days) + s.first_done
            if elapsed < 1:
                continue  # under a day of data: too little to project
            pace, weights = s.spent / elapsed, (Decimal(1),) * 7
        proj = forecast.project(s.spent, limit=amount, first=s.first, first_done=s.first_done,
                                end=span.end, pace=pace, weights=weights)
        if s.spent > amount:  # already over: the day it crossed, from history when known
            crossed = forecast.first_over(daily, span.start, s.first - DAY, amount)
            proj = replace(proj, crossing=crossed or proj.crossing)
        out.append(Observation(
            rule, f"{who} {span.key} forecast", proj.total, amount, proj.over,
            proj.total <= amount * (1 - margin), name=s.scope.name, aspect="forecast",
            facts={**facts, "projection": proj, "crossing": proj.crossing,
                   "already_over": s.spent > amount},
        ))
    return out


# --- burn rate -------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Measured:
    """One subject's burn, from minute data or from samples of keys' usage."""

    subject: str
    rate: Rate
    run: Run | None
    usual: Decimal | None  # usual spend in this clock hour; None: not known (yet)
    behind: list[str]  # models of a key or the account, keys of a model
    behind_day: dt.date | None  # the day `behind` is from; None: the window itself
    run_open: bool = False  # the run began before the data reaches back


def _from_minutes(rule: AlertRule, data: Inputs, recent: Recent) -> list[_Measured]:
    burns = minute_burns(recent, rule.per, data.as_of, rule.window)
    usual = recent.usual.get(rule.per, {}) if recent.usual is not None else None
    if rule.per == "key":
        subjects = sorted({k.hash for k in data.keys} | set(burns))
        subjects = [h for h in subjects if _matches_key(rule, h, data.key_name(h))]
    elif rule.per == "model":
        subjects = sorted(m for m in burns if rule.model is None or m == rule.model)
    else:
        subjects = [ACCOUNT]
    out = []
    for subject in subjects:
        burn = burns.get(subject)
        if burn is None:  # nothing spent in the data: a rate of 0 over the window
            start = max(data.as_of - rule.window, recent.start)
            burn = Burn(Rate(ZERO, start, data.as_of,
                             Decimal((data.as_of - start).total_seconds())), None, [])
        out.append(_Measured(
            subject, burn.rate, burn.run,
            None if usual is None or rule.factor is None else usual.get(subject, ZERO),
            burn.behind, None, burn.run_open))
    return out


def _from_samples(rule: AlertRule, data: Inputs, state: BurnState) -> list[_Measured]:
    if rule.per == "key":
        subjects = [h for h in state.subjects() if _matches_key(rule, h, data.key_name(h))]
    else:
        subjects = [ACCOUNT]
    models = _latest_models(data)
    out = []
    for subject in subjects:
        rate = state.rate(subject, data.as_of, rule.window)
        if rate is None:
            continue
        if subject != ACCOUNT and not (rate.spent or subject in state.runs):
            continue  # an idle key: nothing to say about it
        usual = state.usual(subject, data.as_of) if rule.factor is not None else None
        out.append(_Measured(subject, rate, state.runs.get(subject), usual,
                             models.get(subject, []), data.day))
    return out


def burn_rate(rule: AlertRule, data: Inputs, margin: Decimal) -> list[Observation]:
    """Spend per hour over the last `window`, for the account, each key (`per: key`) or each
    model (`per: model`, minute data only): above `above_usd_per_hour` and/or above `factor` x
    the usual spend of that hour of the week (both must hold when both are set; `factor`
    waits for 3 weeks of history). From the analytics API's minute buckets where it answers,
    else from the change of keys' usage between checks."""
    if data.recent is not None:
        measured = _from_minutes(rule, data, data.recent)
    elif data.burn is not None and rule.per != "model":
        measured = _from_samples(rule, data, data.burn)
    else:  # per model needs minute data
        return []
    keys = {k.hash: k for k in data.keys}
    hours_left = Decimal((_next_midnight(data.as_of) - data.as_of).total_seconds()) / 3600
    out = []
    for m in measured:
        per_hour = m.rate.per_hour
        lines = [rule.above_usd_per_hour] if rule.above_usd_per_hour is not None else []
        if rule.factor is not None and m.usual is not None:
            lines.append(rule.factor * m.usual)
        if lines:
            firing = per_hour > max(lines) and m.rate.spent > rule.min_usd
            clear = per_hour <= min(lines) * (1 - margin) or m.rate.spent <= rule.min_usd
        else:  # only `factor`, and not enough history yet
            firing, clear = False, True
        key = keys.get(m.subject) if rule.per == "key" else None
        if rule.per == "model":
            today = None  # a model's spend today is not known before the day is over
        elif key is not None:
            today = key.usage_daily + key.byok_usage_daily
        else:
            today = sum((k.usage_daily + k.byok_usage_daily for k in data.keys), ZERO)
        name = {"account": "", "key": data.key_name(m.subject)}.get(rule.per, m.subject)
        out.append(Observation(
            rule, m.subject, per_hour, max(lines) if lines else None, firing, clear,
            name=name,
            facts={
                "window": rule.window, "spent": m.rate.spent, "start": m.rate.start,
                "end": m.rate.end, "measured": m.rate.end - m.rate.start,
                "usual": m.usual, "factor": rule.factor, "floor": rule.above_usd_per_hour,
                "since": m.run.since if m.run else None,
                "run_spent": m.run.spent if m.run else ZERO, "run_open": m.run_open,
                "today": today,
                "day_if_it_goes_on": (today or ZERO) + per_hour * hours_left,
                "rest_of_day": per_hour * hours_left,
                "limit": key.limit if key else None,
                "limit_left": key.limit_remaining if key else None,
                "models": m.behind if rule.per != "model" else [],
                "keys": [data.key_name(h) for h in m.behind] if rule.per == "model" else [],
                "models_day": m.behind_day,
                "minute_data": data.recent is not None,
                "key_hash": m.subject if key else "",
            },
            why=_burn_why(rule, data) if firing and rule.per == "account" else None,
        ))
    return out


def _next_midnight(now: dt.datetime) -> dt.datetime:
    utc = now.astimezone(dt.UTC)
    return dt.datetime.combine(utc.date() + DAY, dt.time(), dt.UTC)


def _latest_models(data: Inputs) -> dict[str, list[str]]:
    """Key hash (and "account") -> the models it spent on on the latest complete day, most
    spent first (what is behind a burn when there is no minute data)."""
    spent: dict[str, dict[str, Decimal]] = {}
    for r in data.key_rows:
        if r.date == data.day and r.cost > 0:
            for who in (r.key_hash, ACCOUNT):
                models = spent.setdefault(who, {})
                models[r.model] = models.get(r.model, ZERO) + r.cost
    return {who: sorted(m, key=lambda name: (-m[name], name)) for who, m in spent.items()}


def _burn_why(rule: AlertRule, data: Inputs) -> Explanation:
    """The keys behind the account's burn: their spend in the window against their usual
    spend in as long (counts unknown: neither key usage nor the minute buckets we ask for
    carry requests or tokens); without a usual, their spend alone."""
    spent: dict[str, tuple[Rate, Decimal | None]] = {}
    if data.recent is not None:
        by_key = data.recent.usual.get("key", {}) if data.recent.usual is not None else None
        for h, burn in minute_burns(data.recent, "key", data.as_of, rule.window).items():
            spent[h] = (burn.rate, by_key.get(h, ZERO) if by_key is not None else None)
    elif data.burn is not None:
        for h in data.burn.subjects():
            rate = data.burn.rate(h, data.as_of, rule.window)
            if rate is not None:
                spent[h] = (rate, data.burn.usual(h, data.as_of))
    contributors = []
    known = all(u is not None for _, u in spent.values())
    for h, (r, usual) in spent.items():
        if r.spent <= 0:
            continue
        usual_spent = usual * r.seconds / 3600 if usual is not None else ZERO
        contributors.append(Contributor(h, data.key_name(h), "", r.spent, usual_spent,
                                        ZERO, ZERO, ZERO, ZERO))
    contributors.sort(key=lambda c: (-c.delta, c.key))
    rising = [c for c in contributors if c.delta > 0]
    return Explanation(
        cost=sum((c.cost for c in contributors), ZERO),
        usual=sum((c.usual for c in contributors), ZERO),
        requests=ZERO, usual_requests=ZERO, tokens=ZERO, usual_tokens=ZERO,
        volume_effect=ZERO, price_effect=ZERO, contributors=rising[:3],
        more=max(len(rising) - 3, 0), counts=False, usual_known=known,
    )


def percent_label(percent: Decimal) -> str:
    """`50%`: a budget notice's part of its subject."""
    return f"{percent.normalize():f}%"


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
    "budget": budget,
    "burn_rate": burn_rate,
}


def evaluate(rule: AlertRule, data: Inputs, margin: Decimal) -> list[Observation]:
    """Observations of one rule; `margin` is the hysteresis as a fraction (0.05)."""
    return RULES[rule.kind](rule, data, margin)


def gone(rule: AlertRule, subject: str, name: str) -> Observation:
    """A firing subject that is no longer observed (model unused, key removed) has cleared.
    A budget's alerts end with their period: quietly, as the new period starts clean."""
    return Observation(rule, subject, None, None, firing=False, clear=True, name=name, gone=True,
                       quiet=rule.kind == "budget")


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
    if obs.once:  # a notice: said once, kept until its period ends
        return replace(state, value=value), None
    if now - state.last_notified_at >= repeat_every:
        return replace(state, value=value, last_notified_at=now), "repeat"
    return replace(state, value=value), None
