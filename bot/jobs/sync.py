"""The `sync` pipeline: credits, keys (every workspace), activity (org-wide and per key, streamed
into history as it arrives), then a year of history from the analytics API.

History from the analytics API: on first use back to `history.backfill` (default 365 days),
afterwards only what is new plus the last two days (they still change); `sync --backfill 90d`
asks again on demand. Per UTC day it keeps spend by key x model, and by model x provider for the
last 31 days (the API splits by provider only over 31 days; older days keep the model alone,
with provider "unknown"). On the days /activity also covers,
/activity's figures are kept and the two are compared: a difference of a cent or more is
logged once, with its size. Without the analytics API (403/404) history is what /activity
gives, as before.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING

from bot.config import MAX_BACKFILL
from bot.errors import ApiError
from bot.models import DAY, SETTLE, ZERO, ActivityRow, ApiKey, Snapshot, placeholder_name

if TYPE_CHECKING:
    from bot.openrouter import OpenRouterClient
    from bot.store import Store, SyncStats

log = logging.getLogger(__name__)

FROM_META = "history.analytics_from"  # the first day the analytics API filled
TO_META = "history.analytics_to"  # the last day it filled
CENT = Decimal("0.01")
PROVIDER_DAYS = 31  # the analytics API splits by provider over at most 31 days

Progress = Callable[[int, int], None]


@dataclass
class Disagreement:
    """Where the analytics API and /activity differ by a cent or more on the days both cover."""

    days: set[dt.date] = field(default_factory=set)
    models: int = 0
    keys: int = 0
    largest: Decimal = Decimal(0)
    where: str = ""

    def note(self, difference: Decimal, where: str) -> None:
        if abs(difference) > abs(self.largest):
            self.largest, self.where = difference, where

    @property
    def any(self) -> bool:
        return bool(self.days or self.models or self.keys)


@dataclass
class HistoryFill:
    """What one sync asked of the analytics API."""

    ranges: list[tuple[dt.date, dt.date]] = field(default_factory=list)
    queries: int = 0
    rows: int = 0
    unavailable: str = ""  # why the analytics API could not be used ("" when it was)
    disagreement: Disagreement = field(default_factory=Disagreement)

    @property
    def days(self) -> int:
        return sum((b - a).days + 1 for a, b in self.ranges)

    def summary(self) -> str:
        if self.unavailable:
            return (f"History: analytics API not available ({self.unavailable}); history "
                    "starts with the 30 days /activity keeps.")
        if not self.ranges:
            return "History: up to date."
        first = min(a for a, _ in self.ranges)
        last = max(b for _, b in self.ranges)
        return (f"History: {self.days} days ({first} to {last}) from the analytics API, "
                f"{self.rows} rows kept in {self.queries} queries (where /activity covers a "
                "key's day, its figures are kept instead).")


@dataclass
class SyncResult:
    snapshot: Snapshot
    stats: SyncStats
    key_rows: int = 0  # per-key rows fetched (they went to history as they arrived)
    history: HistoryFill | None = None

    def summary(self) -> str:
        s = self.stats
        snap = self.snapshot
        spaces = f" in {len(snap.workspaces)} workspaces" if snap.workspaces else ""
        text = (
            f"Synced as of {snap.as_of:%Y-%m-%d %H:%M} UTC: "
            f"{len(snap.activity)} org rows and {self.key_rows} per-key rows fetched "
            f"({s.activity_new} new, {s.activity_updated} updated), "
            f"{len(snap.keys)} keys{spaces}, credits "
            f"{'recorded' if s.credits_new else 'unchanged'}."
        )
        return text if self.history is None else f"{text} {self.history.summary()}"


def run_sync(
    client: OpenRouterClient,
    store: Store,
    *,
    now: dt.datetime,
    backfill: dt.timedelta = MAX_BACKFILL,
    refill: dt.timedelta | None = None,
    progress: Progress | None = None,
    history_progress: Progress | None = None,
) -> SyncResult:
    """One sync. `backfill` is how far back history should reach (filled once, then kept
    up to date); `refill` asks the analytics API again for that many days back, whatever
    history holds (`sync --backfill`)."""
    from bot.store import activity_window

    client.check_key()  # before anything is fetched or stored
    first, last = activity_window(now)
    batch = store.usage_batch(now)
    fetched = 0

    def keep(key: ApiKey, rows: list[ActivityRow]) -> None:
        nonlocal fetched
        fetched += len(rows)
        batch.key_activity(key.hash, rows, first, last)

    snap = client.snapshot(
        now=now, credits=True, keys=True, per_key=True, progress=progress, on_key_rows=keep
    )
    batch.flush()
    stats = store.save_snapshot(snap)
    stats.add(batch.stats)
    history = fill_history(client, store, snap.keys, now=now, backfill=backfill, refill=refill,
                           progress=history_progress)
    store.refresh_key_months()
    return SyncResult(snap, stats, fetched, history)


def history_ranges(
    today: dt.date,
    latest: dt.date,
    held: tuple[dt.date, dt.date] | None,
    backfill: dt.timedelta,
    refill: dt.timedelta | None = None,
) -> list[tuple[dt.date, dt.date]]:
    """The day ranges to ask the analytics API for, newest first: everything back to
    `backfill` the first time; then what is new plus the last two days held, and any older
    days a longer `backfill` now wants; with `refill`, that many days again."""
    oldest = today - MAX_BACKFILL
    if refill is not None:
        start = max(oldest, today - refill)
        return [(start, latest)] if start <= latest else []
    want = max(oldest, today - backfill)
    if held is None:
        return [(want, latest)] if want <= latest else []
    held_from, held_to = held
    ranges = []
    top = max(want, min(held_to, latest) - DAY)
    if top <= latest:
        ranges.append((top, latest))
    if want < held_from:
        ranges.append((want, min(held_from - DAY, top - DAY)))
    return [(a, b) for a, b in ranges if a <= b]


def fill_history(
    client: OpenRouterClient,
    store: Store,
    live_keys: Sequence[ApiKey],
    *,
    now: dt.datetime,
    backfill: dt.timedelta = MAX_BACKFILL,
    refill: dt.timedelta | None = None,
    progress: Progress | None = None,
) -> HistoryFill:
    """Fill history from the analytics API (see the module docstring)."""
    from bot.openrouter import AnalyticsUnavailable
    from bot.store import SOURCE_ACTIVITY, activity_window

    utc = now.astimezone(dt.UTC)
    latest = (utc - SETTLE).date() - DAY
    held_from, held_to = store.get_meta(FROM_META), store.get_meta(TO_META)
    held = None
    if held_from and held_to:
        held = (dt.date.fromisoformat(held_from), dt.date.fromisoformat(held_to))
    fill = HistoryFill(ranges=history_ranges(utc.date(), latest, held, backfill, refill))
    if not fill.ranges:
        return fill
    # names map back to hashes through every key we know, deleted ones included
    stored = store.keys()  # read once: a large org's keys take megabytes
    names = store.key_names(stored)
    keys = {k.hash: k for k in stored}
    del stored
    keys.update({k.hash: k for k in live_keys})
    overlap = activity_window(now)
    batch = store.usage_batch(now)
    both = fill.disagreement

    def remember(first: dt.date, last: dt.date) -> None:
        old_from, old_to = store.get_meta(FROM_META), store.get_meta(TO_META)
        store.set_meta(FROM_META, min(first.isoformat(), old_from or "9999"))
        store.set_meta(TO_META, max(last.isoformat(), old_to or ""))

    compare = _Comparison(store, overlap, names, both, SOURCE_ACTIVITY)

    def keep_rows(first: dt.date, last: dt.date, rows: list[ActivityRow]) -> None:
        compare.add(rows)
        fill.rows += batch.analytics(rows)

    def window_done(first: dt.date, last: dt.date) -> None:
        compare.check(first, last)
        batch.flush()
        remember(first, last)

    try:
        for start, end in fill.ranges:
            log.debug("analytics: filling %s..%s", start, end)
            fill.queries += client.key_model_days(start, end, list(keys.values()), keep_rows,
                                                  progress, on_window=window_done)
            fill.queries += _org_days(client, store, start, end, now)
    except AnalyticsUnavailable as exc:
        fill.unavailable = exc.reason.split(" ", 1)[0]
        log.info("analytics API not available (%s); history starts with the 30 days "
                 "/activity keeps", fill.unavailable)
        fill.ranges = []
        return fill
    if both.any:
        log.warning(
            "analytics API and /activity differ by up to $%s (%s) on %d day(s), %d model-day(s) "
            "and %d key-day(s) of the days both cover; keeping /activity's figures for them",
            _cents(both.largest), both.where, len(both.days), both.models, both.keys,
        )
    return fill


def _org_days(
    client: OpenRouterClient, store: Store, start: dt.date, end: dt.date, now: dt.datetime
) -> int:
    """Org-wide days: by model x provider for the last 31 days (the API splits by provider
    only over 31 days); before that, and wherever it will not split (a 400), by model from
    the per-key figures, with provider "unknown"."""
    done_from = end + DAY
    latest = (now.astimezone(dt.UTC) - SETTLE).date() - DAY
    split_from = max(start, latest - DAY * (PROVIDER_DAYS - 1))

    def keep(first: dt.date, last: dt.date, rows: list[ActivityRow]) -> None:
        nonlocal done_from
        store.save_org_analytics(rows, first, last, now)
        done_from = min(done_from, first)

    queries = 0
    try:
        if split_from <= end:
            queries = client.model_provider_days(split_from, end, keep)
    except ApiError as exc:
        if exc.status != 400:
            raise
        log.debug("analytics: no provider split before %s (%s); using models alone",
                  done_from, exc)
    if start < done_from:
        rest = store.org_rows_from_keys(start, done_from - DAY)
        store.save_org_analytics(rest, start, done_from - DAY, now)
    return queries


class _Comparison:
    """Analytics rows against /activity on the days both cover: per day, per day and model
    (org-wide), per day and key. Rows are added as they arrive (a window may come in several
    chunks); `check` compares a whole window once all of it has arrived."""

    def __init__(
        self,
        store: Store,
        overlap: tuple[dt.date, dt.date],
        names: dict[str, str],
        both: Disagreement,
        source: int,
    ) -> None:
        self.store, self.overlap, self.names, self.both = store, overlap, names, both
        self.source = source
        self.day_cost: dict[dt.date, Decimal] = {}
        self.model_cost: dict[tuple[dt.date, str], Decimal] = {}
        self.key_cost: dict[tuple[dt.date, str], Decimal] = {}

    def add(self, rows: list[ActivityRow]) -> None:
        a, b = self.overlap
        for row in rows:
            if a <= row.date <= b:
                cost = row.cost
                self.day_cost[row.date] = self.day_cost.get(row.date, ZERO) + cost
                slot = (row.date, row.model_permaslug)
                self.model_cost[slot] = self.model_cost.get(slot, ZERO) + cost
                slot = (row.date, row.key_hash)
                self.key_cost[slot] = self.key_cost.get(slot, ZERO) + cost

    def check(self, first: dt.date, last: dt.date) -> None:
        day_cost, model_cost, key_cost = self.day_cost, self.model_cost, self.key_cost
        self.day_cost, self.model_cost, self.key_cost = {}, {}, {}
        a, b = max(first, self.overlap[0]), min(last, self.overlap[1])
        if a > b:
            return
        both, store = self.both, self.store
        org_days, org_models = store.org_activity_costs(a, b)
        for day in set(org_days) | set(day_cost):
            diff = day_cost.get(day, ZERO) - org_days.get(day, ZERO)
            if abs(diff) >= CENT:
                both.days.add(day)
                both.note(diff, f"{day}, all keys")
        for slot in set(org_models) | set(model_cost):
            diff = model_cost.get(slot, ZERO) - org_models.get(slot, ZERO)
            if abs(diff) >= CENT:
                both.models += 1
                both.note(diff, f"{slot[0]}, {slot[1]}")
        covered = store.covered_key_days(a, b)
        held = store.key_day_sums(a, b, self.source)
        for slot in {(d, h) for h, d in covered}:
            have = held.get(slot)
            diff = key_cost.get(slot, ZERO) - (have[0] + have[1] if have else ZERO)
            if abs(diff) >= CENT:
                both.keys += 1
                name = self.names.get(slot[1]) or placeholder_name(slot[1]) or slot[1][:12]
                both.note(diff, f"{slot[0]}, key {name}")


def _cents(value: Decimal) -> str:
    return f"{abs(value):,.2f}"
