"""The `alerts` pipeline: fetch, evaluate every rule, step each alert, deliver what changed.

Order of writes, so a crash loses no alert: the notification goes into the outbox first,
then the alert's new state is saved. Slack repeats and the resolution go into the thread of
the first message (the resolution is also broadcast to the channel).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import socket
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from bot.compute import aggregate
from bot.compute.alert_rules import Action, Inputs, Observation, evaluate, gone, step
from bot.compute.burn import (
    USUAL_MIN_WEEKS,
    WEEK,
    BurnState,
    Recent,
    Sample,
    same_hours,
    usual_hours,
)
from bot.compute.silence import acknowledged, held, snoozed
from bot.config import MAX_BURN_WINDOW, AlertRule
from bot.deliver.outbox import Message, Outbox
from bot.errors import ApiError, BotError, ConfigError
from bot.jobs.send import Preview
from bot.models import (
    DAY,
    ActivityRow,
    AlertState,
    ApiKey,
    Destination,
    DestinationKind,
    Outcome,
    Silence,
    Status,
    key_labels,
)

if TYPE_CHECKING:
    from bot.app import App
    from bot.openrouter import OpenRouterClient
    from bot.render.messages import Renderer
    from bot.store import Store

log = logging.getLogger(__name__)

JOB = "alert"
# one alerts run at a time per database (cron and a daemon may overlap)
LEASE = "alerts"


@dataclass(frozen=True)
class Event:
    """A notification due for one alert."""

    action: Action
    obs: Observation
    state: AlertState

    @property
    def quiet(self) -> bool:
        """Told only to destinations that track an alert's lifecycle (PagerDuty, webhooks):
        a budget notice superseded by a higher one, the end of a budget's period."""
        return self.obs.quiet


@dataclass
class AlertsResult:
    """One evaluation: each notification with its outcomes (or, on a dry run, the messages
    it would send), and the earlier deliveries retried first."""

    events: list[tuple[Event, list[Outcome]]] = field(default_factory=list)
    previews: list[Preview] = field(default_factory=list)
    retried: list[Outcome] = field(default_factory=list)
    silenced: list[Silenced] = field(default_factory=list)  # acknowledged or snoozed in Slack

    @property
    def ok(self) -> bool:
        return all(o.ok for _, outcomes in self.events for o in outcomes)


@dataclass(frozen=True)
class Silenced:
    """An alert people acknowledged or snoozed from Slack, while that is in force."""

    rule_id: str
    subject: str
    name: str  # the key's name for a key alert, else the subject
    silence: Silence
    acknowledged: bool  # its current episode was acknowledged
    snoozed: bool


def silenced(store: Store, now: dt.datetime) -> list[Silenced]:
    states = {(s.rule_id, s.subject): s for s in store.alert_all()}
    names = store.key_names()
    out = []
    for (rule_id, subject), sil in store.silences().items():
        st = states.get((rule_id, subject))
        acked = st is not None and st.status == "firing" and acknowledged(sil, st.since)
        if acked or snoozed(sil, now):
            out.append(Silenced(rule_id, subject, names.get(subject, subject), sil, acked,
                                snoozed(sil, now)))
    return out


def _save(store: Store, state: AlertState, now: dt.datetime) -> None:
    store.alert_put(replace(state, updated_at=now))


def plan(
    rules: tuple[AlertRule, ...],
    data: Inputs,
    states: dict[tuple[str, str], AlertState],
    *,
    now: dt.datetime,
    repeat_every: dt.timedelta,
    margin: Decimal,
    silences: Mapping[tuple[str, str], Silence] | None = None,
) -> tuple[list[Event], list[AlertState]]:
    """Pure: the notifications due now and every alert's next state. Notifications people
    acknowledged or snoozed from Slack (`silences`) are held back: a held repeat keeps its
    last notification time, a held new alert fires once the snooze ends."""
    events: list[Event] = []
    next_states: list[AlertState] = []
    names = {k.hash: k.display_name for k in data.keys}
    for rule in rules:
        observed = {o.subject: o for o in evaluate(rule, data, margin)}
        for (rule_id, subject), st in states.items():
            if rule_id == rule.id and subject not in observed and st.status == "firing":
                observed[subject] = gone(rule, subject, names.get(subject, ""))
        for subject, obs in observed.items():
            before = states.get((rule.id, subject))
            after, action = step(before, obs, now, repeat_every)
            if after is None:
                continue
            since = before.since if before is not None else None
            if action and held((silences or {}).get((rule.id, subject)), action, since, now):
                if action == "fire" or before is None:
                    continue
                after, action = replace(after, last_notified_at=before.last_notified_at), None
            if action:
                events.append(Event(action, obs, after))
            if after != before:
                next_states.append(after)
    return events, next_states


# days of history the rules look at: 4 weeks of weekdays before the latest day, and the month
SPAN_DAYS = 35
# rules that read per-key history (explanations, per-key baselines and paces)
_PER_KEY_KINDS = ("spike", "budget", "key_limit", "burn_rate")


def gather_inputs(app: App, now: dt.datetime, *, save: bool = True) -> Inputs:
    """Fetch credits, keys and activity once (and keep them in history unless `save` is off);
    per key too, once a day, when a rule reads per-key history that lacks the latest day."""
    store = app.store() if save else app.existing_store()
    day = aggregate.latest_complete_day(now)
    with app.client() as client:
        snap = client.snapshot(now=now, credits=True, keys=True, per_key=False)
        if _needs_per_key(app.config.alerts.rules) and not _per_key_current(store, day):
            log.info("alerts: per-key history lacks %s; fetching activity per key", day)
            snap = client.snapshot(now=now, credits=True, keys=True, per_key=True)
        recent = _recent(app, client, store, snap.keys, now, save=save)
    if save:
        assert store is not None
        store.save_snapshot(snap)
    start = day - DAY * SPAN_DAYS
    first_fetched = aggregate.api_window(now)[0]
    rows = [r for r in snap.activity if r.date >= start]
    key_rows = [r for rows_ in snap.key_activity.values() for r in rows_ if r.date >= start]
    burn = _burn_state(app, store, snap.keys, now, save=save)
    known_keys, spaces = list(snap.keys), {w.id: w for w in snap.workspaces}
    if store is not None:
        rows = store.activity(start, first_fetched - DAY, "") + rows
        if not snap.key_activity:
            key_rows = store.key_model_rows(start, now.date())
        live = {k.hash for k in snap.keys}
        known_keys += [k for k in store.keys() if k.hash not in live]  # deleted keys too
        spaces = {**{w.id: w for w in store.workspaces()}, **spaces}
    # keys sharing a name show their workspace (the hash is the identity)
    names = key_labels(known_keys, {w.id: w.display_name for w in spaces.values()})
    if store is not None:
        names = {**store.key_names(), **names}  # and names of spend with no key listed
    if recent is not None and recent.usual is not None and not _weeks_of_history(rows, now):
        recent = replace(recent, usual=None)  # the usual waits for 3 weeks of history
    return Inputs(as_of=now, day=day, credits=snap.credits, keys=snap.keys, rows=rows,
                  key_rows=key_rows, names=names, burn=burn, workspaces=spaces,
                  key_workspaces={k.hash: k.workspace_id for k in known_keys}, recent=recent)


# minute data the burn rate asks for: its longest window, and at least this much to see how
# long a run of spending has lasted (the API gives minutes for windows up to 3 h)
RECENT_LOOKBACK = dt.timedelta(hours=1)
USUAL_META = "alerts.burn_usual"  # the usual spend of the current clock hour, asked once an hour


def _recent(app: App, client: OpenRouterClient, store: Store | None, keys: list[ApiKey],
            now: dt.datetime, *, save: bool) -> Recent | None:
    """Spend by key x model per minute from the analytics API for the burn-rate rules, with
    the usual spend of this clock hour (same hour, last 4 weeks, by hour) when a rule has a
    `factor`; None where the API does not answer (403/404) or fails: the rules then measure
    keys' usage between checks."""
    from bot.openrouter import AnalyticsUnavailable

    rules = [r for r in app.config.alerts.rules if r.kind == "burn_rate"]
    if not rules:
        return None
    span = min(max(max(r.window for r in rules), RECENT_LOOKBACK), MAX_BURN_WINDOW)
    start = (now - span).astimezone(dt.UTC).replace(second=0, microsecond=0)
    known = list(keys)
    if store is not None:  # deleted keys' names still map to their hashes
        live = {k.hash for k in keys}
        known += [k for k in store.keys() if k.hash not in live]
    try:
        buckets = client.key_model_spend(start, now, known, "minute")
        usual = _usual(client, store, known, now, save=save) \
            if any(r.factor is not None for r in rules) else None
    except AnalyticsUnavailable as exc:
        log.debug("burn_rate: no minute data from the analytics API (%s); measuring keys' "
                  "usage between checks", exc.reason.split(" ", 1)[0])
        return None
    except ApiError as exc:
        log.warning("burn_rate: minute data from the analytics API failed (%s); measuring "
                    "keys' usage between checks", exc)
        return None
    return Recent(buckets, start, now, usual)


def _usual(client: OpenRouterClient, store: Store | None, keys: list[ApiKey],
           now: dt.datetime, *, save: bool) -> dict[str, dict[str, Decimal]]:
    """The usual spend of this clock hour per scope and subject, asked once per clock hour
    (4 hourly queries) and kept in the database until the hour changes."""
    hours = same_hours(now)
    cached = store.get_meta(USUAL_META) if store is not None else None
    if cached:
        doc = json.loads(cached)
        if doc.get("hour") == hours[0].isoformat():
            return {per: {s: Decimal(v) for s, v in subjects.items()}
                    for per, subjects in doc["usual"].items()}
    usual = usual_hours([client.key_model_spend(h, h + dt.timedelta(hours=1), keys, "hour")
                         for h in hours])
    if save and store is not None:
        store.set_meta(USUAL_META, json.dumps(
            {"hour": hours[0].isoformat(),
             "usual": {per: {s: str(v) for s, v in subjects.items() if v}
                       for per, subjects in usual.items()}},
            sort_keys=True, separators=(",", ":")))
    return usual


def _weeks_of_history(rows: list[ActivityRow], now: dt.datetime) -> bool:
    """Whether spend history reaches back 3 weeks from this hour (the usual is a median of the
    same hour in 4 weeks: an account younger than 3 weeks has none yet)."""
    first = min((r.date for r in rows if r.cost > 0), default=None)
    return first is not None and first <= (now - WEEK * USUAL_MIN_WEEKS).date()


BURN_META = "alerts.burn_rate"


def _burn_state(app: App, store: Store | None, keys: list[ApiKey], now: dt.datetime, *,
                save: bool) -> BurnState | None:
    """The burn-rate samples with this check's added (stored again unless a dry run)."""
    windows = [r.window for r in app.config.alerts.rules if r.kind == "burn_rate"]
    if not windows:
        return None
    state = BurnState.from_json(store.get_meta(BURN_META) if store is not None else None)
    state.advance(Sample.of(keys, now), keep=max(windows))
    if save:
        assert store is not None
        store.set_meta(BURN_META, state.to_json())
    return state


def _needs_per_key(rules: tuple[AlertRule, ...]) -> bool:
    return any(r.kind in _PER_KEY_KINDS for r in rules)


def _per_key_current(store: Store | None, day: dt.date) -> bool:
    """Whether history holds per-key activity for `day` (a sync fetched it after it ended)."""
    return store is not None and bool(store.covered_key_days(day, day))


def destinations(app: App, rule: AlertRule) -> list[Destination]:
    """The rule's own destinations, else the alerts' (config validation ensures one)."""
    return list(rule.to or app.config.alerts.to)


def _stamp(when: dt.datetime) -> str:
    return when.astimezone(dt.UTC).strftime("%Y%m%dT%H%M%SZ")


def period(event: Event) -> str:
    """Idempotency period of one notification: the alert, its episode and the step, as JSON
    (rule and subject names are free text, so the parts are never joined by a separator)."""
    st = event.state
    parts = {"rule": st.rule_id, "subject": st.subject, "since": _stamp(st.since),
             "action": event.action, "at": _stamp(st.last_notified_at)}
    return json.dumps(parts, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def _period_parts(
    text: str, states: dict[tuple[str, str], AlertState]
) -> tuple[tuple[str, str], str, str] | None:
    """The alert (rule id, subject), episode start and action an alert delivery was for."""
    if text.startswith("{"):
        doc = json.loads(text)
        return (doc["rule"], doc["subject"]), doc["since"], doc["action"]
    # deliveries recorded by earlier versions: "rule|subject|since|action|at" (names may
    # contain "|", so the fixed-format fields are split off the right)
    alert, since, action, _ = text.rsplit("|", 3)
    for key in states:
        if f"{key[0]}|{key[1]}" == alert:
            return key, since, action
    return None


def render(renderer: Renderer, event: Event, dest: Destination,
           repeat_every: dt.timedelta, *, interactive: bool = False) -> Message:
    """The message for one destination; `interactive` adds the Acknowledge and Snooze buttons
    (Slack channels posted with the bot token, when the interactive bot runs)."""
    hours = repeat_every.total_seconds() / 3600
    ctx = {
        "interactive": interactive and dest.kind is DestinationKind.SLACK,
        "repeat_every": f"{hours:g}h" if hours < 48 else f"{hours / 24:g}d",
        "action": event.action,
        "obs": event.obs,
        "rule": event.obs.rule,
        "state": event.state,
        "as_of": event.state.last_notified_at,
    }
    if dest.kind is DestinationKind.EMAIL:
        return renderer.email("alert", **ctx)
    from bot.render import events
    from bot.render.messages import terminal_text

    if dest.kind in (DestinationKind.PAGERDUTY, DestinationKind.HOOK):
        build = events.pagerduty if dest.kind is DestinationKind.PAGERDUTY else events.webhook
        return build(event.action, event.obs, event.state, renderer.alert_words(event.obs),
                     event.state.last_notified_at)
    msg = renderer.slack("alert", **ctx)
    if dest.kind is DestinationKind.APPRISE:
        return events.apprise(event.action, renderer.alert_words(event.obs),
                              terminal_text(msg).text)
    return terminal_text(msg) if dest.kind is DestinationKind.STDOUT else msg


def run_alerts(app: App, *, dry_run: bool = False) -> AlertsResult:
    """Evaluate once and deliver what changed (on a dry run: render it, change nothing)."""
    if not app.config.alerts.rules:
        raise ConfigError("alerts.rules: no rules configured")
    now = app.now()
    if dry_run:
        return _evaluate_and_deliver(app, now, dry_run=True)
    store = app.store()
    holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    ttl = app.config.lease_ttl  # renewed by the heartbeat; a run that died frees it this soon
    if not store.lease_acquire(LEASE, holder, now, ttl):
        raise BotError("another alerts run is in progress (its lease is held); try again shortly")
    from bot.store.heartbeat import Heartbeat

    try:  # the lease is renewed while the run lasts, however long its deliveries take
        with Heartbeat(store, holder, app.now, every=ttl.total_seconds() / 3,
                       leases={LEASE: ttl}):
            return _evaluate_and_deliver(app, now, dry_run=False)
    finally:
        store.lease_release(LEASE, holder)


def _evaluate_and_deliver(app: App, now: dt.datetime, *, dry_run: bool) -> AlertsResult:
    from bot.render.messages import Renderer

    cfg = app.config.alerts
    result = AlertsResult()
    store = app.existing_store() if dry_run else app.store()
    if store is not None and not dry_run:
        outbox = Outbox(store, app.transports(), app.config.delivery_max_age)
        result.retried = outbox.flush(now, jobs=(JOB,))
        for outcome in result.retried:
            log.debug("retried alert delivery: %s", outcome.line())
        _record_threads(store, result.retried)
    data = gather_inputs(app, now, save=not dry_run)
    states = {(s.rule_id, s.subject): s for s in store.alert_all()} if store else {}
    events, next_states = plan(cfg.rules, data, states, now=now, repeat_every=cfg.repeat_every,
                               margin=cfg.hysteresis_percent / 100,
                               silences=store.silences() if store else {})
    renderer = Renderer(app.config.templates_dir)
    for event in events:
        outcomes: list[Outcome] = []
        messages = [(dest, render(renderer, event, dest, cfg.repeat_every,
                                  interactive=bool(app.config.slack.app_token)))
                    for dest in destinations(app, event.obs.rule)
                    if not (event.quiet and not dest.kind.tracks_lifecycle)]
        if dry_run:
            for dest, msg in messages:
                result.previews.append(
                    Preview(f"alert {event.action} {event.obs.rule.id}", "alert", dest, msg))
                outcomes.append(Outcome(destination=dest, status=Status.DRY_RUN))
            result.events.append((event, outcomes))
            continue
        assert store is not None
        # the messages and the state that says they are sent are written together, before
        # any is sent: a run cut off after this (a killed daemon) leaves them to the next run
        # to deliver, and that run sees the alert as notified (it never fires it again)
        with store.transaction():
            prepared = [outbox.prepare(JOB, period(event), dest, msg, now,
                                       options=_thread_options(event, dest))
                        for dest, msg in messages]
            _save(store, event.state, now)
        for ready in prepared:
            outcome = ready if isinstance(ready, Outcome) else outbox.attempt(ready, now)
            if event.action == "fire" and outcome.status is Status.SENT and outcome.ref:
                event.state.threads[str(outcome.destination)] = outcome.ref
            outcomes.append(outcome)
        if event.state.threads:  # the first messages' ts, for threading what follows
            _save(store, event.state, now)
        result.events.append((event, outcomes))
    if not dry_run:
        assert store is not None
        notified = {(e.state.rule_id, e.state.subject) for e in events}
        for st in next_states:
            if (st.rule_id, st.subject) not in notified:
                _save(store, st, now)
    if store is not None:
        result.silenced = silenced(store, now)
    return result


def _thread_options(event: Event, dest: Destination) -> dict[str, Any]:
    """Repeats and resolutions go into the first Slack message's thread."""
    thread = event.state.threads.get(str(dest))
    if event.action == "fire" or not thread or dest.kind is not DestinationKind.SLACK:
        return {}
    return {"thread_ts": thread, "reply_broadcast": event.action == "resolve"}


def _record_threads(store: Store, outcomes: list[Outcome]) -> None:
    """Remember the Slack ts of each alert's first message, for threading what follows."""
    states = {(s.rule_id, s.subject): s for s in store.alert_all()}
    for o in outcomes:
        if (o.job != JOB or o.status is not Status.SENT or not o.ref
                or o.destination.kind is not DestinationKind.SLACK):
            continue
        parts = _period_parts(o.period, states)
        if parts is None:
            continue
        key, since, action = parts
        st = states.get(key)
        if action != "fire" or st is None or st.status != "firing":
            continue
        if _stamp(st.since) == since:
            st.threads[str(o.destination)] = o.ref
            _save(store, st, st.last_notified_at)


def burn_readiness(app: App) -> str:
    """For `check`: where the burn-rate rules get their figures, and whether a `factor` has
    the 3 weeks of history its usual needs (nothing is written)."""
    from bot.openrouter import AnalyticsUnavailable

    rules = [r for r in app.config.alerts.rules if r.kind == "burn_rate"]
    now = app.now()
    store = app.existing_store()
    try:
        with app.client(max_attempts=2) as client:
            client.key_model_spend(now - dt.timedelta(minutes=15), now, [], "minute")
        minutes, why = True, ""
    except AnalyticsUnavailable as exc:
        minutes, why = False, exc.reason.split(" ", 1)[0]
    if minutes:
        source = "minute data from the analytics API"
    else:
        source = (f"keys' usage between checks (no minute data: analytics API {why})"
                  + ("; per: model rules need minute data and say nothing"
                     if any(r.per == "model" for r in rules) else ""))
    if not any(r.factor is not None for r in rules):
        return source
    if minutes:
        start = now.date() - DAY * SPAN_DAYS
        rows = store.activity(start, now.date(), "") if store is not None else []
        if _weeks_of_history(rows, now):
            first = min(r.date for r in rows if r.cost > 0)
            return f"{source}; factor: enough history (spend since {first} or before)"
        return (f"{source}; factor: not enough history yet (its usual needs 3 weeks of spend "
                "in history; run `openrouter-usage sync`): only above_usd_per_hour counts")
    state = BurnState.from_json(store.get_meta(BURN_META) if store is not None else None)
    hour = dt.timedelta(hours=1)
    known = sum(state.usual("account", now + hour * i) is not None for i in range(168))
    return (f"{source}; factor: the usual is known for {known} of the 168 hours of the week "
            "(each needs checks in that hour in 3 of the last 4 weeks)")
