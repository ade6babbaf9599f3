"""The only owner of SQL: the history, its migrations, the outbox, alert state, leases.

One store on either backend (`bot.store.backend`: SQLite, the embedded default, or
PostgreSQL for more than one machine); the SQL here is written once for both.

History keeps org-wide activity rows as the API sent them (money as exact decimal text), and
each key's spend per UTC day and model in `key_usage` (money as integer pico-dollars, so sums
over a year of keys run in SQL, exactly). Writes are batched (`executemany`), reads of long
ranges are aggregated in SQL.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import os
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, replace
from decimal import ROUND_HALF_EVEN, Context, Decimal
from pathlib import Path
from typing import Any, TypeVar

from bot.errors import DataError
from bot.models import (
    DAY,
    PLACEHOLDER_PREFIX,
    SETTLE,
    ActivityRow,
    AlertState,
    ApiKey,
    Credits,
    DeliveryState,
    Silence,
    Snapshot,
    Workspace,
    key_labels,
    placeholder_name,
)
from bot.store.backend import (
    BUSY_TIMEOUT_MS,
    Db,
    SqliteDb,
    is_postgres_url,
    open_db,
    redact_url,
)
from bot.store.migrations import MIGRATIONS, SCHEMA_VERSION, PerDialect
from bot.text import one_line

T = TypeVar("T")

__all__ = [
    "BUSY_TIMEOUT_MS", "MIGRATIONS", "SCHEMA_VERSION", "AlertState", "Db", "Delivery", "Store",
    "SyncStats", "connect", "is_postgres_url", "migrate", "redact_url",
]
ERROR_MAX = 300  # characters of an error message kept on a delivery
# a 'sending' delivery whose claim has not been renewed for this long was cut off (its sender
# died): another run may take it over, looking first for what the dead one may have sent
CLAIM_TTL = dt.timedelta(minutes=3)


ACTIVITY_MONEY = ("usage", "byok_usage")
ACTIVITY_COUNTS = ("requests", "prompt_tokens", "completion_tokens", "reasoning_tokens")
KEY_FIGURES = (
    "limit", "limit_remaining", "usage", "usage_daily", "usage_weekly", "usage_monthly",
    "byok_usage", "byok_usage_daily", "byok_usage_weekly", "byok_usage_monthly",
)
KEY_TEXT = ("name", "label", "limit_reset", "created_at", "expires_at", "workspace_id")
# key_usage money is integer pico-dollars: exact sums in SQL up to $9.2 million per group
PICO = Decimal(10) ** 12
_EXACT = Context(prec=60, rounding=ROUND_HALF_EVEN)
SOURCE_ACTIVITY = 0  # key_usage rows from /activity (preferred where both APIs answer)
SOURCE_ANALYTICS = 1  # key_usage rows from the analytics API
# endpoint_id of org-wide rows that came from the analytics API (which has no endpoints)
ANALYTICS_ENDPOINT = "analytics:"
BATCH_ROWS = 5_000  # rows per write transaction when streaming (memory stays flat)


# --- value conversions -------------------------------------------------------------------


def _money(value: Decimal) -> str:
    return format(value, "f")  # exact, and never in exponent notation


def _pico(value: Decimal) -> int:
    """Money as integer pico-dollars (rounded half-even below 1e-12 USD)."""
    return int(_EXACT.multiply(value, PICO).to_integral_value(context=_EXACT))


def _from_pico(value: int) -> Decimal:
    return Decimal(value).scaleb(-12)


def _money_or_none(value: Decimal | None) -> str | None:
    return None if value is None else _money(value)


def _dec_or_none(text: str | None) -> Decimal | None:
    return None if text is None else Decimal(text)


def _ts(when: dt.datetime) -> str:
    """A datetime as fixed-width ISO UTC text; a naive datetime is taken to be UTC."""
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return when.astimezone(dt.UTC).isoformat(timespec="microseconds")


def _dt(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text)


def _dt_or_none(text: str | None) -> dt.datetime | None:
    return None if text is None else _dt(text)


def _quote(column: str) -> str:
    return f'"{column}"'


# --- connection and migrations -----------------------------------------------------------


def _write(conn: Db) -> AbstractContextManager[Db]:
    """One write transaction, taking the write lock up front (no read-then-write races).

    A database still locked after the busy timeout, or otherwise unusable, is a DataError.
    """
    return conn.write()


def migrate(conn: Db | sqlite3.Connection, *, target: int | None = None) -> int:
    """Apply the migrations not yet applied (up to `target`): on an existing database each in
    its own transaction, on a new one all in one (a new history appears whole or not at all,
    and an order of magnitude faster: one commit, not one per migration).

    Returns the schema version. Running it again is a no-op; two processes starting at once
    apply each migration once (the second waits for the write lock, then sees it applied).
    """
    db = open_db(conn)
    target = SCHEMA_VERSION if target is None else target
    version = db.schema_version()
    if version > SCHEMA_VERSION:
        raise DataError(
            f"history database has schema version {version}, newer than this program's "
            f"{SCHEMA_VERSION}: upgrade openrouter-usage"
        )
    while version < target:
        with db.write():
            version = db.schema_version()  # another process may have got here first
            if version >= target:
                break
            db.execute(db.ddl(
                "CREATE TABLE IF NOT EXISTS schema_migrations "
                "(version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)"
            ))
            last = target if version == 0 else version + 1
            while version < last:
                for statement in MIGRATIONS[version]:
                    if isinstance(statement, PerDialect):
                        db.execute(statement.for_dialect(db.dialect))
                    else:
                        db.execute(db.ddl(statement))
                version += 1
                # applied_at is an audit note from the database's clock, not an input to logic
                db.execute(
                    f"INSERT INTO schema_migrations (version, applied_at) VALUES (?, {db.now_sql})",
                    (version,),
                )
            db.set_schema_version(version)
    return version


def connect_read_only(path: str | os.PathLike[str]) -> Db:
    """An existing SQLite history opened for reading only (a read-only file or folder): it
    must already be at this program's schema, since it cannot be migrated."""
    db = SqliteDb.open(Path(path), read_only=True)
    version = db.schema_version()
    if version != SCHEMA_VERSION:
        db.close()
        raise DataError(f"history database {path} is read-only and at schema version "
                        f"{version}, not {SCHEMA_VERSION}: open it once with write access "
                        "(`openrouter-usage sync`) to upgrade it")
    return db


def connect(target: str | os.PathLike[str]) -> Db:
    """Open (creating if needed) and migrate the history database: a SQLite path (":memory:"
    works) or a postgresql:// URL."""
    db = open_db(target if isinstance(target, str) else Path(target))
    try:
        migrate(db)
    except BaseException:
        db.close()
        raise
    return db


# --- records -----------------------------------------------------------------------------


@dataclass
class SyncStats:
    """What one sync changed; re-saving the same data gives all zeros but `*_unchanged`."""

    credits_new: bool = False
    activity_new: int = 0
    activity_updated: int = 0
    activity_unchanged: int = 0
    keys_new: int = 0
    keys_updated: int = 0
    keys_unchanged: int = 0
    days_covered_new: int = 0

    def add(self, other: SyncStats) -> None:
        self.credits_new = self.credits_new or other.credits_new
        for name in ("activity_new", "activity_updated", "activity_unchanged", "keys_new",
                     "keys_updated", "keys_unchanged", "days_covered_new"):
            setattr(self, name, getattr(self, name) + getattr(other, name))


@dataclass
class Delivery:
    """One outbox row: a rendered message under its idempotency key (job, period, destination)."""

    id: int
    job: str
    period: str
    destination: str
    payload: str
    status: DeliveryState
    attempts: int
    created_at: dt.datetime
    last_attempt_at: dt.datetime | None = None
    sent_at: dt.datetime | None = None
    last_error: str = ""
    ref: str = ""  # Slack ts or e-mail Message-ID
    forced: int = 0  # how many times --force reset it after it was sent or given up
    first_attempt_at: dt.datetime | None = None
    claimed_by: str = ""  # the run holding a 'sending' row
    heartbeat_at: dt.datetime | None = None  # when that run last renewed its claim
    maybe_sent: bool = False  # an attempt may have delivered it: check before re-sending


# Figures summed per group: usage, byok_usage (Decimal), then the four counts.
Sums = list[Any]


def zero_sums() -> Sums:
    return [Decimal(0), Decimal(0), 0, 0, 0, 0]


def _add(sums: Sums, row: ActivityRow) -> None:
    sums[0] += row.usage
    sums[1] += row.byok_usage
    sums[2] += row.requests
    sums[3] += row.prompt_tokens
    sums[4] += row.completion_tokens
    sums[5] += row.reasoning_tokens


def _merge(rows: Sequence[ActivityRow], key_hash: str) -> dict[tuple[str, ...], ActivityRow]:
    """Rows by their history key, tagged with `key_hash`; duplicates within one fetch are summed
    so history totals equal the API's."""
    merged: dict[tuple[str, ...], ActivityRow] = {}
    for row in rows:
        if row.key_hash != key_hash:
            row = replace(row, key_hash=key_hash)
        pk = (key_hash, row.date.isoformat(), row.endpoint_id, row.model_permaslug)
        prev = merged.get(pk)
        if prev is not None:
            sums = {f: getattr(prev, f) + getattr(row, f) for f in ACTIVITY_MONEY + ACTIVITY_COUNTS}
            row = replace(prev, **sums)
        merged[pk] = row
    return merged


def activity_window(
    as_of: dt.datetime, window_days: int = 30, settle: dt.timedelta = SETTLE
) -> tuple[dt.date, dt.date]:
    """The completed UTC days a fetch of /activity at `as_of` covers: the `window_days` days
    before its date, the latest only once `settle` has passed since it ended."""
    utc = _dt(_ts(as_of))
    first_day = utc.date() - DAY * window_days
    last_day = min(utc.date(), (utc - settle).date()) - DAY
    return first_day, last_day


_KEY_USAGE_INSERT = (
    "INSERT INTO key_usage (date, key_id, model_id, usage, byok_usage, requests, prompt_tokens, "
    "completion_tokens, reasoning_tokens, source) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (date, key_id, model_id) DO NOTHING"
)
# analytics rows in one pass: never over an /activity row (source 0), no new/updated split
_KEY_USAGE_UPSERT = (
    "INSERT INTO key_usage (date, key_id, model_id, usage, byok_usage, requests, prompt_tokens, "
    "completion_tokens, reasoning_tokens, source) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (date, key_id, model_id) DO UPDATE SET usage = excluded.usage, "
    "byok_usage = excluded.byok_usage, requests = excluded.requests, "
    "prompt_tokens = excluded.prompt_tokens, completion_tokens = excluded.completion_tokens, "
    "reasoning_tokens = excluded.reasoning_tokens WHERE key_usage.source = excluded.source"
)
_KEY_USAGE_UPDATE = (
    "UPDATE key_usage SET usage = ?, byok_usage = ?, requests = ?, prompt_tokens = ?, "
    "completion_tokens = ?, reasoning_tokens = ?, source = ? "
    "WHERE date = ? AND key_id = ? AND model_id = ? AND source >= ? AND (usage != ? OR "
    "byok_usage != ? OR requests != ? OR prompt_tokens != ? OR completion_tokens != ? OR "
    "reasoning_tokens != ? OR source != ?)"
)


class UsageBatch:
    """Per-key day figures streamed into `key_usage`, a transaction per ~BATCH_ROWS rows.

    `/activity` rows replace what the analytics API said for the same key and day; analytics
    rows never replace `/activity` ones, and are not stored for a key and day that /activity
    covered (it is preferred where both answer).
    """

    def __init__(self, store: Store, as_of: dt.datetime) -> None:
        self.store = store
        self.as_of = _ts(as_of)
        self.stats = SyncStats()
        self._rows: list[tuple[Any, ...]] = []
        self._covered: list[tuple[str, dt.date, dt.date]] = []

    def key_activity(
        self, key_hash: str, rows: Iterable[ActivityRow], first: dt.date, last: dt.date
    ) -> None:
        """One key's /activity rows, which cover its days `first`..`last`."""
        folded: dict[tuple[dt.date, str], Sums] = {}
        for row in rows:
            sums = folded.get((row.date, row.model_permaslug))
            if sums is None:
                sums = folded[(row.date, row.model_permaslug)] = zero_sums()
                self.store._remember_model(row.model_permaslug, row.model)
            _add(sums, row)
        for (day, slug), sums in folded.items():
            self._rows.append(_usage_values(day, key_hash, slug, sums, SOURCE_ACTIVITY))
        if first <= last:
            self._covered.append((key_hash, first, last))
        if len(self._rows) >= BATCH_ROWS:
            self.flush()

    def analytics(self, rows: Sequence[ActivityRow]) -> int:
        """Analytics key x model rows (`model` is the permaslug); returns how many were kept
        (rows for a key and day that /activity covered are not)."""
        if not rows:
            return 0
        first = min(r.date for r in rows)
        last = max(r.date for r in rows)
        covered = self.store.covered_key_days(first, last)
        kept = 0
        for row in rows:
            if (row.key_hash, row.date) in covered:
                continue
            sums = [row.usage, row.byok_usage, row.requests, row.prompt_tokens,
                    row.completion_tokens, row.reasoning_tokens]
            self._rows.append(_usage_values(row.date, row.key_hash, row.model_permaslug, sums,
                                            SOURCE_ANALYTICS))
            kept += 1
            if len(self._rows) >= BATCH_ROWS:
                self.flush()
        return kept

    def flush(self) -> None:
        rows, self._rows = self._rows, []
        covered, self._covered = self._covered, []
        if not rows and not covered:
            return
        conn = self.store.conn
        try:
            with _write(conn):
                key_ids, model_ids = self.store._ids(
                    {r[1] for r in rows} | {c[0] for c in covered}, {r[2] for r in rows}
                )
                values = [(r[0], key_ids[r[1]], model_ids[r[2]], *r[3:]) for r in rows]
                mine = [v for v in values if v[9] == SOURCE_ACTIVITY]
                new = conn.executemany(_KEY_USAGE_INSERT, mine).rowcount if mine else 0
                updates = [(*v[3:10], *v[0:3], v[9], *v[3:10]) for v in mine]
                changed = conn.executemany(_KEY_USAGE_UPDATE, updates).rowcount if mine else 0
                theirs = [v for v in values if v[9] == SOURCE_ANALYTICS]
                if theirs:
                    conn.executemany(_KEY_USAGE_UPSERT, theirs)
                months = {r[0][:7] for r in rows}
                for _, first, last in covered:
                    months.update(m[:7] for m in (first.isoformat(), last.isoformat()))
                conn.executemany(
                    "INSERT INTO key_month_stale (month) VALUES (?) ON CONFLICT DO NOTHING",
                    [(m,) for m in sorted(months)],
                )
                for key_hash, first, last in covered:
                    # day by day: each is a seek on the primary key (date, key_id, ...); a
                    # range of dates would read every key's rows of those days, for each key
                    conn.executemany(
                        "DELETE FROM key_usage WHERE date = ? AND key_id = ? AND source = ?",
                        [(d.isoformat(), key_ids[key_hash], SOURCE_ANALYTICS)
                         for d in _days(first, last)],
                    )
                    self.stats.days_covered_new += self.store._cover(key_hash, first, last,
                                                                     self.as_of)
        except BaseException:
            self.store._forget_ids()
            raise
        # the split into new / updated / unchanged is kept for /activity rows
        self.stats.activity_new += max(new, 0)
        self.stats.activity_updated += max(changed, 0)
        self.stats.activity_unchanged += len(mine) - max(new, 0) - max(changed, 0)


def _usage_values(
    day: dt.date, key_hash: str, permaslug: str, sums: Sums, source: int
) -> tuple[Any, ...]:
    return (day.isoformat(), key_hash, permaslug, _pico(sums[0]), _pico(sums[1]), sums[2],
            sums[3], sums[4], sums[5], source)


# --- the store ---------------------------------------------------------------------------


class Store:
    """History, outbox, alert state, leases and meta on one database connection."""

    def __init__(self, conn: Db | sqlite3.Connection) -> None:
        self.conn: Db = open_db(conn)
        migrate(self.conn)
        self._key_ids: dict[str, int] | None = None
        self._model_ids: dict[str, int] | None = None
        self._model_names: dict[str, str] = {}
        self._pending_names: dict[str, str] = {}

    def _rows(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        """Rows read by column name (``r["usage"]``) or position."""
        return self.conn.rows(sql, params)

    def _row(self, sql: str, params: Sequence[Any] = ()) -> Any | None:
        return self.conn.row(sql, params)

    # --- small identities ----------------------------------------------------------------

    def _load_ids(self) -> None:
        if self._key_ids is None or self._model_ids is None:
            self._key_ids = dict(self.conn.execute("SELECT hash, id FROM key_ids").fetchall())
            self._model_ids = {}
            self._model_names = {}
            for model_id, slug, model in self.conn.execute(
                "SELECT id, permaslug, model FROM model_ids"
            ):
                self._model_ids[slug] = model_id
                self._model_names[slug] = model

    def _forget_ids(self) -> None:
        """After a rolled-back write the cached identities may name rows that do not exist."""
        self._key_ids = self._model_ids = None
        self._pending_names = {}

    def _remember_model(self, permaslug: str, model: str) -> None:
        """The name /activity gives a permaslug (the analytics API gives only the permaslug,
        which stands for itself until /activity names it); written by the next `_ids`."""
        self._load_ids()
        if self._model_names.get(permaslug) != model:
            self._pending_names[permaslug] = model

    def _ids(self, hashes: set[str], slugs: set[str]) -> tuple[dict[str, int], dict[str, int]]:
        """The small integers standing for key hashes (or placeholders) and model permaslugs
        in key_usage, adding missing ones; call inside a write transaction."""
        self._load_ids()
        assert self._key_ids is not None and self._model_ids is not None
        missing = sorted(h for h in hashes if h not in self._key_ids)
        if missing:
            self.conn.executemany(
                "INSERT INTO key_ids (hash) VALUES (?) ON CONFLICT (hash) DO NOTHING",
                [(h,) for h in missing],
            )
        names, self._pending_names = self._pending_names, {}
        new_slugs = sorted(s for s in slugs | names.keys() if s not in self._model_ids)
        self.conn.executemany(
            "INSERT INTO model_ids (permaslug, model) VALUES (?, ?) "
            "ON CONFLICT (permaslug) DO NOTHING",
            [(s, names.get(s, s)) for s in new_slugs],
        )
        renamed = [(m, s) for s, m in names.items()
                   if s in self._model_ids and self._model_names.get(s) != m]
        self.conn.executemany("UPDATE model_ids SET model = ? WHERE permaslug = ?", renamed)
        if missing or new_slugs or renamed:
            self._key_ids = self._model_ids = None
            self._load_ids()
        assert self._key_ids is not None and self._model_ids is not None
        return self._key_ids, self._model_ids

    def model_names(self) -> dict[str, str]:
        """Model permaslug -> the model name /activity uses (the permaslug when unknown)."""
        self._load_ids()
        return dict(self._model_names)

    # --- history: writes -----------------------------------------------------------------

    @contextmanager
    def _writing(self) -> Iterator[Db]:
        try:
            with _write(self.conn) as conn:
                yield conn
        except BaseException:
            self._forget_ids()
            raise

    def usage_batch(self, as_of: dt.datetime) -> UsageBatch:
        return UsageBatch(self, as_of)

    def save_snapshot(
        self,
        snap: Snapshot,
        *,
        window_days: int = 30,
        activity_fetched: bool = True,
        settle: dt.timedelta = SETTLE,
    ) -> SyncStats:
        """Store one fetch; saving the same snapshot twice stores nothing twice.

        Marks as covered the `window_days` completed UTC days before `snap.as_of`'s date, for
        org-wide history when activity was fetched (`activity_fetched`, or rows present) and
        for each key in `snap.key_activity`. The latest day counts only once `settle` has
        passed since it ended (OpenRouter completes a day's data ~30 min after midnight UTC).
        """
        stats = SyncStats()
        as_of = _ts(snap.as_of)
        first_day, last_day = activity_window(snap.as_of, window_days, settle)
        with self._writing():
            if snap.credits is not None:
                stats.credits_new = self._save_credits(snap.credits, as_of)
            self._save_workspaces(snap.workspaces, as_of)
            self._save_keys(snap.keys, as_of, stats)
            if activity_fetched or snap.activity:
                self._save_org_activity(snap.activity, as_of, first_day, last_day, stats)
            self._ids(set(), set())  # model names /activity gave
            last = self.get_meta("last_sync_at")
            if last is None or last < as_of:
                self.set_meta("last_sync_at", as_of)
        if snap.key_activity:
            batch = self.usage_batch(snap.as_of)
            for key_hash, rows in snap.key_activity.items():
                if key_hash:
                    batch.key_activity(key_hash, rows, first_day, last_day)
            batch.flush()
            stats.add(batch.stats)
        return stats

    def _save_credits(self, credits: Credits, as_of: str) -> bool:
        row = self._row(
            "SELECT id, total_credits, total_usage FROM credits WHERE first_seen <= ? "
            "ORDER BY first_seen DESC, id DESC LIMIT 1",
            (as_of,),
        )
        if (
            row is not None
            and Decimal(row["total_credits"]) == credits.total_credits
            and Decimal(row["total_usage"]) == credits.total_usage
        ):
            self.conn.execute(
                "UPDATE credits SET last_seen = ? WHERE id = ? AND last_seen < ?",
                (as_of, row["id"], as_of),
            )
            return False
        self.conn.execute(
            "INSERT INTO credits (first_seen, last_seen, total_credits, total_usage) "
            "VALUES (?, ?, ?, ?)",
            (as_of, as_of, _money(credits.total_credits), _money(credits.total_usage)),
        )
        return True

    def _save_workspaces(self, workspaces: Sequence[Workspace], as_of: str) -> None:
        self.conn.executemany(
            "INSERT INTO workspaces (id, name, slug, first_seen, last_seen) "
            "VALUES (?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET "
            "name = excluded.name, slug = excluded.slug, last_seen = excluded.last_seen "
            "WHERE workspaces.last_seen <= excluded.last_seen",
            [(w.id, w.name, w.slug, as_of, as_of) for w in workspaces],
        )

    def _save_keys(self, keys: Sequence[ApiKey], as_of: str, stats: SyncStats) -> None:
        """Upsert keys in two statements; a key's latest state wins (an older fetch changes
        nothing)."""
        held = {r["hash"]: r for r in self._rows("SELECT * FROM keys")}
        inserts: list[tuple[Any, ...]] = []
        updates: list[tuple[Any, ...]] = []
        for key in {k.hash: k for k in keys}.values():
            values = _key_values(key)
            row = held.get(key.hash)
            if row is None:
                inserts.append((key.hash, *values, as_of, as_of))
                stats.keys_new += 1
            elif row["last_seen"] > as_of:  # an older fetch than what we hold
                stats.keys_unchanged += 1
            else:
                updates.append((*values, as_of, key.hash))
                if _key_from_row(row) == key:
                    stats.keys_unchanged += 1
                else:
                    stats.keys_updated += 1
        cols = ["hash", *KEY_TEXT, *KEY_FIGURES, "disabled", "first_seen", "last_seen"]
        self.conn.executemany(
            f"INSERT INTO keys ({', '.join(map(_quote, cols))}) "
            f"VALUES ({', '.join('?' * len(cols))})",
            inserts,
        )
        sets = ", ".join(f"{_quote(c)} = ?" for c in [*KEY_TEXT, *KEY_FIGURES, "disabled",
                                                      "last_seen"])
        self.conn.executemany(f"UPDATE keys SET {sets} WHERE hash = ?", updates)

    def _save_org_activity(
        self,
        rows: Sequence[ActivityRow],
        as_of: str,
        first: dt.date,
        last: dt.date,
        stats: SyncStats,
    ) -> None:
        merged = _merge(rows, "")
        if merged:
            days = [pk[1] for pk in merged]
            held: dict[tuple[str, ...], Any] = {
                (r["key_hash"], r["date"], r["endpoint_id"], r["model_permaslug"]): r
                for r in self._rows(
                    "SELECT * FROM activity WHERE key_hash = '' AND date BETWEEN ? AND ?",
                    (min(days), max(days)),
                )
            }
        else:
            held = {}
        inserts: list[tuple[Any, ...]] = []
        updates: list[tuple[Any, ...]] = []
        for pk, row in merged.items():
            self._remember_model(row.model_permaslug, row.model)
            figures = (row.model, row.provider, _money(row.usage), _money(row.byok_usage),
                       *(getattr(row, f) for f in ACTIVITY_COUNTS))
            old = held.get(pk)
            if old is None:
                inserts.append((*pk, *figures, as_of, as_of))
            elif _activity_from_row(old) != row:
                updates.append((*figures, as_of, *pk))
            else:
                stats.activity_unchanged += 1
        self.conn.executemany(
            "INSERT INTO activity (key_hash, date, endpoint_id, model_permaslug, model, "
            "provider, usage, byok_usage, requests, prompt_tokens, completion_tokens, "
            "reasoning_tokens, first_seen, updated_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            inserts,
        )
        self.conn.executemany(
            "UPDATE activity SET model = ?, provider = ?, usage = ?, byok_usage = ?, "
            "requests = ?, prompt_tokens = ?, completion_tokens = ?, reasoning_tokens = ?, "
            "updated_at = ? "
            "WHERE key_hash = ? AND date = ? AND endpoint_id = ? AND model_permaslug = ?",
            updates,
        )
        stats.activity_new += len(inserts)
        stats.activity_updated += len(updates)
        if first <= last:
            # /activity now covers these days: what the analytics API said of them goes
            self.conn.execute(
                "DELETE FROM activity WHERE key_hash = '' AND date BETWEEN ? AND ? "
                "AND endpoint_id LIKE ?",
                (first.isoformat(), last.isoformat(), ANALYTICS_ENDPOINT + "%"),
            )
            stats.days_covered_new += self._cover("", first, last, as_of)

    def save_org_analytics(
        self, rows: Sequence[ActivityRow], first: dt.date, last: dt.date, as_of: dt.datetime
    ) -> int:
        """Org-wide day figures from the analytics API (by model x provider, or by model alone
        with provider "unknown") for the days `first`..`last` that /activity did not cover;
        they replace what the analytics API said of those days before. Returns the days
        stored."""
        ts = _ts(as_of)
        with _write(self.conn):
            covered = self.covered_days(first, last, "")
            days = [d for d in _days(first, last) if d not in covered]
            if not days:
                return 0
            wanted = {d.isoformat() for d in days}
            merged: dict[tuple[str, str, str], Sums] = {}
            for row in rows:
                day = row.date.isoformat()
                if day not in wanted:
                    continue
                provider = row.provider or "unknown"
                sums = merged.setdefault((day, row.model_permaslug, provider), zero_sums())
                _add(sums, row)
            names = self.model_names()
            runs = _runs(days)
            # one statement per run of days (a year back is one run, not 365 statements)
            self.conn.executemany(
                "DELETE FROM activity WHERE key_hash = '' AND date BETWEEN ? AND ? "
                "AND endpoint_id LIKE ?",
                [(start.isoformat(), end.isoformat(), ANALYTICS_ENDPOINT + "%")
                 for start, end in runs],
            )
            self.conn.executemany(  # every value a parameter: sent many rows at once
                "INSERT INTO activity (key_hash, date, endpoint_id, model_permaslug, model, "
                "provider, usage, byok_usage, requests, prompt_tokens, completion_tokens, "
                "reasoning_tokens, first_seen, updated_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    ("", day, f"{ANALYTICS_ENDPOINT}{provider}", slug, names.get(slug, slug),
                     provider, _money(s[0]), _money(s[1]), s[2], s[3], s[4], s[5], ts, ts)
                    for (day, slug, provider), s in merged.items()
                ],
            )
            for start, end in runs:
                self._cover("", start, end, ts)
        return len(days)

    def org_rows_from_keys(self, first: dt.date, last: dt.date) -> list[ActivityRow]:
        """Org-wide day figures by model summed from key_usage (provider "unknown"), for days
        where the analytics API gave no provider breakdown."""
        rows = self.conn.execute(
            "SELECT u.date, m.permaslug, SUM(u.usage), SUM(u.byok_usage), SUM(u.requests), "
            "SUM(u.prompt_tokens), SUM(u.completion_tokens), SUM(u.reasoning_tokens) "
            "FROM key_usage u JOIN model_ids m ON m.id = u.model_id "
            "WHERE u.date BETWEEN ? AND ? GROUP BY u.date, m.permaslug",
            (first.isoformat(), last.isoformat()),
        ).fetchall()
        return [
            ActivityRow(dt.date.fromisoformat(d), slug, slug, "", "unknown", _from_pico(u),
                        _from_pico(b), r, p, c, x)
            for d, slug, u, b, r, p, c, x in rows
        ]

    def _cover(self, key_hash: str, first: dt.date, last: dt.date, as_of: str) -> int:
        days = [(key_hash, d.isoformat(), as_of) for d in _days(first, last)]
        new = self.conn.executemany(
            "INSERT INTO coverage (key_hash, date, synced_at) VALUES (?, ?, ?) "
            "ON CONFLICT (key_hash, date) DO NOTHING",
            days,
        ).rowcount
        self.conn.execute(
            "UPDATE coverage SET synced_at = ? WHERE key_hash = ? AND date BETWEEN ? AND ? "
            "AND synced_at < ?",
            (as_of, key_hash, first.isoformat(), last.isoformat(), as_of),
        )
        return new

    # --- history: reads ------------------------------------------------------------------

    def activity(
        self, start: dt.date, end: dt.date, key_hash: str | None = ""
    ) -> list[ActivityRow]:
        """Rows dated `start`..`end` inclusive: org-wide ("", per day and model endpoint),
        one key's (a hash: per day and model), or every key's (None: per key and day)."""
        if key_hash == "":
            rows = self._rows(
                "SELECT * FROM activity WHERE key_hash = '' AND date BETWEEN ? AND ? "
                "ORDER BY date, model, provider, endpoint_id, model_permaslug",
                (start.isoformat(), end.isoformat()),
            )
            return [_activity_from_row(r) for r in rows]
        if key_hash is None:
            found = self.conn.execute(
                "SELECT k.hash, u.date, SUM(u.usage), SUM(u.byok_usage), SUM(u.requests), "
                "SUM(u.prompt_tokens), SUM(u.completion_tokens), SUM(u.reasoning_tokens) "
                "FROM key_usage u JOIN key_ids k ON k.id = u.key_id "
                "WHERE u.date BETWEEN ? AND ? GROUP BY u.date, k.hash ORDER BY u.date, k.hash",
                (start.isoformat(), end.isoformat()),
            ).fetchall()
            return [
                ActivityRow(dt.date.fromisoformat(d), "", "", "", "", _from_pico(u),
                            _from_pico(b), r, p, c, x, key_hash=h)
                for h, d, u, b, r, p, c, x in found
            ]
        names = self.model_names()
        found = self.conn.execute(
            "SELECT u.date, m.permaslug, u.usage, u.byok_usage, u.requests, u.prompt_tokens, "
            "u.completion_tokens, u.reasoning_tokens FROM key_usage u "
            "JOIN key_ids k ON k.id = u.key_id JOIN model_ids m ON m.id = u.model_id "
            "WHERE k.hash = ? AND u.date BETWEEN ? AND ? ORDER BY u.date, m.permaslug",
            (key_hash, start.isoformat(), end.isoformat()),
        ).fetchall()
        return [
            ActivityRow(dt.date.fromisoformat(d), names.get(slug, slug), slug, "", "",
                        _from_pico(u), _from_pico(b), r, p, c, x, key_hash=key_hash)
            for d, slug, u, b, r, p, c, x in found
        ]

    def key_model_rows(self, start: dt.date, end: dt.date) -> list[ActivityRow]:
        """Every key's rows dated `start`..`end`, one per key, day and model (for alerts that
        say which key x model moved)."""
        names = self.model_names()
        found = self.conn.execute(
            "SELECT k.hash, u.date, m.permaslug, u.usage, u.byok_usage, u.requests, "
            "u.prompt_tokens, u.completion_tokens, u.reasoning_tokens FROM key_usage u "
            "JOIN key_ids k ON k.id = u.key_id JOIN model_ids m ON m.id = u.model_id "
            "WHERE u.date BETWEEN ? AND ? ORDER BY u.date, k.hash, m.permaslug",
            (start.isoformat(), end.isoformat()),
        ).fetchall()
        return [
            ActivityRow(dt.date.fromisoformat(d), names.get(slug, slug), slug, "", "",
                        _from_pico(u), _from_pico(b), r, p, c, x, key_hash=h)
            for h, d, slug, u, b, r, p, c, x in found
        ]

    def key_period_rows(self, start: dt.date, end: dt.date) -> list[ActivityRow]:
        """Each key's figures over `start`..`end`, summed in SQL: one row per key and stretch
        of the range (whole months from the monthly sums, the rest from the day figures),
        dated the stretch's first day. For totals over long ranges: a year of 5,600 keys is
        about 70,000 rows here, not 18 million."""
        stale = {m for (m,) in self.conn.execute("SELECT month FROM key_month_stale")}
        whole: list[str] = []
        spans: list[tuple[dt.date, dt.date]] = []
        day = start
        while day <= end:
            month_end = (day.replace(day=28) + DAY * 4).replace(day=1) - DAY
            last = min(end, month_end)
            month = day.isoformat()[:7]
            if day.day == 1 and last == month_end and month not in stale:
                whole.append(month)
            else:
                spans.append((day, last))
            day = last + DAY
        found: list[tuple[Any, ...]] = []
        if whole:
            found += self.conn.execute(
                "SELECT k.hash, m.month || '-01', m.usage, m.byok_usage, m.requests, "
                "m.prompt_tokens, m.completion_tokens, m.reasoning_tokens "
                "FROM key_month m JOIN key_ids k ON k.id = m.key_id "
                f"WHERE m.month IN ({', '.join('?' * len(whole))})",
                whole,
            ).fetchall()
        for first, last in spans:
            found += self.conn.execute(
                "SELECT k.hash, ?, s.usage, s.byok_usage, s.requests, s.prompt_tokens, "
                "s.completion_tokens, s.reasoning_tokens FROM (SELECT key_id, "
                "SUM(usage) AS usage, SUM(byok_usage) AS byok_usage, SUM(requests) AS requests, "
                "SUM(prompt_tokens) AS prompt_tokens, SUM(completion_tokens) AS "
                "completion_tokens, SUM(reasoning_tokens) AS reasoning_tokens FROM key_usage "
                "WHERE date BETWEEN ? AND ? GROUP BY key_id) s JOIN key_ids k ON k.id = s.key_id",
                (first.isoformat(), first.isoformat(), last.isoformat()),
            ).fetchall()
        return [
            ActivityRow(dt.date.fromisoformat(d), "", "", "", "", _from_pico(u), _from_pico(b),
                        r, p, c, x, key_hash=h)
            for h, d, u, b, r, p, c, x in found
        ]

    def refresh_key_months(self) -> int:
        """Take the monthly sums of every stale month again (after a sync); returns how many.
        Each month is its own transaction, so an interrupted refresh leaves the rest stale."""
        months = [m for (m,) in self.conn.execute(
            "SELECT month FROM key_month_stale ORDER BY month")]
        for month in months:
            with self._writing() as conn:
                conn.execute("DELETE FROM key_month WHERE month = ?", (month,))
                conn.execute(
                    "INSERT INTO key_month (key_id, month, usage, byok_usage, requests, "
                    "prompt_tokens, completion_tokens, reasoning_tokens) "
                    "SELECT key_id, ?, SUM(usage), SUM(byok_usage), SUM(requests), "
                    "SUM(prompt_tokens), SUM(completion_tokens), SUM(reasoning_tokens) "
                    "FROM key_usage WHERE date BETWEEN ? AND ? GROUP BY key_id",
                    (month, f"{month}-01", f"{month}-31"),
                )
                conn.execute("DELETE FROM key_month_stale WHERE month = ?", (month,))
        return len(months)

    def org_activity_costs(
        self, start: dt.date, end: dt.date
    ) -> tuple[dict[dt.date, Decimal], dict[tuple[dt.date, str], Decimal]]:
        """Cost per day, and per (day, model permaslug), of the org-wide rows /activity gave
        (not those the analytics API filled in), for comparing the two APIs."""
        days: dict[dt.date, Decimal] = {}
        models: dict[tuple[dt.date, str], Decimal] = {}
        for row in self.activity(start, end, ""):
            if row.endpoint_id.startswith(ANALYTICS_ENDPOINT):
                continue
            days[row.date] = days.get(row.date, Decimal(0)) + row.cost
            slot = (row.date, row.model_permaslug)
            models[slot] = models.get(slot, Decimal(0)) + row.cost
        return days, models

    def key_day_sums(
        self, start: dt.date, end: dt.date, source: int = SOURCE_ACTIVITY
    ) -> dict[tuple[dt.date, str], Sums]:
        """(day, key hash) -> summed figures of one source, for comparing the two APIs."""
        found = self.conn.execute(
            "SELECT u.date, k.hash, SUM(u.usage), SUM(u.byok_usage), SUM(u.requests), "
            "SUM(u.prompt_tokens), SUM(u.completion_tokens), SUM(u.reasoning_tokens) "
            "FROM key_usage u JOIN key_ids k ON k.id = u.key_id "
            "WHERE u.date BETWEEN ? AND ? AND u.source = ? GROUP BY u.date, k.hash",
            (start.isoformat(), end.isoformat(), source),
        ).fetchall()
        return {
            (dt.date.fromisoformat(d), h): [_from_pico(u), _from_pico(b), r, p, c, x]
            for d, h, u, b, r, p, c, x in found
        }

    def covered_key_days(self, start: dt.date, end: dt.date) -> set[tuple[str, dt.date]]:
        """(key hash, day) pairs in `start`..`end` whose per-key /activity was fetched."""
        found = self.conn.execute(
            "SELECT key_hash, date FROM coverage WHERE key_hash != '' AND date BETWEEN ? AND ?",
            (start.isoformat(), end.isoformat()),
        ).fetchall()
        return {(h, dt.date.fromisoformat(d)) for h, d in found}

    def covered_days(self, start: dt.date, end: dt.date, key_hash: str = "") -> set[dt.date]:
        """The days in `start`..`end` whose activity (for this scope) has been fetched."""
        rows = self.conn.execute(
            "SELECT date FROM coverage WHERE key_hash = ? AND date BETWEEN ? AND ?",
            (key_hash, start.isoformat(), end.isoformat()),
        ).fetchall()
        return {dt.date.fromisoformat(d) for (d,) in rows}

    def missing_days(self, start: dt.date, end: dt.date, key_hash: str = "") -> list[dt.date]:
        """The days in `start`..`end` never fetched for this scope, in order."""
        covered = self.covered_days(start, end, key_hash)
        return [d for d in _days(start, end) if d not in covered]

    def credits_at(self, when: dt.datetime | None = None) -> tuple[dt.datetime, Credits] | None:
        """The latest credits seen at or before `when` (None: the latest of all), with the
        latest time those figures were seen (not after `when`)."""
        if when is None:
            row = self._row("SELECT * FROM credits ORDER BY first_seen DESC, id DESC LIMIT 1")
        else:
            row = self._row(
                "SELECT * FROM credits WHERE first_seen <= ? "
                "ORDER BY first_seen DESC, id DESC LIMIT 1",
                (_ts(when),),
            )
        if row is None:
            return None
        seen = row["last_seen"]
        if when is not None and seen > _ts(when):
            seen = row["first_seen"]
        return _dt(seen), _credits_from_row(row)

    def keys(self) -> list[ApiKey]:
        """The latest known state of every key ever seen (removed keys included)."""
        rows = self._rows("SELECT * FROM keys ORDER BY name, label, hash")
        return [_key_from_row(r) for r in rows]

    def workspaces(self) -> list[Workspace]:
        """Every workspace ever seen."""
        rows = self._rows("SELECT * FROM workspaces ORDER BY name, id")
        return [Workspace(r["id"], r["name"], r["slug"]) for r in rows]

    def key_names(self, keys: Sequence[ApiKey] | None = None) -> dict[str, str]:
        """Key hash -> display name, for every key ever seen (`keys`: what `keys()` gave, not
        read again): keys sharing a name show their workspace, and spend the analytics API
        gave to an unknown key name has its own."""
        names = key_labels(self.keys() if keys is None else keys,
                           {w.id: w.display_name for w in self.workspaces()})
        for (key_hash,) in self.conn.execute(
            "SELECT hash FROM key_ids WHERE hash LIKE ?", (PLACEHOLDER_PREFIX + "%",)
        ):
            names[key_hash] = placeholder_name(key_hash) or key_hash
        return names


    # --- outbox --------------------------------------------------------------------------

    def outbox_get(self, job: str, period: str, destination: str) -> Delivery | None:
        row = self._row(
            "SELECT * FROM deliveries WHERE job = ? AND period = ? AND destination = ?",
            (job, period, destination),
        )
        return None if row is None else _delivery_from_row(row)

    def _delivery(self, delivery_id: int) -> Delivery:
        row = self._row("SELECT * FROM deliveries WHERE id = ?", (delivery_id,))
        if row is None:
            raise DataError(f"no delivery with id {delivery_id}")
        return _delivery_from_row(row)

    def outbox_put(
        self,
        job: str,
        period: str,
        destination: str,
        payload: str,
        now: dt.datetime,
        *,
        force: bool = False,
    ) -> Delivery:
        """Record a delivery as pending and return it.

        A pending row gets the new payload; a sent or given-up row is left alone unless
        `force`, which resets it to a fresh pending delivery (counted in `forced`); a row
        mid-send keeps the payload that may already have gone out.
        """
        ts = _ts(now)
        with _write(self.conn):
            old = self.outbox_get(job, period, destination)
            if old is None:
                new_id = self.conn.insert(
                    "INSERT INTO deliveries (job, period, destination, payload, status, "
                    "created_at, updated_at) VALUES (?, ?, ?, ?, 'pending', ?, ?)",
                    (job, period, destination, payload, ts, ts),
                )
                return self._delivery(new_id)
            if old.status == "pending":
                self.conn.execute(
                    "UPDATE deliveries SET payload = ?, updated_at = ? WHERE id = ?",
                    (payload, ts, old.id),
                )
            elif old.status in ("sent", "given_up") and force:
                self.conn.execute(
                    "UPDATE deliveries SET payload = ?, status = 'pending', attempts = 0, "
                    "forced = forced + 1, created_at = ?, last_attempt_at = NULL, "
                    "sent_at = NULL, last_error = '', ref = '', updated_at = ?, "
                    "first_attempt_at = NULL, claimed_by = '', heartbeat_at = NULL, "
                    "maybe_sent = 0 WHERE id = ?",
                    (payload, ts, ts, old.id),
                )
            return self._delivery(old.id)

    def outbox_begin(
        self,
        delivery_id: int,
        now: dt.datetime,
        stale_after: dt.timedelta = CLAIM_TTL,
        *,
        holder: str = "",
    ) -> Delivery | None:
        """Claim a delivery for one attempt by `holder` (committed before the network call);
        the claimed row, or None.

        Only a pending delivery, or one left "sending" with no heartbeat for `stale_after`
        (its sender died), can be claimed; None, changing nothing, otherwise: another run is
        sending it right now, sent it, or gave up on it. Taking over a cut-off attempt marks
        the delivery `maybe_sent`: that attempt may have got through.
        """
        ts = _ts(now)
        with _write(self.conn):
            cur = self.conn.execute(
                "UPDATE deliveries SET status = 'sending', attempts = attempts + 1, "
                "last_attempt_at = ?, updated_at = ?, heartbeat_at = ?, claimed_by = ?, "
                "first_attempt_at = COALESCE(first_attempt_at, ?), "
                "maybe_sent = CASE WHEN status = 'sending' THEN 1 ELSE maybe_sent END "
                "WHERE id = ? AND (status = 'pending' OR (status = 'sending' AND "
                "COALESCE(heartbeat_at, last_attempt_at, created_at) <= ?))",
                (ts, ts, ts, holder, ts, delivery_id, _ts(now - stale_after)),
            )
            if cur.rowcount != 1:
                return None
            return self._delivery(delivery_id)

    def outbox_heartbeat(self, holder: str, now: dt.datetime) -> int:
        """Renew every claim `holder` holds on a 'sending' delivery; how many it holds."""
        if not holder:
            return 0
        with _write(self.conn):
            cur = self.conn.execute(
                "UPDATE deliveries SET heartbeat_at = ? "
                "WHERE status = 'sending' AND claimed_by = ?",
                (_ts(now), holder),
            )
            return cur.rowcount

    def outbox_sent(self, delivery_id: int, now: dt.datetime, ref: str = "") -> None:
        ts = _ts(now)
        with _write(self.conn):
            self.conn.execute(
                "UPDATE deliveries SET status = 'sent', sent_at = ?, ref = ?, updated_at = ?, "
                "claimed_by = '' WHERE id = ?",
                (ts, ref, ts, delivery_id),
            )

    def outbox_found(self, delivery_id: int, now: dt.datetime, ref: str) -> bool:
        """Mark sent a delivery that another, cut-off run turned out to have sent (found by
        looking it up); False if it is no longer pending or sending."""
        ts = _ts(now)
        with _write(self.conn):
            cur = self.conn.execute(
                "UPDATE deliveries SET status = 'sent', sent_at = ?, ref = ?, updated_at = ?, "
                "claimed_by = '' WHERE id = ? AND status IN ('pending', 'sending')",
                (ts, ref, ts, delivery_id),
            )
            return cur.rowcount == 1

    def outbox_failed(
        self, delivery_id: int, now: dt.datetime, error: str, *, maybe_sent: bool = False,
        holder: str = "",
    ) -> None:
        """Back to pending (to be retried), remembering the error as one short line;
        `maybe_sent`: the attempt may have delivered it (kept until it is sent).

        Only a row still 'sending' changes (and, given `holder`, only while it holds the
        claim): a delivery another run has since found sent, or taken over, is left alone.
        """
        ts = _ts(now)
        with _write(self.conn):
            self.conn.execute(
                "UPDATE deliveries SET status = 'pending', last_error = ?, updated_at = ?, "
                "claimed_by = '', maybe_sent = CASE WHEN ? = 1 THEN 1 ELSE maybe_sent END "
                "WHERE id = ? AND status = 'sending' AND (? = '' OR claimed_by = ?)",
                (one_line(error, ERROR_MAX), ts, int(maybe_sent), delivery_id, holder, holder),
            )

    def outbox_give_up(self, delivery_id: int, now: dt.datetime, reason: str) -> None:
        ts = _ts(now)
        with _write(self.conn):
            self.conn.execute(
                "UPDATE deliveries SET status = 'given_up', last_error = ?, updated_at = ? "
                "WHERE id = ?",
                (one_line(reason, ERROR_MAX), ts, delivery_id),
            )

    def outbox_due(self) -> list[Delivery]:
        """Deliveries still to make, oldest first; a 'sending' one was cut off by a crash."""
        rows = self._rows(
            "SELECT * FROM deliveries WHERE status IN ('pending', 'sending') "
            "ORDER BY created_at, id"
        )
        return [_delivery_from_row(r) for r in rows]

    # --- alert state ---------------------------------------------------------------------

    def alert_put(self, state: AlertState) -> None:
        updated = state.updated_at or state.last_notified_at
        with _write(self.conn):
            self.conn.execute(
                "INSERT INTO alerts (rule_id, subject, status, value, since, last_notified_at, "
                "threads, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (rule_id, subject) DO UPDATE SET status = excluded.status, "
                "value = excluded.value, since = excluded.since, "
                "last_notified_at = excluded.last_notified_at, threads = excluded.threads, "
                "updated_at = excluded.updated_at",
                (state.rule_id, state.subject, state.status, state.value, _ts(state.since),
                 _ts(state.last_notified_at), json.dumps(state.threads, sort_keys=True),
                 _ts(updated)),
            )

    def alert_all(self) -> list[AlertState]:
        rows = self._rows("SELECT * FROM alerts ORDER BY rule_id, subject")
        return [_alert_from_row(r) for r in rows]

    # --- transactions --------------------------------------------------------------------

    def transaction(self) -> AbstractContextManager[Db]:
        """One write transaction around several store calls (they join it): all of them are
        written, or none (a crash, a lost connection)."""
        return _write(self.conn)

    # --- acknowledgements, snoozes and actions from Slack ----------------------------------

    def silences(self) -> dict[tuple[str, str], Silence]:
        """Every alert's acknowledgement and snooze, by (rule_id, subject)."""
        rows = self._rows("SELECT * FROM alert_silences ORDER BY rule_id, subject")
        return {(r["rule_id"], r["subject"]): _silence_from_row(r) for r in rows}

    def silence_ack(
        self, rule_id: str, subject: str, since: dt.datetime, user: str, now: dt.datetime
    ) -> None:
        """Acknowledge the alert's episode that started at `since` (no repeats until it ends)."""
        self._silence_set(rule_id, subject, "acked_since = ?, acked_by = ?, acked_at = ?",
                          (_ts(since), user, _ts(now)))

    def silence_snooze(
        self, rule_id: str, subject: str, until: dt.datetime | None, user: str, now: dt.datetime
    ) -> None:
        """Snooze the alert until `until` (None: unsnooze)."""
        self._silence_set(rule_id, subject, "snoozed_until = ?, snoozed_by = ?, snoozed_at = ?",
                          (None if until is None else _ts(until), user, _ts(now)))

    def _silence_set(self, rule_id: str, subject: str, sets: str, values: tuple[Any, ...]
                     ) -> None:
        with _write(self.conn):
            self.conn.execute(
                "INSERT INTO alert_silences (rule_id, subject) VALUES (?, ?) "
                "ON CONFLICT (rule_id, subject) DO NOTHING",
                (rule_id, subject),
            )
            self.conn.execute(
                f"UPDATE alert_silences SET {sets} WHERE rule_id = ? AND subject = ?",
                (*values, rule_id, subject),
            )

    def action_log(
        self, at: dt.datetime, user: str, action: str, rule_id: str, subject: str,
        channel: str, outcome: str,
    ) -> None:
        """Record one button press from Slack: who, what, when, where, and what came of it."""
        with _write(self.conn):
            self.conn.execute(
                "INSERT INTO slack_actions (at, user_id, action, rule_id, subject, channel, "
                "outcome) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (_ts(at), user, action, rule_id, subject, channel, one_line(outcome, ERROR_MAX)),
            )

    def actions(self, limit: int = 100) -> list[dict[str, Any]]:
        """The latest button presses, newest first."""
        columns = ("user_id", "action", "rule_id", "subject", "channel", "outcome")
        rows = self._rows("SELECT * FROM slack_actions ORDER BY at DESC LIMIT ?", (limit,))
        return [{"at": _dt(r["at"]), **{c: r[c] for c in columns}} for r in rows]

    def home_user_add(self, user: str, now: dt.datetime) -> None:
        """Remember a user who opened the App Home, so it is refreshed after each sync."""
        with _write(self.conn):
            self.conn.execute(
                "INSERT INTO slack_home_users (user_id, opened_at) VALUES (?, ?) "
                "ON CONFLICT (user_id) DO UPDATE SET opened_at = excluded.opened_at",
                (user, _ts(now)),
            )

    def home_users(self) -> list[str]:
        return [r[0] for r in self.conn.execute(
            "SELECT user_id FROM slack_home_users ORDER BY user_id").fetchall()]

    # --- leases --------------------------------------------------------------------------

    def lease_acquire(
        self, name: str, holder: str, now: dt.datetime, ttl: dt.timedelta
    ) -> bool:
        """Take (or renew) the lease `name` for `ttl`; False if someone else holds it."""
        with _write(self.conn):
            cur = self.conn.execute(
                "INSERT INTO leases (name, holder, acquired_at, expires_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (name) DO UPDATE SET "
                "acquired_at = CASE WHEN leases.holder = excluded.holder "
                "THEN leases.acquired_at ELSE excluded.acquired_at END, "
                "holder = excluded.holder, expires_at = excluded.expires_at "
                "WHERE leases.holder = excluded.holder "
                "OR leases.expires_at <= excluded.acquired_at",
                (name, holder, _ts(now), _ts(now + ttl)),
            )
            return cur.rowcount == 1

    def location(self) -> str | None:
        """The database file or URL, for a second connection (a heartbeat thread); None in
        memory."""
        return self.conn.location()

    def lease_renew(
        self, name: str, holder: str, now: dt.datetime, ttl: dt.timedelta
    ) -> bool:
        """Extend the lease `name` to `now + ttl` if `holder` still holds it; False if not."""
        with _write(self.conn):
            cur = self.conn.execute(
                "UPDATE leases SET expires_at = ? WHERE name = ? AND holder = ?",
                (_ts(now + ttl), name, holder),
            )
            return cur.rowcount == 1

    def lease_release(self, name: str, holder: str) -> None:
        with _write(self.conn):
            self.conn.execute("DELETE FROM leases WHERE name = ? AND holder = ?", (name, holder))

    # --- meta ----------------------------------------------------------------------------

    def last_sync_at(self) -> dt.datetime | None:
        value = self.get_meta("last_sync_at")
        return None if value is None else _dt(value)

    def set_meta(self, key: str, value: str) -> None:
        sql = (
            "INSERT INTO meta (key, value) VALUES (?, ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value"
        )
        if self.conn.in_transaction:  # part of a larger write (save_snapshot)
            self.conn.execute(sql, (key, value))
            return
        with _write(self.conn):
            self.conn.execute(sql, (key, value))

    def get_meta(self, key: str) -> str | None:
        row = self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])


def _days(first: dt.date, last: dt.date) -> list[dt.date]:
    return [first + DAY * i for i in range((last - first).days + 1)]


def _runs(days: Sequence[dt.date]) -> list[tuple[dt.date, dt.date]]:
    """Sorted days as runs of consecutive days."""
    runs: list[tuple[dt.date, dt.date]] = []
    for day in sorted(days):
        if runs and runs[-1][1] + DAY == day:
            runs[-1] = (runs[-1][0], day)
        else:
            runs.append((day, day))
    return runs


def _key_values(key: ApiKey) -> tuple[Any, ...]:
    return (*(getattr(key, f) for f in KEY_TEXT),
            *(_money_or_none(getattr(key, f)) for f in KEY_FIGURES), int(key.disabled))


# --- rows back to models -----------------------------------------------------------------


def _stored(table: str) -> Callable[[Callable[[Any], T]], Callable[[Any], T]]:
    """A row converter whose failure on a damaged or hand-edited cell (`usage` = 'abc') is
    one DataError naming the table, not a crash."""

    def wrap(convert: Callable[[Any], T]) -> Callable[[Any], T]:
        @functools.wraps(convert)
        def checked(r: Any) -> T:
            try:
                return convert(r)
            except (ArithmeticError, ValueError, TypeError, KeyError) as exc:
                raise DataError(f"history database is damaged: a row of {table} cannot be read "
                                f"({type(exc).__name__}); restore it from a backup") from exc

        return checked

    return wrap


@_stored("activity")
def _activity_from_row(r: Any) -> ActivityRow:
    return ActivityRow(
        date=dt.date.fromisoformat(r["date"]),
        model=r["model"],
        model_permaslug=r["model_permaslug"],
        endpoint_id=r["endpoint_id"],
        provider=r["provider"],
        usage=Decimal(r["usage"]),
        byok_usage=Decimal(r["byok_usage"]),
        requests=r["requests"],
        prompt_tokens=r["prompt_tokens"],
        completion_tokens=r["completion_tokens"],
        reasoning_tokens=r["reasoning_tokens"],
        key_hash=r["key_hash"],
    )


@_stored("credits")
def _credits_from_row(r: Any) -> Credits:
    return Credits(Decimal(r["total_credits"]), Decimal(r["total_usage"]))


@_stored("keys")
def _key_from_row(r: Any) -> ApiKey:
    figures: dict[str, Any] = {f: _dec_or_none(r[f]) for f in KEY_FIGURES}
    return ApiKey(
        hash=r["hash"],
        disabled=bool(r["disabled"]),
        **{f: r[f] for f in KEY_TEXT},
        **figures,
    )


@_stored("deliveries")
def _delivery_from_row(r: Any) -> Delivery:
    return Delivery(
        id=r["id"],
        job=r["job"],
        period=r["period"],
        destination=r["destination"],
        payload=r["payload"],
        status=DeliveryState(r["status"]),
        attempts=r["attempts"],
        created_at=_dt(r["created_at"]),
        last_attempt_at=_dt_or_none(r["last_attempt_at"]),
        sent_at=_dt_or_none(r["sent_at"]),
        last_error=r["last_error"],
        ref=r["ref"],
        forced=r["forced"],
        first_attempt_at=_dt_or_none(r["first_attempt_at"]),
        claimed_by=r["claimed_by"],
        heartbeat_at=_dt_or_none(r["heartbeat_at"]),
        maybe_sent=bool(r["maybe_sent"]),
    )


@_stored("alerts")
def _alert_from_row(r: Any) -> AlertState:
    return AlertState(
        rule_id=r["rule_id"],
        subject=r["subject"],
        status=r["status"],
        value=r["value"],
        since=_dt(r["since"]),
        last_notified_at=_dt(r["last_notified_at"]),
        threads=dict(json.loads(r["threads"])),
        updated_at=_dt(r["updated_at"]),
    )


def _silence_from_row(r: Any) -> Silence:
    return Silence(
        rule_id=r["rule_id"],
        subject=r["subject"],
        acked_since=_dt_or_none(r["acked_since"]),
        acked_by=r["acked_by"],
        acked_at=_dt_or_none(r["acked_at"]),
        snoozed_until=_dt_or_none(r["snoozed_until"]),
        snoozed_by=r["snoozed_by"],
        snoozed_at=_dt_or_none(r["snoozed_at"]),
    )
