"""Schema migrations: from empty, re-run, forward from version 1 keeping data, bad databases.

The portable tests run on each backend (SQLite and PostgreSQL); a few are about SQLite files.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
from decimal import Decimal
from pathlib import Path

import pytest

from bot.errors import DataError
from bot.models import Credits
from bot.store import MIGRATIONS, SCHEMA_VERSION, Store, connect, migrate
from bot.store.backend import Db, open_db

TABLES = {"schema_migrations", "credits", "activity", "coverage", "keys", "meta", "deliveries",
          "alerts", "leases", "workspaces", "key_ids", "model_ids", "key_usage", "key_month",
          "key_month_stale", "alert_silences", "slack_actions", "slack_home_users"}


def tables(conn: sqlite3.Connection) -> set[str]:
    rows = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
    return {name for (name,) in rows if not name.startswith("sqlite_")}


def versions(conn: sqlite3.Connection | Db) -> list[int]:
    return [v for (v,) in conn.execute("SELECT version FROM schema_migrations ORDER BY version")]


def user_version(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def test_migrate_from_empty_in_memory() -> None:
    conn = sqlite3.connect(":memory:", isolation_level=None)
    assert migrate(conn) == SCHEMA_VERSION
    assert tables(conn) == TABLES
    assert versions(conn) == list(range(1, SCHEMA_VERSION + 1))
    assert user_version(conn) == SCHEMA_VERSION
    applied = conn.execute("SELECT applied_at FROM schema_migrations").fetchall()
    assert all(dt.datetime.fromisoformat(a) for (a,) in applied)


def test_migrate_works_on_a_default_python_connection() -> None:
    conn = sqlite3.connect(":memory:")  # legacy implicit-transaction mode
    assert migrate(conn) == SCHEMA_VERSION
    assert not conn.in_transaction
    Store(conn).set_meta("k", "v")
    assert Store(conn).get_meta("k") == "v"


def test_migrate_from_empty_on_each_backend(fresh_db_target: str) -> None:
    db = open_db(fresh_db_target)  # opened, not migrated
    assert db.tables() == [] and db.schema_version() == 0
    assert migrate(db) == SCHEMA_VERSION
    assert set(db.tables()) == TABLES
    assert versions(db) == list(range(1, SCHEMA_VERSION + 1))
    assert db.schema_version() == SCHEMA_VERSION
    applied = db.execute("SELECT applied_at FROM schema_migrations").fetchall()
    assert all(dt.datetime.fromisoformat(a) for (a,) in applied)
    db.close()


def test_rerun_is_a_noop(fresh_db_target: str) -> None:
    conn = connect(fresh_db_target)
    before = [tuple(r) for r in conn.execute("SELECT * FROM schema_migrations").fetchall()]
    assert migrate(conn) == SCHEMA_VERSION
    assert migrate(conn) == SCHEMA_VERSION
    Store(conn)  # the store migrates on construction too
    other = connect(fresh_db_target)  # a new process
    assert other.schema_version() == SCHEMA_VERSION
    other.close()
    assert [tuple(r) for r in conn.execute("SELECT * FROM schema_migrations")] == before
    conn.close()


def test_integers_are_64_bit_on_each_backend(fresh_db_target: str) -> None:
    store = Store(connect(fresh_db_target))
    big = 2**40  # a month of tokens for a busy org does not fit 32 bits
    store.conn.execute(
        "INSERT INTO activity VALUES ('', '2024-05-01', 'ep1', 'm-1', 'm', 'P', '1', '0', "
        "?, ?, 0, 0, '2024-05-02T00:00:00.000000+00:00', '2024-05-02T00:00:00.000000+00:00')",
        (big, big + 1))
    (row,) = store.activity(dt.date(2024, 5, 1), dt.date(2024, 5, 1))
    assert (row.requests, row.prompt_tokens) == (big, big + 1)
    store.conn.close()


def test_connect_file_creates_directories_wal_and_pragmas(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "history.db"
    conn = connect(path)
    assert path.exists()
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA busy_timeout").fetchone()[0] == 5000
    assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert user_version(conn) == SCHEMA_VERSION
    conn.close()
    again = connect(str(path))
    assert versions(again) == list(range(1, SCHEMA_VERSION + 1))
    again.close()


def test_version_1_database_migrates_forward_keeping_data(fresh_db_target: str) -> None:
    path = fresh_db_target
    old = open_db(path)
    assert migrate(old, target=1) == 1
    assert set(old.tables()) == {"schema_migrations", "credits", "activity", "coverage", "keys",
                                 "key_snapshots", "meta"}
    old.execute(
        "INSERT INTO credits (first_seen, last_seen, total_credits, total_usage) "
        "VALUES ('2024-05-01T00:00:00.000000+00:00', '2024-05-02T00:00:00.000000+00:00', "
        "'100', '12.000000123456789')"
    )
    old.execute(
        "INSERT INTO activity VALUES ('', '2024-05-01', 'ep1', 'openai/gpt-4o-2024', "
        "'openai/gpt-4o', 'OpenAI', '1.5', '0', 3, 10, 20, 0, "
        "'2024-05-02T00:00:00.000000+00:00', '2024-05-02T00:00:00.000000+00:00')"
    )
    old.execute("INSERT INTO meta VALUES ('last_sync_at', '2024-05-02T00:00:00.000000+00:00')")
    old.close()

    conn = connect(path)
    assert conn.schema_version() == SCHEMA_VERSION
    assert versions(conn) == list(range(1, SCHEMA_VERSION + 1))
    assert set(conn.tables()) == TABLES
    store = Store(conn)
    got = store.credits_at()
    assert got is not None
    assert got[1] == Credits(Decimal("100"), Decimal("12.000000123456789"))
    (row,) = store.activity(dt.date(2024, 5, 1), dt.date(2024, 5, 1))
    assert (row.model, row.usage, row.requests) == ("openai/gpt-4o", Decimal("1.5"), 3)
    assert store.last_sync_at() == dt.datetime(2024, 5, 2, tzinfo=dt.UTC)
    conn.close()


def test_version_4_per_key_rows_move_to_key_usage_exactly(tmp_path: Path) -> None:
    path = tmp_path / "v4.db"
    old = sqlite3.connect(path, isolation_level=None)
    assert migrate(old, target=4) == 4
    stamp = "2024-05-02T00:00:00.000000+00:00"
    for key_hash, endpoint, usage in [("", "ep1", "9.5"), ("h1", "ep1", "1.000000000001"),
                                      ("h1", "ep2", "0.25"), ("h2", "ep1", "1234.5678")]:
        old.execute(
            "INSERT INTO activity VALUES (?, '2024-05-01', ?, 'openai/gpt-4o-2024', "
            "'openai/gpt-4o', 'OpenAI', ?, '0.5', 3, 10, 20, 0, ?, ?)",
            (key_hash, endpoint, usage, stamp, stamp),
        )
    old.execute("INSERT INTO key_snapshots (hash, as_of, disabled, usage, usage_daily, "
                "usage_weekly, usage_monthly, byok_usage, byok_usage_daily, byok_usage_weekly, "
                "byok_usage_monthly) VALUES ('h1', ?, 0, '1', '1', '1', '1', '0', '0', '0', '0')",
                (stamp,))
    old.close()

    store = Store(connect(path))
    day = dt.date(2024, 5, 1)
    assert [r.usage for r in store.activity(day, day, "")] == [Decimal("9.5")]
    per_key = {r.key_hash: r for r in store.activity(day, day, None)}
    assert per_key["h1"].usage == Decimal("1.250000000001")  # both endpoints, to the pico-dollar
    assert per_key["h1"].byok_usage == Decimal(1) and per_key["h1"].requests == 6
    assert per_key["h2"].usage == Decimal("1234.5678")
    assert store.activity(day, day, "h1")[0].model == "openai/gpt-4o"
    assert "key_snapshots" not in tables(store.conn)
    store.conn.close()


def test_newer_database_is_refused(fresh_db_target: str) -> None:
    db = connect(fresh_db_target)
    with db.write():  # a newer program migrated it further
        db.execute("INSERT INTO schema_migrations (version, applied_at) VALUES (?, 'x')",
                   (SCHEMA_VERSION + 1,))
        db.set_schema_version(SCHEMA_VERSION + 1)
    with pytest.raises(DataError, match="newer"):
        migrate(db)
    with pytest.raises(DataError, match="newer"):
        connect(fresh_db_target)
    db.close()


def test_not_a_database_is_a_data_error(tmp_path: Path) -> None:
    path = tmp_path / "junk.db"
    path.write_bytes(b"this is not a sqlite database at all, not even close" * 100)
    with pytest.raises(DataError, match="history database"):
        connect(path)


def test_failed_migration_rolls_back(fresh_db_target: str, monkeypatch: pytest.MonkeyPatch) -> None:
    conn = open_db(fresh_db_target)
    migrate(conn, target=1)
    broken = ("CREATE TABLE fine (x TEXT)", "CREATE TABLE broken (")
    monkeypatch.setattr("bot.store.MIGRATIONS", [MIGRATIONS[0], broken])
    with pytest.raises(DataError, match="history database is busy or unusable"):
        migrate(conn, target=2)
    assert conn.schema_version() == 1
    assert versions(conn) == [1]
    assert "fine" not in conn.tables()
    conn.close()
