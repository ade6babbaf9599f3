"""The only owner of SQL: the SQLite history, its migrations, the outbox, alert state, leases."""

from __future__ import annotations

import datetime as dt
import json
import os
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from decimal import Decimal
from pathlib import Path
from typing import Any

from bot.errors import DataError
from bot.models import (
    DAY,
    SETTLE,
    ActivityRow,
    AlertState,
    ApiKey,
    Credits,
    DeliveryState,
    Snapshot,
)
from bot.store.migrations import MIGRATIONS, SCHEMA_VERSION
from bot.text import one_line

BUSY_TIMEOUT_MS = 5000
ERROR_MAX = 300  # characters of an error message kept on a delivery


ACTIVITY_MONEY = ("usage", "byok_usage")
ACTIVITY_COUNTS = ("requests", "prompt_tokens", "completion_tokens", "reasoning_tokens")
KEY_FIGURES = (
    "limit", "limit_remaining", "usage", "usage_daily", "usage_weekly", "usage_monthly",
    "byok_usage", "byok_usage_daily", "byok_usage_weekly", "byok_usage_monthly",
)
KEY_TEXT = ("name", "label", "limit_reset", "created_at", "expires_at")


# --- value conversions -------------------------------------------------------------------


def _money(value: Decimal) -> str:
    return format(value, "f")  # exact, and never in exponent notation


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


@contextmanager
def _write(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One write transaction, taking the write lock up front (no read-then-write races).

    A database still locked after the busy timeout, or otherwise unusable, is a DataError.
    """
    try:
        with conn:
            conn.execute("BEGIN IMMEDIATE")
            yield conn
    except sqlite3.OperationalError as exc:
        raise DataError(f"history database is busy or unusable: {exc}") from exc


def _user_version(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def migrate(conn: sqlite3.Connection, *, target: int | None = None) -> int:
    """Apply the migrations not yet applied (up to `target`), each in its own transaction.

    Returns the schema version. Running it again is a no-op.
    """
    target = SCHEMA_VERSION if target is None else target
    version = _user_version(conn)
    if version > SCHEMA_VERSION:
        raise DataError(
            f"history database has schema version {version}, newer than this program's "
            f"{SCHEMA_VERSION}: upgrade openrouter-usage"
        )
    while version < target:
        with _write(conn):
            version = _user_version(conn)  # another process may have got here first
            if version >= target:
                break
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations "
                "(version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)"
            )
            for statement in MIGRATIONS[version]:
                conn.execute(statement)
            version += 1
            # applied_at is an audit note from SQLite's clock, not an input to any logic
            conn.execute(
                "INSERT INTO schema_migrations (version, applied_at) "
                "VALUES (?, strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))",
                (version,),
            )
            conn.execute(f"PRAGMA user_version = {version:d}")
    return version


def connect(path: str | os.PathLike[str]) -> sqlite3.Connection:
    """Open (creating if needed) and migrate the history database; ":memory:" works."""
    memory = str(path) == ":memory:"
    if not memory:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    try:
        # isolation_level=None: transactions are explicit (BEGIN IMMEDIATE ... COMMIT)
        conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
    except sqlite3.Error as exc:
        raise DataError(f"cannot open history database {path}: {exc}") from exc
    try:
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS:d}")
        conn.execute("PRAGMA foreign_keys = ON")
        if not memory:
            conn.execute("PRAGMA journal_mode = WAL")
        migrate(conn)
    except sqlite3.Error as exc:
        conn.close()
        raise DataError(f"cannot use history database {path}: {exc}") from exc
    except BaseException:
        conn.close()
        raise
    return conn


# --- records -----------------------------------------------------------------------------


@dataclass
class SyncStats:
    """What one `save_snapshot` changed; re-saving the same snapshot gives all zeros but
    `*_unchanged`."""

    credits_new: bool = False
    activity_new: int = 0
    activity_updated: int = 0
    activity_unchanged: int = 0
    keys_new: int = 0
    keys_updated: int = 0
    keys_unchanged: int = 0
    key_snapshots_new: int = 0
    days_covered_new: int = 0


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


# --- the store ---------------------------------------------------------------------------


class Store:
    """History, outbox, alert state, leases and meta on one SQLite connection."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        migrate(conn)

    def _rows(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        cur = self.conn.cursor()
        cur.row_factory = sqlite3.Row
        return cur.execute(sql, params).fetchall()

    def _row(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Row | None:
        rows = self._rows(sql, params)
        return rows[0] if rows else None

    # --- history -------------------------------------------------------------------------

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
        utc = _dt(as_of)
        first_day = utc.date() - DAY * window_days
        last_day = min(utc.date(), (utc - settle).date()) - DAY
        scopes: list[tuple[str, Sequence[ActivityRow]]] = []
        if activity_fetched or snap.activity:
            scopes.append(("", snap.activity))
        scopes.extend((h, rows) for h, rows in snap.key_activity.items() if h)
        with _write(self.conn):
            if snap.credits is not None:
                stats.credits_new = self._save_credits(snap.credits, as_of)
            for key in snap.keys:
                self._save_key(key, as_of, stats)
            for key_hash, rows in scopes:
                for row in _merge(rows, key_hash).values():
                    self._save_activity(row, as_of, stats)
                if first_day <= last_day:
                    stats.days_covered_new += self._cover(key_hash, first_day, last_day, as_of)
            last = self.get_meta("last_sync_at")
            if last is None or last < as_of:
                self.set_meta("last_sync_at", as_of)
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
                "UPDATE credits SET last_seen = max(last_seen, ?) WHERE id = ?", (as_of, row["id"])
            )
            return False
        self.conn.execute(
            "INSERT INTO credits (first_seen, last_seen, total_credits, total_usage) "
            "VALUES (?, ?, ?, ?)",
            (as_of, as_of, _money(credits.total_credits), _money(credits.total_usage)),
        )
        return True

    def _save_key(self, key: ApiKey, as_of: str, stats: SyncStats) -> None:
        row = self._row('SELECT * FROM keys WHERE hash = ?', (key.hash,))
        values: dict[str, Any] = {f: getattr(key, f) for f in KEY_TEXT}
        values.update({f: _money_or_none(getattr(key, f)) for f in KEY_FIGURES})
        values["disabled"] = int(key.disabled)
        if row is None:
            cols = ["hash", *values, "first_seen", "last_seen"]
            self.conn.execute(
                f"INSERT INTO keys ({', '.join(map(_quote, cols))}) "
                f"VALUES ({', '.join('?' * len(cols))})",
                (key.hash, *values.values(), as_of, as_of),
            )
            stats.keys_new += 1
            self._key_snapshot(key, as_of)
            stats.key_snapshots_new += 1
            return
        if row["last_seen"] > as_of:  # an older fetch than what we hold: keep the newer state
            stats.keys_unchanged += 1
            return
        old = _key_from_row(row)
        sets = ", ".join(f"{_quote(c)} = ?" for c in [*values, "last_seen"])
        self.conn.execute(
            f"UPDATE keys SET {sets} WHERE hash = ?", (*values.values(), as_of, key.hash)
        )
        if old == key:
            stats.keys_unchanged += 1
            return
        stats.keys_updated += 1
        figures = ("disabled", *KEY_FIGURES)
        if any(getattr(old, f) != getattr(key, f) for f in figures):
            self._key_snapshot(key, as_of)
            stats.key_snapshots_new += 1

    def _key_snapshot(self, key: ApiKey, as_of: str) -> None:
        cols = ["hash", "as_of", "disabled", *KEY_FIGURES]
        self.conn.execute(
            f"INSERT INTO key_snapshots ({', '.join(map(_quote, cols))}) "
            f"VALUES ({', '.join('?' * len(cols))})",
            (key.hash, as_of, int(key.disabled),
             *(_money_or_none(getattr(key, f)) for f in KEY_FIGURES)),
        )

    def _save_activity(self, row: ActivityRow, as_of: str, stats: SyncStats) -> None:
        pk = (row.key_hash, row.date.isoformat(), row.endpoint_id, row.model_permaslug)
        old = self._row(
            "SELECT * FROM activity WHERE key_hash = ? AND date = ? AND endpoint_id = ? "
            "AND model_permaslug = ?",
            pk,
        )
        figures = (row.model, row.provider, _money(row.usage), _money(row.byok_usage),
                   *(getattr(row, f) for f in ACTIVITY_COUNTS))
        if old is None:
            self.conn.execute(
                "INSERT INTO activity (key_hash, date, endpoint_id, model_permaslug, model, "
                "provider, usage, byok_usage, requests, prompt_tokens, completion_tokens, "
                "reasoning_tokens, first_seen, updated_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (*pk, *figures, as_of, as_of),
            )
            stats.activity_new += 1
        elif _activity_from_row(old) != row:
            self.conn.execute(
                "UPDATE activity SET model = ?, provider = ?, usage = ?, byok_usage = ?, "
                "requests = ?, prompt_tokens = ?, completion_tokens = ?, reasoning_tokens = ?, "
                "updated_at = ? "
                "WHERE key_hash = ? AND date = ? AND endpoint_id = ? AND model_permaslug = ?",
                (*figures, as_of, *pk),
            )
            stats.activity_updated += 1
        else:
            stats.activity_unchanged += 1

    def _cover(self, key_hash: str, first: dt.date, last: dt.date, as_of: str) -> int:
        days = [(key_hash, (first + DAY * i).isoformat(), as_of)
                for i in range((last - first).days + 1)]
        new = self.conn.executemany(
            "INSERT OR IGNORE INTO coverage (key_hash, date, synced_at) VALUES (?, ?, ?)", days
        ).rowcount
        self.conn.execute(
            "UPDATE coverage SET synced_at = ? WHERE key_hash = ? AND date BETWEEN ? AND ? "
            "AND synced_at < ?",
            (as_of, key_hash, first.isoformat(), last.isoformat(), as_of),
        )
        return new

    def activity(
        self, start: dt.date, end: dt.date, key_hash: str | None = ""
    ) -> list[ActivityRow]:
        """Rows dated `start`..`end` inclusive: org-wide (""), one key's (a hash), or every
        key's (None)."""
        scope = "key_hash != ''" if key_hash is None else "key_hash = ?"
        params = () if key_hash is None else (key_hash,)
        rows = self._rows(
            f"SELECT * FROM activity WHERE {scope} AND date BETWEEN ? AND ? "
            "ORDER BY date, key_hash, model, provider, endpoint_id, model_permaslug",
            (*params, start.isoformat(), end.isoformat()),
        )
        return [_activity_from_row(r) for r in rows]

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
        days = (start + DAY * i for i in range((end - start).days + 1))
        return [d for d in days if d not in covered]

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

    def key_names(self) -> dict[str, str]:
        """Key hash -> display name, for every key ever seen."""
        return {k.hash: k.display_name for k in self.keys()}

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
                cur = self.conn.execute(
                    "INSERT INTO deliveries (job, period, destination, payload, status, "
                    "created_at, updated_at) VALUES (?, ?, ?, ?, 'pending', ?, ?)",
                    (job, period, destination, payload, ts, ts),
                )
                assert cur.lastrowid is not None
                return self._delivery(cur.lastrowid)
            if old.status == "pending":
                self.conn.execute(
                    "UPDATE deliveries SET payload = ?, updated_at = ? WHERE id = ?",
                    (payload, ts, old.id),
                )
            elif old.status in ("sent", "given_up") and force:
                self.conn.execute(
                    "UPDATE deliveries SET payload = ?, status = 'pending', attempts = 0, "
                    "forced = forced + 1, created_at = ?, last_attempt_at = NULL, "
                    "sent_at = NULL, last_error = '', ref = '', updated_at = ? WHERE id = ?",
                    (payload, ts, ts, old.id),
                )
            return self._delivery(old.id)

    def outbox_begin(
        self,
        delivery_id: int,
        now: dt.datetime,
        stale_after: dt.timedelta = dt.timedelta(minutes=10),
    ) -> bool:
        """Claim a delivery for one attempt (committed before the network call).

        Only a pending delivery, or one left "sending" for longer than `stale_after` (its
        sender crashed), can be claimed; returns False, changing nothing, otherwise: another
        process is sending it right now, sent it, or gave up on it.
        """
        ts = _ts(now)
        with _write(self.conn):
            cur = self.conn.execute(
                "UPDATE deliveries SET status = 'sending', attempts = attempts + 1, "
                "last_attempt_at = ?, updated_at = ? "
                "WHERE id = ? AND (status = 'pending' OR "
                "(status = 'sending' AND (last_attempt_at IS NULL OR last_attempt_at <= ?)))",
                (ts, ts, delivery_id, _ts(now - stale_after)),
            )
            return cur.rowcount == 1

    def outbox_sent(self, delivery_id: int, now: dt.datetime, ref: str = "") -> None:
        ts = _ts(now)
        with _write(self.conn):
            self.conn.execute(
                "UPDATE deliveries SET status = 'sent', sent_at = ?, ref = ?, updated_at = ? "
                "WHERE id = ?",
                (ts, ref, ts, delivery_id),
            )

    def outbox_failed(self, delivery_id: int, now: dt.datetime, error: str) -> None:
        """Back to pending (to be retried), remembering the error as one short line."""
        ts = _ts(now)
        with _write(self.conn):
            self.conn.execute(
                "UPDATE deliveries SET status = 'pending', last_error = ?, updated_at = ? "
                "WHERE id = ?",
                (one_line(error, ERROR_MAX), ts, delivery_id),
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

    # --- leases --------------------------------------------------------------------------

    def lease_acquire(
        self, name: str, holder: str, now: dt.datetime, ttl: dt.timedelta
    ) -> bool:
        """Take (or renew) the lease `name` for `ttl`; False if someone else holds it."""
        with _write(self.conn):
            cur = self.conn.execute(
                "INSERT INTO leases (name, holder, acquired_at, expires_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (name) DO UPDATE SET "
                "acquired_at = CASE WHEN holder = excluded.holder THEN acquired_at "
                "ELSE excluded.acquired_at END, "
                "holder = excluded.holder, expires_at = excluded.expires_at "
                "WHERE holder = excluded.holder OR expires_at <= excluded.acquired_at",
                (name, holder, _ts(now), _ts(now + ttl)),
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


# --- rows back to models -----------------------------------------------------------------


def _activity_from_row(r: sqlite3.Row) -> ActivityRow:
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


def _credits_from_row(r: sqlite3.Row) -> Credits:
    return Credits(Decimal(r["total_credits"]), Decimal(r["total_usage"]))


def _key_from_row(r: sqlite3.Row) -> ApiKey:
    figures: dict[str, Any] = {f: _dec_or_none(r[f]) for f in KEY_FIGURES}
    return ApiKey(
        hash=r["hash"],
        disabled=bool(r["disabled"]),
        **{f: r[f] for f in KEY_TEXT},
        **figures,
    )


def _delivery_from_row(r: sqlite3.Row) -> Delivery:
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
    )


def _alert_from_row(r: sqlite3.Row) -> AlertState:
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
