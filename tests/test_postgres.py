"""PostgreSQL as the history database: `storage.url`, writers at once, lost connections.

The concurrency tests run on both backends: several connections (threads, as several
processes or machines would) race for the same claim, lease or rows.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

import pytest

import bot.store as history
from bot.app import App
from bot.config import load_config
from bot.errors import ConfigError, DataError
from bot.models import ActivityRow, ApiKey, Credits, Snapshot
from bot.store import SCHEMA_VERSION, AlertState, Store, connect, migrate
from bot.store.backend import (
    MultiRowDelete,
    MultiRowInsert,
    MultiRowUpdate,
    open_db,
    redact_url,
)
from tests.pg_server import PgServer

T0 = dt.datetime(2024, 5, 31, 12, 0, tzinfo=dt.UTC)
D = dt.date(2024, 5, 30)
WRITERS = 6
R = TypeVar("R")


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


# --- configuration ---------------------------------------------------------------------------


def test_storage_url_with_a_password_from_the_environment(tmp_path: Path) -> None:
    path = write(tmp_path, "storage:\n  url: postgresql://bot:${PG_PASS}@db:5432/usage\n"
                           "  lease: 20s\n")
    cfg = load_config(path, {"PG_PASS": "s3cret/pa@ss"})  # not URL-encoded: still hidden
    assert cfg.storage_url == "postgresql://bot:s3cret/pa@ss@db:5432/usage"
    assert App(config=cfg, env={}).storage_name() == "postgresql://bot@db:5432/usage"
    assert cfg.lease_ttl == dt.timedelta(seconds=20)
    app = App(config=cfg, env={})
    assert "s3cret/pa@ss" in app.secrets()
    encoded = App(config=load_config(path, {"PG_PASS": "p%40ss%2Fword"}), env={})
    assert {"p%40ss%2Fword", "p@ss/word"} <= set(encoded.secrets())
    assert encoded.storage_name() == "postgresql://bot@db:5432/usage"


@pytest.mark.parametrize(("storage", "message"), [
    ("{url: 'mysql://x/y'}", "storage.url: expected a postgresql://"),
    ("{url: '/var/lib/history.db'}", "storage.url: expected a postgresql://"),
    ("{url: 42}", "storage.url: expected a string"),
    ("{url: 'postgresql://h/db', path: a.db}", "storage: set either path"),
    ("{url: 'postgresql://h/db', lease: 0s}", "storage.lease: must be longer than zero"),
    ("{url: 'postgresql://h/db', pool: 3}", "storage.pool: unknown option"),
])
def test_bad_storage_options_name_the_key(tmp_path: Path, storage: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, f"storage: {storage}\n"), {})


def test_unset_variable_in_the_url_never_falls_back_to_sqlite(tmp_path: Path) -> None:
    path = write(tmp_path, "storage: {url: 'postgresql://bot:${PG_PASS}@db/usage'}\n")
    for strict in (True, False):  # `sync` and `report` read the config leniently
        with pytest.raises(ConfigError, match="storage.url"):
            load_config(path, {}, strict=strict)


def test_redact_url_drops_only_the_password() -> None:
    assert redact_url("postgresql://u:pw@h:5/d?sslmode=require") == \
        "postgresql://u@h:5/d?sslmode=require"
    assert redact_url("postgresql://u@h/d") == "postgresql://u@h/d"
    assert redact_url("postgresql://u:pw@[::1]:5432/d") == "postgresql://u@[::1]:5432/d"


def test_unreachable_server_is_one_clear_line_without_the_password(pg_server: PgServer) -> None:
    url = f"postgresql://bot:hunter22@127.0.0.1:{pg_server.port}/no_such_db?connect_timeout=2"
    with pytest.raises(DataError) as err:
        connect(url)
    text = str(err.value)
    assert "cannot connect to history database postgresql://bot@127.0.0.1" in text
    assert "no_such_db" in text and "hunter22" not in text and "\n" not in text


# --- writers at once -------------------------------------------------------------------------


def race(target: str, n: int, work: Callable[[Store, int], R], *,
         migrated: bool = True) -> list[R]:
    """Run `work` in `n` threads, each on its own connection (as separate processes would),
    released at the same instant; a store if `migrated`, else a bare connection."""
    barrier = threading.Barrier(n, timeout=30)
    results: list[Any] = [None] * n

    def run(i: int) -> None:
        db = None
        try:
            db = open_db(target)
            db.set_busy_timeout(60_000)  # this is about correctness, not a slow machine
            store = Store(db) if migrated else db
            barrier.wait()
            results[i] = work(store, i)  # type: ignore[arg-type]
        except Exception as exc:  # noqa: BLE001 - reported below
            barrier.abort()
            results[i] = exc
        finally:
            if db is not None:
                db.close()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    errors = [r for r in results if isinstance(r, Exception)]
    assert not errors, errors
    return results


def test_one_claim_wins_among_writers_at_once(db_target: str) -> None:
    store = Store(connect(db_target))
    deliveries = [store.outbox_put("daily", f"2024-05-{d:02d}", "slack:#ops", "{}", T0)
                  for d in range(1, 6)]
    store.conn.close()
    for d in deliveries:
        claims = race(db_target, WRITERS,
                      lambda s, i, d=d: s.outbox_begin(d.id, T0, holder=f"run-{i}") is not None)
        assert sorted(claims) == [False] * (WRITERS - 1) + [True]
    check = Store(connect(db_target))
    assert {x.attempts for x in check.outbox_due()} == {1}
    check.conn.close()


def test_one_lease_holder_among_daemons_at_once(db_target: str) -> None:
    ttl = dt.timedelta(seconds=30)
    for round_ in range(3):
        now = T0 + dt.timedelta(minutes=round_)  # each round after the last one expired
        got = race(db_target, WRITERS,
                   lambda s, i, now=now: s.lease_acquire("daemon", f"host-{i}", now, ttl))
        assert got.count(True) == 1
    holder = Store(connect(db_target))
    row = holder.conn.row("SELECT holder FROM leases WHERE name = 'daemon'")
    assert row is not None and row["holder"].startswith("host-")
    holder.conn.close()


def test_history_upserts_from_writers_at_once(db_target: str) -> None:
    def rows(i: int) -> list[ActivityRow]:
        # every writer saves the same 20 days; the figures grow with i (a later fetch)
        return [ActivityRow(date=D - dt.timedelta(days=d), model="m", model_permaslug="m-1",
                            endpoint_id="ep", provider="P", usage=Decimal(f"1.{i}"),
                            byok_usage=Decimal(0), requests=i, prompt_tokens=1,
                            completion_tokens=1, reasoning_tokens=0) for d in range(20)]

    def save(store: Store, i: int) -> Any:
        keys = [ApiKey(hash=f"h{k}", name=f"key {k}", usage=Decimal(i)) for k in range(5)]
        snap = Snapshot(T0 + dt.timedelta(seconds=i), credits=Credits(Decimal(100), Decimal(i)),
                        activity=rows(i), keys=keys, key_activity={"h1": rows(i)})
        return store.save_snapshot(snap)

    stats = race(db_target, WRITERS, save)
    assert sum(s.activity_new for s in stats) == 40  # each row inserted exactly once
    assert sum(s.keys_new for s in stats) == 5
    store = Store(connect(db_target))
    assert store.conn.value("SELECT count(*) FROM activity") == 20  # org-wide
    assert store.conn.value("SELECT count(*) FROM key_usage") == 20  # key h1
    assert store.conn.value("SELECT count(*) FROM coverage") == 60
    assert len(store.keys()) == 5
    latest = WRITERS - 1  # the newest fetch wins however the writers interleaved
    assert {k.usage for k in store.keys()} == {Decimal(latest)}
    assert store.credits_at() == (T0 + dt.timedelta(seconds=latest),
                                  Credits(Decimal(100), Decimal(latest)))
    store.conn.close()


def test_alert_state_from_writers_at_once(db_target: str) -> None:
    def put(store: Store, i: int) -> None:
        for n in range(10):
            store.alert_put(AlertState(f"rule{n % 3}", "credits", "firing", f"${i}.{n}", T0,
                                       T0 + dt.timedelta(seconds=i), {"slack:#ops": f"{i}.{n}"}))

    race(db_target, WRITERS, put)
    store = Store(connect(db_target))
    states = store.alert_all()
    assert [s.rule_id for s in states] == ["rule0", "rule1", "rule2"]
    assert all(s.threads["slack:#ops"] == s.value.lstrip("$") for s in states)  # whole rows
    store.conn.close()


def test_migrations_from_processes_starting_at_once(fresh_db_target: str) -> None:
    versions = race(fresh_db_target, WRITERS, lambda db, i: migrate(db), migrated=False)
    assert versions == [SCHEMA_VERSION] * WRITERS
    db = open_db(fresh_db_target)
    assert [v for (v,) in db.execute("SELECT version FROM schema_migrations ORDER BY 1")] == \
        list(range(1, SCHEMA_VERSION + 1))
    db.close()


# --- many rows at once -----------------------------------------------------------------------

BULK_TABLE = ("CREATE TABLE bulk (k1 TEXT NOT NULL, k2 BIGINT NOT NULL, n BIGINT NOT NULL, "
              "note TEXT NOT NULL, PRIMARY KEY (k1, k2))")
ACCUMULATE = ("INSERT INTO bulk (k1, k2, n, note) VALUES (?, ?, ?, ?) ON CONFLICT (k2, k1) DO "
              "UPDATE SET n = bulk.n + excluded.n, note = bulk.note || '%' || excluded.note "
              "WHERE excluded.n > 0")
FIRST_WINS = "INSERT INTO bulk (k1, k2, n, note) VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING"


def bulk_rows(count: int) -> list[tuple[str, int, int, str]]:
    """Rows whose keys come back at once and 150 rows later, across every batch; some of
    their updates are refused by the WHERE (n <= 0)."""
    rows = []
    for i in range(count):
        rows.append((f"k{i % 3}", (i * 7) % 50, (i % 5) - 1, f"r{i}"))  # a key every 150 rows
        if i % 11 == 0:
            rows.append((f"k{i % 3}", (i * 7) % 50, 2, f"again{i}"))  # and right after it
    return rows


def one_at_a_time(rows: list[tuple[str, int, int, str]], accumulate: bool) -> tuple[
        dict[tuple[str, int], tuple[int, str]], int]:
    """What executemany means: each row in turn; and how many rows it changed."""
    table: dict[tuple[str, int], tuple[int, str]] = {}
    changed = 0
    for k1, k2, n, note in rows:
        if (k1, k2) not in table:
            table[(k1, k2)] = (n, note)
            changed += 1
        elif accumulate and n > 0:
            old_n, old_note = table[(k1, k2)]
            table[(k1, k2)] = (old_n + n, f"{old_note}%{note}")
            changed += 1
    return table, changed


@pytest.mark.parametrize("sql", [ACCUMULATE, FIRST_WINS], ids=["do-update", "do-nothing"])
def test_many_rows_at_once_mean_what_one_row_at_a_time_means(db_target: str, sql: str) -> None:
    """PostgreSQL gets an INSERT of many rows as a few statements of many rows each; the
    outcome and the count of changed rows are those of one row at a time, on each backend."""
    rows = bulk_rows(2_345)
    want, changed = one_at_a_time(rows, accumulate=sql is ACCUMULATE)
    db = open_db(db_target)
    try:
        with db.write():
            db.execute(BULK_TABLE)
            assert db.executemany(sql, rows).rowcount == changed
            got = {(r["k1"], r["k2"]): (r["n"], r["note"]) for r in db.rows("SELECT * FROM bulk")}
    finally:
        db.close()
    assert got == want
    assert len(want) < len(rows)  # keys came back
    if sql is ACCUMULATE:
        assert changed > len(want)  # and some of them updated their row


def test_deleting_many_rows_at_once_deletes_each_once(db_target: str) -> None:
    rows = bulk_rows(600)
    kept, _ = one_at_a_time(rows, accumulate=False)
    gone = [(k1, k2) for (k1, k2) in kept if k2 % 3 == 0]
    # more rows than one statement takes, some asked twice, some never there
    asked = [("k9", 1)] * 999 + gone + [("k0", 999)] + gone[-5:]
    db = open_db(db_target)
    try:
        with db.write():
            db.execute(BULK_TABLE)
            db.executemany(FIRST_WINS, rows)
            deleted = db.executemany("DELETE FROM bulk WHERE k1 = ? AND k2 = ?", asked).rowcount
            left = {(r["k1"], r["k2"]) for r in db.rows("SELECT k1, k2 FROM bulk")}
    finally:
        db.close()
    assert deleted == len(gone) and left == set(kept) - set(gone)


GUARDED_UPDATE = ("UPDATE bulk SET n = ?, note = ? WHERE k1 = ? AND k2 = ? AND n <= ? "
                  "AND (n != ? OR note != ?)")


def test_updating_many_rows_at_once_means_one_row_at_a_time(db_target: str) -> None:
    """An update that the one before it changed the row for sees that change, as one at a
    time; the guard (n <= limit, something differs) refuses some."""
    rows = bulk_rows(300)
    table, _ = one_at_a_time(rows, accumulate=False)
    keys = sorted(table)
    asked = []
    for i in range(2_200):
        k1, k2 = keys[(i * 13) % len(keys)]
        asked.append((i % 7, f"u{i % 3}", k1, k2, 2 + i % 4, i % 7, f"u{i % 3}"))
        if i % 9 == 0:  # the same row again at once, the guard now reading the new figures
            asked.append((i % 5, "again", k1, k2, 3, i % 5, "again"))
    want = dict(table)
    changed = 0
    for n, note, k1, k2, limit, _, _ in asked:
        old_n, old_note = want[(k1, k2)]
        if old_n <= limit and (old_n != n or old_note != note):
            want[(k1, k2)] = (n, note)
            changed += 1
    db = open_db(db_target)
    try:
        with db.write():
            db.execute(BULK_TABLE)
            db.executemany(FIRST_WINS, rows)
            assert db.executemany(GUARDED_UPDATE, asked).rowcount == changed
            got = {(r["k1"], r["k2"]): (r["n"], r["note"]) for r in db.rows("SELECT * FROM bulk")}
    finally:
        db.close()
    assert got == want and 0 < changed < len(asked)


HOSTILE_TEXT = ["NULL", "null", "", " ", "{a,b}", '"quoted"', "back\\slash", "a,b", "(1,2)",
                "it's", "%s", "%(x)s", "ünï ☃ 🙂", "line\nbreak", "tab\t", "<!channel>"]


def test_awkward_text_survives_many_rows_at_once(db_target: str) -> None:
    rows = [("k", i, i, text) for i, text in enumerate(HOSTILE_TEXT)]
    db = open_db(db_target)
    try:
        with db.write():
            db.execute(BULK_TABLE)
            db.executemany(FIRST_WINS, rows)
            db.executemany(GUARDED_UPDATE, [(n, note + "!", k1, k2, n, n, note + "!")
                                            for k1, k2, n, note in rows])
            db.executemany("DELETE FROM bulk WHERE k1 = ? AND k2 = ?", [("k", 0), ("k", 99)])
            got = {r["k2"]: r["note"] for r in db.rows("SELECT k2, note FROM bulk")}
    finally:
        db.close()
    assert got == {i: text + "!" for i, text in enumerate(HOSTILE_TEXT) if i != 0}


def test_the_writes_of_the_history_go_many_rows_at_once_on_postgresql() -> None:
    assert MultiRowInsert.of(ACCUMULATE) is not None and MultiRowInsert.of(FIRST_WINS) is not None
    assert all(MultiRowInsert.of(sql) is not None for sql in (  # a sync's bulk of rows
        history._KEY_USAGE_INSERT, history._KEY_USAGE_UPSERT,
        # `migrate --to`'s copy names the table and columns quoted
        'INSERT INTO "bulk" ("k1", "k2", "n", "note") VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING'))
    # an UPDATE, a RETURNING, and a conflict target we cannot see go one row at a time
    assert MultiRowInsert.of("UPDATE bulk SET n = ? WHERE k1 = ?") is None
    assert MultiRowInsert.of(ACCUMULATE + " RETURNING n") is None
    assert MultiRowInsert.of(ACCUMULATE.replace("(k2, k1) ", "")) is None
    assert MultiRowDelete.of("DELETE FROM key_usage WHERE date = ? AND key_id = ? AND "
                             "source = ?") is not None
    for other in ("DELETE FROM bulk WHERE k1 = ? OR k2 = ?", "DELETE FROM bulk WHERE k2 > ?",
                  "DELETE FROM bulk WHERE k1 = ? AND note LIKE ?"):
        assert MultiRowDelete.of(other) is None
    assert MultiRowUpdate.of(history._KEY_USAGE_UPDATE) is not None
    for other in ("UPDATE bulk SET n = ? WHERE k1 = ? OR k2 = ?",  # keys do not pick one row
                  "UPDATE bulk SET n = n + ? WHERE k1 = ?", "UPDATE bulk SET n = ? WHERE k2 > ?",
                  "UPDATE bulk SET note = 'x' WHERE k1 = ?",
                  "UPDATE bulk SET n = ? WHERE k1 = ? AND n < (SELECT max(n) FROM bulk)"):
        assert MultiRowUpdate.of(other) is None


# --- lost connections ------------------------------------------------------------------------


def test_a_lost_connection_fails_one_call_and_the_next_reconnects(
    pg_server: PgServer, pg_url: str
) -> None:
    store = Store(connect(pg_url))
    store.set_meta("k", "1")
    assert pg_server.terminate_connections(pg_url) == 1  # the server drops our session
    with pytest.raises(DataError, match="connection lost"):
        store.get_meta("k")
    assert store.get_meta("k") == "1"  # a new connection, same data

    pg_server.terminate_connections(pg_url)
    with pytest.raises(DataError, match="connection lost"):
        store.set_meta("k", "2")  # a write transaction cut off: rolled back, one clear error
    assert not store.conn.in_transaction
    store.set_meta("k", "3")
    assert store.get_meta("k") == "3"
    store.conn.close()


def test_a_writer_that_holds_the_lock_too_long_is_a_busy_error(pg_url: str) -> None:
    a, b = Store(connect(pg_url)), Store(connect(pg_url))
    b.conn.set_busy_timeout(50)
    with a.conn.write():
        with pytest.raises(DataError, match="busy"):
            b.set_meta("k", "v")
    b.set_meta("k", "v")  # the lock is free again
    assert a.get_meta("k") == "v"
    a.conn.close()
    b.conn.close()


def test_daemon_jobs_survive_a_lost_database_connection(
    pg_server: PgServer, pg_url: str, fake_openrouter: Any, fake_slack: Any, tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    import logging

    from bot.scheduler import Daemon
    from tests.fake_openrouter import MANAGEMENT_KEY, sample_org

    caplog.set_level(logging.INFO, logger="bot")
    org = sample_org(last_day=D, days=3)
    fake_openrouter.credits, fake_openrouter.keys = org["credits"], org["keys"]
    fake_openrouter.activity_rows = org["activity"]
    fake_openrouter.key_activity = org["key_activity"]
    path = write(tmp_path, f"storage: {{url: '{pg_url}'}}\nreports: {{daily: {{enabled: false}}, "
                           "weekly: {enabled: false}}\n")
    env = {"OPENROUTER_MANAGEMENT_KEY": MANAGEMENT_KEY,
           "OPENROUTER_BASE_URL": fake_openrouter.base_url}
    daemon = Daemon(App(config=load_config(path, env), env=env, now=lambda: T0))
    daemon.setup()
    assert daemon.run_job("sync", daemon.sync)
    pg_server.terminate_connections(pg_url)  # the database restarts, or the network drops
    assert not daemon.run_job("sync", daemon.sync)  # one failed job, logged...
    assert "job sync failed" in caplog.text and "connection lost" in caplog.text
    assert daemon.run_job("sync", daemon.sync)  # ...and the next one runs on a new connection
    assert daemon.leader
    daemon.app.close()


def test_daemon_waits_for_a_database_that_is_not_up_yet(tmp_path: Path) -> None:
    import os
    import signal
    import subprocess
    import sys

    from tests.pg_server import free_port

    url = f"postgresql://bot:secret-pw-1@127.0.0.1:{free_port()}/usage?connect_timeout=2"
    config = write(tmp_path, f"storage: {{url: '{url}'}}\nreports: {{daily: {{to: [stdout]}}, "
                             "weekly: {enabled: false}}\n")  # the schedule is in the database
    env = dict(os.environ, OPENROUTER_USAGE_CONFIG=str(config),
               OPENROUTER_MANAGEMENT_KEY="k" * 20)
    exe = str(Path(sys.executable).parent / "openrouter-usage")
    proc = subprocess.Popen([exe, "run"], env=env, cwd=tmp_path, text=True,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        assert proc.stderr is not None
        first = proc.stderr.readline()  # nothing listens on that port: no database yet
        assert "cannot start yet" in first and "trying again" in first
        assert proc.poll() is None  # still running, waiting for it
    finally:
        proc.send_signal(signal.SIGTERM)
        _, rest = proc.communicate(timeout=30)
    assert proc.returncode == 0
    assert "secret-pw-1" not in first + rest and "postgresql://bot@127.0.0.1" in first


def test_a_schema_given_back_is_empty_counts_from_1_and_a_changed_one_is_never_reused(
    pg_server: PgServer,
) -> None:
    """The tests' pool of migrated schemas (tests/pg_server.py): what one test wrote is gone
    before the next gets the schema, identity columns start at 1 again, and a schema whose
    shape a test changed is dropped, not handed out."""
    import psycopg

    url = pg_server.migrated_schema()
    with psycopg.connect(url, autocommit=True) as conn:
        ids = [conn.execute("INSERT INTO key_ids (hash) VALUES (%s) RETURNING id",
                            (f"h{i}",)).fetchone()[0] for i in range(3)]
        conn.execute("INSERT INTO meta (key, value) VALUES ('k', 'v')")
    assert ids == [1, 2, 3]
    pg_server.give_back(url)
    again = pg_server.migrated_schema()
    assert again == url  # reused
    with psycopg.connect(again, autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM key_ids").fetchone()[0] == 0
        assert conn.execute("SELECT count(*) FROM meta").fetchone()[0] == 0
        assert conn.execute("INSERT INTO key_ids (hash) VALUES ('x') RETURNING id"
                            ).fetchone()[0] == 1
        assert conn.execute("SELECT count(*) FROM schema_migrations").fetchone()[0] \
            == SCHEMA_VERSION  # the migrations recorded stay
        conn.execute("ALTER TABLE meta ADD COLUMN extra TEXT")
    pg_server.give_back(again)
    fresh = pg_server.migrated_schema()
    assert fresh != again
    with psycopg.connect(fresh, autocommit=True) as conn:
        gone = conn.execute("SELECT count(*) FROM pg_namespace WHERE nspname = %s",
                            (again.rsplit("application_name=", 1)[1],)).fetchone()[0]
    assert gone == 0
    pg_server.give_back(fresh)
