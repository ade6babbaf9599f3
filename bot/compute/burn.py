"""Burn rates from key usage: what each key spent between checks, over a window, per hour.

Each check records a :class:`Sample` of every key's spend so far today (``usage_daily`` plus
``byok_usage_daily``). The spend between two samples is their difference on the same UTC day;
across midnight the counters restart, so the later sample's figure is the spend since midnight
and the interval counts from midnight (what was spent between the earlier sample and midnight
is not known and not guessed). From the samples :func:`rate` gives a subject's spend over the
last `window` and its rate per hour; :class:`BurnState` also keeps each subject's current *run*
(since when it has been spending, and how much) and its spend per clock hour over the last
4 weeks with the hours it was watched, so :meth:`BurnState.usual` can give the usual spend for
the same hour of the week (the median of 4 weeks; None until it was watched in at least 3).

Where the analytics API answers, a :class:`Recent` holds each key's spend per model and minute
over the last window instead, and the usual from the same hours of the last 4 weeks by hour:
:func:`minute_burns` gives each subject's rate from it, per model too. The samples are kept
either way (the fallback needs a previous one).
Pure numbers; the state is stored as JSON by the alerts job.
"""

from __future__ import annotations

import datetime as dt
import json
import statistics
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from bot.models import ZERO, ApiKey, SpendBucket

ACCOUNT = "account"
HOUR = dt.timedelta(hours=1)
MINUTE = dt.timedelta(minutes=1)
WEEK = dt.timedelta(days=7)
HISTORY = dt.timedelta(days=29)  # hourly spend kept: 4 weeks and a day
RUN_GAP = dt.timedelta(minutes=15)  # a run of spending ends after this long without spend
USUAL_WEEKS = 4
USUAL_MIN_WEEKS = 3  # the same hour watched in at least this many of the 4 weeks


@dataclass(frozen=True)
class Sample:
    """Every key's spend so far today at `at`."""

    at: dt.datetime
    costs: dict[str, Decimal]

    @classmethod
    def of(cls, keys: list[ApiKey], at: dt.datetime) -> Sample:
        return cls(at, {k.hash: k.usage_daily + k.byok_usage_daily for k in keys})


@dataclass(frozen=True)
class Interval:
    """Spend per key between two samples, over `start`..`end`."""

    start: dt.datetime
    end: dt.datetime
    spend: dict[str, Decimal]

    @property
    def total(self) -> Decimal:
        return sum(self.spend.values(), ZERO)

    def of(self, subject: str) -> Decimal:
        return self.total if subject == ACCOUNT else self.spend.get(subject, ZERO)


def _midnight(when: dt.datetime) -> dt.datetime:
    return when.astimezone(dt.UTC).replace(hour=0, minute=0, second=0, microsecond=0)


def between(a: Sample, b: Sample) -> Interval:
    """The spend between samples `a` and `b` (b later); across a UTC midnight, the spend since
    midnight. A counter that went down on the same day (a correction) counts as nothing."""
    if _midnight(a.at) != _midnight(b.at):
        return Interval(_midnight(b.at), b.at, {h: c for h, c in b.costs.items() if c > 0})
    spend = {}
    for h, c in b.costs.items():
        delta = c - a.costs.get(h, ZERO)
        if delta > 0:
            spend[h] = delta
    return Interval(a.at, b.at, spend)


@dataclass(frozen=True)
class Run:
    """A subject spending without a pause: since when, how much, and when it last spent."""

    since: dt.datetime
    spent: Decimal
    last: dt.datetime


@dataclass(frozen=True)
class Rate:
    """A subject's spend over a window of samples."""

    spent: Decimal
    start: dt.datetime
    end: dt.datetime
    seconds: Decimal  # the part of start..end that samples cover (a midnight leaves a gap)

    @property
    def per_hour(self) -> Decimal:
        return self.spent * 3600 / self.seconds if self.seconds > 0 else ZERO


def _hour(when: dt.datetime) -> dt.datetime:
    return when.astimezone(dt.UTC).replace(minute=0, second=0, microsecond=0)


@dataclass
class BurnState:
    """Samples of the last window, runs, and spend per clock hour over 4 weeks."""

    samples: list[Sample] = field(default_factory=list)
    runs: dict[str, Run] = field(default_factory=dict)
    hours: dict[str, dict[dt.datetime, Decimal]] = field(default_factory=dict)
    watched: set[dt.datetime] = field(default_factory=set)  # hours that samples covered

    def intervals(self) -> list[Interval]:
        return [between(a, b) for a, b in zip(self.samples, self.samples[1:], strict=False)]

    def advance(self, sample: Sample, keep: dt.timedelta) -> None:
        """Add a check's sample: extend runs and hourly spend, forget what is too old (keeping
        samples for `keep` back, and the one before, the base of the window)."""
        if self.samples and sample.at <= self.samples[-1].at:
            return  # an older or repeated check adds nothing
        if self.samples:
            self._count(between(self.samples[-1], sample))
        self.samples.append(sample)
        base = [s for s in self.samples if s.at <= sample.at - keep]
        if base:
            self.samples = self.samples[self.samples.index(base[-1]):]
        oldest = _hour(sample.at - HISTORY)
        self.watched = {h for h in self.watched if h >= oldest}
        for subject in list(self.hours):
            kept = {h: c for h, c in self.hours[subject].items() if h >= oldest}
            if kept:
                self.hours[subject] = kept
            else:
                del self.hours[subject]
        for subject, run in list(self.runs.items()):
            if sample.at - run.last > RUN_GAP:
                del self.runs[subject]

    def _count(self, iv: Interval) -> None:
        seconds = Decimal((iv.end - iv.start).total_seconds())
        if seconds <= 0:
            return
        for subject in (ACCOUNT, *iv.spend):
            spent = iv.of(subject)
            if spent <= 0:
                continue
            run = self.runs.get(subject)
            if run is None or iv.start - run.last > RUN_GAP:
                run = Run(iv.start, ZERO, iv.start)
            self.runs[subject] = Run(run.since, run.spent + spent, iv.end)
        hour = _hour(iv.start)
        while hour < iv.end:
            part_start, part_end = max(hour, iv.start), min(hour + HOUR, iv.end)
            share = Decimal((part_end - part_start).total_seconds()) / seconds
            self.watched.add(hour)
            for subject in (ACCOUNT, *iv.spend):
                spent = iv.of(subject) * share
                if spent > 0:
                    bucket = self.hours.setdefault(subject, {})
                    bucket[hour] = bucket.get(hour, ZERO) + spent
            hour += HOUR

    def rate(self, subject: str, now: dt.datetime, window: dt.timedelta) -> Rate | None:
        """`subject`'s spend over the last `window`, or since its run of spending began when
        that is later (idle time before a runaway does not dilute its rate): from the latest
        sample at or before that start, else the oldest. None before there are two samples."""
        if len(self.samples) < 2:
            return None
        start = now - window
        run = self.runs.get(subject)
        if run is not None and run.since > start:
            start = run.since
        older = [i for i, s in enumerate(self.samples) if s.at <= start]
        first = older[-1] if older else 0
        ivs = [between(a, b) for a, b in
               zip(self.samples[first:], self.samples[first + 1:], strict=False)]
        if not ivs:
            return None
        seconds = sum((Decimal((iv.end - iv.start).total_seconds()) for iv in ivs), ZERO)
        return Rate(sum((iv.of(subject) for iv in ivs), ZERO), self.samples[first].at,
                    self.samples[-1].at, seconds)

    def subjects(self) -> list[str]:
        """The keys of the latest sample."""
        return sorted(self.samples[-1].costs) if self.samples else []

    def usual(self, subject: str, now: dt.datetime) -> Decimal | None:
        """The median spend of the same clock hour of the week over the last 4 weeks, or None
        when fewer than 3 of those hours were watched."""
        this_hour = _hour(now)
        hours = [this_hour - WEEK * i for i in range(1, USUAL_WEEKS + 1)]
        seen = [self.hours.get(subject, {}).get(h, ZERO) for h in hours if h in self.watched]
        if len(seen) < USUAL_MIN_WEEKS:
            return None
        return Decimal(statistics.median(seen))

    # -- storage ---------------------------------------------------------------------------

    def to_json(self) -> str:
        return json.dumps({
            "samples": [{"at": s.at.isoformat(), "costs": {h: str(c) for h, c in s.costs.items()
                                                           if c}} for s in self.samples],
            "runs": {k: {"since": r.since.isoformat(), "spent": str(r.spent),
                         "last": r.last.isoformat()} for k, r in self.runs.items()},
            "hours": {k: {h.isoformat(): str(c) for h, c in v.items()}
                      for k, v in self.hours.items()},
            "watched": sorted(h.isoformat() for h in self.watched),
        }, sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | None) -> BurnState:
        if not text:
            return cls()
        doc: dict[str, Any] = json.loads(text)
        when = dt.datetime.fromisoformat
        return cls(
            samples=[Sample(when(s["at"]), {h: Decimal(c) for h, c in s["costs"].items()})
                     for s in doc.get("samples", [])],
            runs={k: Run(when(r["since"]), Decimal(r["spent"]), when(r["last"]))
                  for k, r in doc.get("runs", {}).items()},
            hours={k: {when(h): Decimal(c) for h, c in v.items()}
                   for k, v in doc.get("hours", {}).items()},
            watched={when(h) for h in doc.get("watched", [])},
        )


# -- from the analytics API's minute buckets -------------------------------------------------


@dataclass(frozen=True)
class Recent:
    """Spend by key x model per minute from `start` to `end` (the analytics API), and the
    usual spend of this clock hour of the week per subject: `usual[per][subject]`, the median
    of the same hour in the last 4 weeks (None while the history is shorter than 3 weeks)."""

    buckets: list[SpendBucket]
    start: dt.datetime
    end: dt.datetime
    usual: dict[str, dict[str, Decimal]] | None = None


def subject_of(per: str, bucket: SpendBucket) -> str:
    """Who a bucket's spend belongs to under `per`: the account, its key or its model."""
    if per == "key":
        return bucket.key_hash
    if per == "model":
        return bucket.model
    return ACCOUNT


@dataclass(frozen=True)
class Burn:
    """One subject's burn over a window: the rate, its current run of spending (None when
    it is not spending), and what is behind it (models of a key or of the account, keys of a
    model), most spent in the window first."""

    rate: Rate
    run: Run | None
    behind: list[str]
    run_open: bool = False  # the run began before the minute data fetched: it is older


def minute_burns(recent: Recent, per: str, now: dt.datetime, window: dt.timedelta
                 ) -> dict[str, Burn]:
    """Each subject's spend over the last `window` (or since its current run of spending
    began, when later: idle minutes before a runaway do not dilute it), per hour."""
    minutes: dict[str, dict[dt.datetime, Decimal]] = {}
    for b in recent.buckets:
        if b.cost and b.at < now:
            spent = minutes.setdefault(subject_of(per, b), {})
            spent[b.at] = spent.get(b.at, ZERO) + b.cost
    out = {}
    for subject, spent in minutes.items():
        run = _run(spent, now)
        start = max(now - window, recent.start)
        if run is not None and run.since > start:
            start = run.since
        in_window = [b for b in recent.buckets
                     if b.at >= start and b.at < now and subject_of(per, b) == subject]
        behind: dict[str, Decimal] = {}
        for b in in_window:
            who = b.key_hash if per == "model" else b.model
            behind[who] = behind.get(who, ZERO) + b.cost
        rate = Rate(sum((b.cost for b in in_window), ZERO), start, now,
                    Decimal((now - start).total_seconds()))
        out[subject] = Burn(rate, run, sorted((w for w in behind if behind[w] > 0),
                                              key=lambda w: (-behind[w], w)),
                            run_open=run is not None and run.since <= recent.start)
    return out


def _run(spent: dict[dt.datetime, Decimal], now: dt.datetime) -> Run | None:
    """The current run of spending minutes (gaps of at most RUN_GAP), None when the last
    spend is longer ago than that."""
    times = sorted(t for t, c in spent.items() if c > 0)
    if not times or now - (times[-1] + MINUTE) > RUN_GAP:
        return None
    first = len(times) - 1
    while first > 0 and times[first] - (times[first - 1] + MINUTE) <= RUN_GAP:
        first -= 1
    return Run(times[first], sum((spent[t] for t in times[first:]), ZERO), times[-1] + MINUTE)


def usual_hours(hours: list[list[SpendBucket]]) -> dict[str, dict[str, Decimal]]:
    """Per scope ("account", "key", "model") and subject, the median spend of the given clock
    hours (one list of buckets per hour; a subject without spend in an hour spent 0)."""
    out: dict[str, dict[str, Decimal]] = {}
    for per in ("account", "key", "model"):
        sums: list[dict[str, Decimal]] = []
        for buckets in hours:
            spent: dict[str, Decimal] = {ACCOUNT: ZERO} if per == "account" else {}
            for b in buckets:
                who = subject_of(per, b)
                spent[who] = spent.get(who, ZERO) + b.cost
            sums.append(spent)
        subjects = {s for hour in sums for s in hour}
        out[per] = {s: Decimal(statistics.median([hour.get(s, ZERO) for hour in sums]))
                    for s in subjects}
    return out


def same_hours(now: dt.datetime, weeks: int = USUAL_WEEKS) -> list[dt.datetime]:
    """The starts of this clock hour in each of the last `weeks` weeks, the latest first."""
    return [_hour(now) - WEEK * i for i in range(1, weeks + 1)]
