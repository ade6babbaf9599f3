"""The two database backends behind the store, with one interface: SQLite and PostgreSQL.

Every dialect difference lives here: placeholders (the store writes ``?``), the write
transaction (SQLite's ``BEGIN IMMEDIATE``; on PostgreSQL a transaction holding one
transaction-scoped advisory lock, so writers are serialised exactly as SQLite serialises them
and read-then-write code is safe on both), column types in migrations (``INTEGER`` is 64-bit
``BIGINT``, an ``INTEGER PRIMARY KEY`` an identity column), the schema version (SQLite's
``user_version``; on PostgreSQL the ``schema_migrations`` table), and errors: every driver
error becomes one ``DataError`` line. A PostgreSQL connection that was lost is opened again
on the next call, so a dropped connection fails one job and the next one works.

The SQL the store writes is otherwise portable: ``INSERT ... ON CONFLICT``, ``RETURNING``-free
inserts through :meth:`Db.insert`, no ``INSERT OR ...``, no scalar ``max()``/``min()``.
Money and times are TEXT on both (exact decimals; fixed-width ISO UTC, so text order is time
order).
"""

from __future__ import annotations

import re
import sqlite3
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from bot.errors import DataError

if TYPE_CHECKING:
    import psycopg

Dialect = Literal["sqlite", "postgresql"]
BUSY_TIMEOUT_MS = 5000
CONNECT_TIMEOUT_S = 10
# pg_advisory_xact_lock key held by every write transaction: "oru-hist" as a 64-bit integer
WRITE_LOCK_KEY = int.from_bytes(b"oru-hist", "big") - 2**63
POSTGRES_SCHEMES = ("postgresql", "postgres")


class Cursor(Protocol):
    """What `Db.execute` returns: sqlite3's and psycopg's cursors both fit."""

    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    def __iter__(self) -> Iterator[Any]: ...


def is_postgres_url(target: str | Path) -> bool:
    return isinstance(target, str) and target.split(":", 1)[0].lower() in POSTGRES_SCHEMES


# scheme://user:password@rest, the password running to the last "@" (so an unencoded "@" or
# "/" in it is still all hidden; where unsure, more is hidden, never less)
_URL_PASSWORD = re.compile(r"^(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^:@/?#]*):(?P<password>.*)@"
                           r"(?P<rest>[^@]*)$", re.S)


def url_password(url: str) -> str | None:
    """The password written in a database URL, if any."""
    m = _URL_PASSWORD.match(url)
    return m["password"] if m else None


def redact_url(url: str) -> str:
    """A database URL fit for messages and logs: the password is dropped."""
    m = _URL_PASSWORD.match(url)
    return f"{m['head']}@{m['rest']}" if m else url


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return " ".join(text[0].split()) if text else type(exc).__name__


class Db:
    """One connection to the history database; the store's only way to run SQL."""

    dialect: Dialect
    target: str  # the path, or the URL without its password
    now_sql: str  # the database's clock as ISO UTC text (for audit notes only)

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Cursor:
        raise NotImplementedError

    def executemany(self, sql: str, seq: Iterable[Sequence[Any]]) -> Cursor:
        raise NotImplementedError

    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        """Every row; a row is read by column name (``r["usage"]``) or position."""
        raise NotImplementedError

    def insert(self, sql: str, params: Sequence[Any] = (), key: str = "id") -> int:
        """Run one INSERT and return the generated `key` of the new row."""
        raise NotImplementedError

    @contextmanager
    def write(self) -> Iterator[Db]:
        """One write transaction, taking the database's write lock up front (no
        read-then-write races); inside another one it just joins it. A lock still held by
        another writer after the busy timeout is a DataError, and so is any other failure."""
        raise NotImplementedError
        yield self  # pragma: no cover

    @property
    def in_transaction(self) -> bool:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def set_busy_timeout(self, ms: int) -> None:
        """How long a writer waits for another's write lock before giving up."""
        raise NotImplementedError

    # --- schema --------------------------------------------------------------------------

    def schema_version(self) -> int:
        raise NotImplementedError

    def set_schema_version(self, version: int) -> None:
        """Record `version` as applied (inside the migration's write transaction)."""
        raise NotImplementedError

    def ddl(self, statement: str) -> str:
        """A migration statement in this dialect."""
        return statement

    def tables(self) -> list[str]:
        """The user tables, sorted."""
        raise NotImplementedError

    def columns(self, table: str) -> list[str]:
        """The columns of `table`, in order."""
        raise NotImplementedError

    def reset_identity(self, table: str, column: str = "id") -> None:
        """After rows were inserted with explicit ids: new rows get ids above them."""

    def location(self) -> str | None:
        """What `open_db` takes to open another connection to this database (the URL with
        its password: never for display); None for a SQLite database in memory."""
        raise NotImplementedError

    def row(self, sql: str, params: Sequence[Any] = ()) -> Any | None:
        rows = self.rows(sql, params)
        return rows[0] if rows else None

    def value(self, sql: str, params: Sequence[Any] = ()) -> Any:
        """The first column of the first row (None if there is no row)."""
        row = self.execute(sql, params).fetchone()
        return None if row is None else row[0]


# --- SQLite ----------------------------------------------------------------------------------


def _wal(conn: sqlite3.Connection) -> None:
    """Switch a database file to WAL (once: it stays so). The switch needs the file to
    itself and does not wait for the busy timeout, so processes opening a new file at the
    same moment retry it for as long."""
    if str(conn.execute("PRAGMA journal_mode").fetchone()[0]).lower() == "wal":
        return
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


class SqliteDb(Db):
    """A sqlite3 connection in explicit-transaction mode (WAL for files)."""

    dialect: Dialect = "sqlite"
    now_sql = "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')"

    def __init__(self, conn: sqlite3.Connection, target: str = ":memory:") -> None:
        self.raw = conn
        self.target = target

    @classmethod
    def open(cls, path: str | Path, *, read_only: bool = False) -> SqliteDb:
        """The database at `path`; `read_only` opens an existing file without writing
        anything, even where its WAL index cannot be created (a read-only folder)."""
        if read_only:
            return cls._open_read_only(Path(path))
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
                _wal(conn)
        except sqlite3.Error as exc:
            conn.close()
            raise DataError(f"cannot use history database {path}: {exc}") from exc
        return cls(conn, str(path))

    @classmethod
    def _open_read_only(cls, path: Path) -> SqliteDb:
        from urllib.parse import quote

        uri = f"file:{quote(str(path.resolve()))}"
        failure: sqlite3.Error | None = None
        # immutable: when not even the WAL index can be made, nobody can be writing it either
        for options in ("mode=ro", "mode=ro&immutable=1"):
            try:
                conn = sqlite3.connect(f"{uri}?{options}", uri=True, isolation_level=None,
                                       timeout=BUSY_TIMEOUT_MS / 1000)
            except sqlite3.Error as exc:
                failure = exc
                continue
            try:
                conn.execute("PRAGMA user_version").fetchone()
                return cls(conn, str(path))
            except sqlite3.Error as exc:
                conn.close()
                failure = exc
        raise DataError(f"cannot read history database {path}: {failure}")

    def _fail(self, exc: sqlite3.Error) -> DataError:
        return DataError(f"history database is busy or unusable: {exc}")

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Cursor:
        try:
            return self.raw.execute(sql, params)
        except sqlite3.Error as exc:
            raise self._fail(exc) from exc

    def executemany(self, sql: str, seq: Iterable[Sequence[Any]]) -> Cursor:
        try:
            return self.raw.executemany(sql, seq)
        except sqlite3.Error as exc:
            raise self._fail(exc) from exc

    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        cur = self.raw.cursor()
        cur.row_factory = sqlite3.Row
        try:
            return cur.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise self._fail(exc) from exc

    def insert(self, sql: str, params: Sequence[Any] = (), key: str = "id") -> int:
        cur = self.raw.cursor()
        try:
            cur.execute(sql, params)
        except sqlite3.Error as exc:
            raise self._fail(exc) from exc
        assert cur.lastrowid is not None
        return cur.lastrowid

    @contextmanager
    def write(self) -> Iterator[Db]:
        if self.raw.in_transaction:
            yield self
            return
        try:
            with self.raw:
                self.raw.execute("BEGIN IMMEDIATE")
                yield self
        except sqlite3.Error as exc:
            raise self._fail(exc) from exc

    @property
    def in_transaction(self) -> bool:
        return self.raw.in_transaction

    def close(self) -> None:
        self.raw.close()

    def set_busy_timeout(self, ms: int) -> None:
        self.execute(f"PRAGMA busy_timeout = {int(ms):d}")

    def schema_version(self) -> int:
        return int(self.value("PRAGMA user_version"))

    def set_schema_version(self, version: int) -> None:
        self.execute(f"PRAGMA user_version = {int(version):d}")

    def tables(self) -> list[str]:
        rows = self.execute("SELECT name FROM sqlite_master WHERE type = 'table' "
                            "AND name NOT LIKE 'sqlite_%' ORDER BY name").fetchall()
        return [name for (name,) in rows]

    def columns(self, table: str) -> list[str]:
        return [r[1] for r in self.execute(f'PRAGMA table_info("{table}")').fetchall()]

    def location(self) -> str | None:
        row = self.execute("PRAGMA database_list").fetchone()
        return str(row[2]) if row is not None and row[2] else None


# --- PostgreSQL ------------------------------------------------------------------------------


@lru_cache(maxsize=512)
def _pg_sql(sql: str) -> str:
    """`?` placeholders (outside quotes) to psycopg's `%s`; a literal `%` doubled."""
    out: list[str] = []
    quote = ""
    for ch in sql:
        if quote:
            if ch == quote:
                quote = ""
        elif ch in ("'", '"'):
            quote = ch
        elif ch == "?":
            out.append("%s")
            continue
        out.append("%%" if ch == "%" else ch)
    return "".join(out)


_PG_DDL = [
    (re.compile(r"\bINTEGER\s+PRIMARY\s+KEY(\s+AUTOINCREMENT)?\b", re.I),
     "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY"),
    (re.compile(r"\bINTEGER\b", re.I), "BIGINT"),
    (re.compile(r"\bREAL\b", re.I), "DOUBLE PRECISION"),
    (re.compile(r"\bBLOB\b", re.I), "BYTEA"),
    (re.compile(r"\)\s*WITHOUT\s+ROWID\s*$", re.I), ")"),
]


class Row(tuple[Any, ...]):
    """A PostgreSQL row read by position or by column name, like sqlite3.Row."""

    _index: Mapping[str, int]

    def __new__(cls, values: Sequence[Any], index: Mapping[str, int]) -> Row:
        row = super().__new__(cls, values)
        row._index = index
        return row

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            return super().__getitem__(self._index[key])
        return super().__getitem__(key)

    def keys(self) -> list[str]:
        return list(self._index)


def _row_factory(cursor: Any) -> Any:
    names = [c.name for c in cursor.description or ()]
    index = {n: i for i, n in enumerate(names)}
    return lambda values: Row(values, index)


class _Changed(list[Any]):
    """What a batched executemany returns: the number of rows its statements changed."""

    def __init__(self, rowcount: int) -> None:
        super().__init__()
        self.rowcount = rowcount

    def fetchone(self) -> Any:
        return None

    def fetchall(self) -> list[Any]:
        return []


class _BulkPlan:
    """How one statement of `executemany` goes many rows at a time: one typed array per
    `columns` entry (the column each parameter goes to or is compared with), at most `ROWS`
    rows a statement, and rows with the same values at `key`'s positions never in one
    statement (they could reach the same row; None: no two can)."""

    ROWS = 1000

    def __init__(self, table: str, columns: list[str], key: tuple[int, ...] | None) -> None:
        self.table = table
        self.columns = columns
        self._key = key

    def _arrays(self, types: Mapping[str, str]) -> str:
        return ", ".join(f"%s::{types[c]}[]" for c in self.columns)

    def _quoted_columns(self) -> str:
        return ", ".join(f'"{c}"' for c in self.columns)

    def batches(self, rows: list[tuple[Any, ...]]) -> Iterator[list[tuple[Any, ...]]]:
        """`rows` in order, cut into statements."""
        batch: list[tuple[Any, ...]] = []
        seen: set[tuple[Any, ...]] = set()
        for row in rows:
            value = tuple(row[i] for i in self._key) if self._key is not None else None
            if len(batch) >= self.ROWS or (value is not None and value in seen):
                yield batch
                batch, seen = [], set()
            batch.append(row)
            if value is not None:
                seen.add(value)
        if batch:
            yield batch


def _names(text: str) -> list[str]:
    """`a, "b"` -> ["a", "b"]."""
    return [c.strip().strip('"') for c in text.split(",")]


_INSERT = re.compile(
    r"^\s*INSERT\s+INTO\s+\"?(\w+)\"?\s*\(([^()]*)\)\s*VALUES\s*\(([\s?,]*)\)(.*)$", re.S | re.I)
_CONFLICT = re.compile(r"\bON\s+CONFLICT\s*(?:\(([^()]*)\))?\s*DO\s+(NOTHING|UPDATE)\b", re.I)


class MultiRowInsert(_BulkPlan):
    """`INSERT INTO t (cols) VALUES (?, ...) [ON CONFLICT ...]` sent with many rows per
    statement (`INSERT ... SELECT * FROM unnest(an array per column)`), with executemany's
    meaning kept: rows that would hit the same conflict key go in different statements, in
    their order (one statement may not update a row twice)."""

    def __init__(self, table: str, columns: list[str], tail: str,
                 key: tuple[int, ...] | None) -> None:
        super().__init__(table, columns, key)  # key: the DO UPDATE conflict key's positions
        self._tail = _pg_sql(tail)

    @classmethod
    @lru_cache(maxsize=128)
    def of(cls, sql: str) -> MultiRowInsert | None:
        """The plan for `sql`, or None where it is not such an INSERT (sent row by row)."""
        match = _INSERT.match(sql)
        if match is None:
            return None
        table, columns, values, tail = match.groups()
        if re.search(r"\b(RETURNING|SELECT)\b", tail, re.I) or "?" in tail:
            return None
        names = _names(columns)
        if values.count("?") != len(names) or values.replace("?", "").replace(",", "").strip():
            return None
        conflict = _CONFLICT.search(tail)
        key: tuple[int, ...] | None = None
        if conflict is not None and conflict.group(2).upper() == "UPDATE":
            if conflict.group(1) is None:
                return None
            target = _names(conflict.group(1))
            if not set(target) <= set(names):
                return None
            key = tuple(names.index(c) for c in target)
        return cls(table, names, tail, key)

    def sql(self, types: Mapping[str, str]) -> str:
        """The statement for a table whose columns have `types`: one array per column."""
        return (f'INSERT INTO "{self.table}" ({self._quoted_columns()}) '
                f"SELECT * FROM unnest({self._arrays(types)}) {self._tail}")


_DELETE = re.compile(r"^\s*DELETE\s+FROM\s+(\w+)\s+WHERE\s+(.+?)\s*$", re.S | re.I)
_EQUALS = re.compile(r'^\s*"?(\w+)"?\s*=\s*\?\s*$')


class MultiRowDelete(_BulkPlan):
    """`DELETE FROM t WHERE a = ? AND b = ?` for many rows as a few statements,
    `DELETE FROM t WHERE (a, b) IN (SELECT * FROM unnest(an array per column))`: deleting
    is the same in any order and any grouping, so rows are simply taken 1,000 at a time."""

    @classmethod
    @lru_cache(maxsize=128)
    def of(cls, sql: str) -> MultiRowDelete | None:
        """The plan for `sql`, or None where it is not such a DELETE (sent row by row)."""
        match = _DELETE.match(sql)
        if match is None:
            return None
        table, condition = match.groups()
        terms = [_EQUALS.match(t) for t in re.split(r"\bAND\b", condition, flags=re.I)]
        if not all(terms):
            return None
        return cls(table, [t.group(1) for t in terms if t is not None], None)

    def sql(self, types: Mapping[str, str]) -> str:
        return (f'DELETE FROM "{self.table}" WHERE ({self._quoted_columns()}) IN '
                f"(SELECT * FROM unnest({self._arrays(types)}))")


_UPDATE = re.compile(r"^\s*UPDATE\s+\"?(\w+)\"?\s+SET\s+(.+?)\s+WHERE\s+(.+?)\s*$", re.S | re.I)
_COMPARED = re.compile(r'"?(\w+)"?\s*(=|!=|<>|>=|<=|>|<)\s*\?')


def _top_level_or(condition: str) -> bool:
    depth = 0
    for word in re.findall(r"\(|\)|\bOR\b", condition, re.I):
        depth += 1 if word == "(" else -1 if word == ")" else 0
        if depth == 0 and word.upper() == "OR":
            return True
    return False


class MultiRowUpdate(_BulkPlan):
    """`UPDATE t SET a = ?, ... WHERE k = ? AND ... [AND other conditions on ?]` for many rows
    as a few statements, `UPDATE t SET a = v.p1 ... FROM unnest(an array per parameter) AS
    v(p1, ...) WHERE k = v.p2 ...`. Each parameter is typed by the column it is set to or
    compared with. Rows with the same values for the `column = ?` conditions could update
    the same row, so they go in different statements, in their order."""

    def __init__(self, table: str, head: str, tail: str, columns: list[str],
                 key: tuple[int, ...]) -> None:
        super().__init__(table, columns, key)
        self._head, self._tail = head, tail  # the statement around its arrays

    @classmethod
    @lru_cache(maxsize=128)
    def of(cls, sql: str) -> MultiRowUpdate | None:
        """The plan for `sql`, or None where it is not such an UPDATE (sent row by row)."""
        match = _UPDATE.match(sql)
        if match is None or "'" in sql or '"' in match.group(2) + match.group(3):
            return None
        table, sets, where = match.groups()
        if _top_level_or(where) or re.search(r"\bSELECT\b", sets + where, re.I):
            return None  # rows with different keys could reach the same row, or read others
        columns: list[str] = []
        key: list[int] = []
        parts: list[str] = []
        for text, clause in ((sets, "SET"), (where, "WHERE")):
            pos, out = 0, []
            for found in _COMPARED.finditer(text):
                column, op = found.groups()
                if clause == "SET" and op != "=":
                    return None
                if clause == "WHERE" and op == "=" and re.search(
                        r"(^|\bAND)\s*$", text[:found.start()], re.I):
                    key.append(len(columns))  # a top-level `column = ?`
                columns.append(column)
                out.append(text[pos:found.end() - 1] + f"v.p{len(columns)}")
                pos = found.end()
            out.append(text[pos:])
            parts.append("".join(out))
        if sql.count("?") != len(columns) or not key:
            return None
        names = ", ".join(f"p{i}" for i in range(1, len(columns) + 1))
        head = f'UPDATE "{table}" SET {parts[0]} FROM unnest('.replace("%", "%%")
        tail = f") AS v({names}) WHERE {parts[1]}".replace("%", "%%")
        return cls(table, head, tail, columns, tuple(key))

    def sql(self, types: Mapping[str, str]) -> str:
        return self._head + self._arrays(types) + self._tail


class PostgresDb(Db):
    """A psycopg 3 connection in autocommit mode; writes run in explicit transactions."""

    dialect: Dialect = "postgresql"
    now_sql = "to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')"

    def __init__(self, url: str) -> None:
        self.url = url
        self.target = redact_url(url)
        self.busy_timeout_ms = BUSY_TIMEOUT_MS
        self._conn: psycopg.Connection[Any] | None = None
        self._types: dict[str, dict[str, str]] = {}
        self._connect()

    # --- connection ------------------------------------------------------------------------

    def _connect(self) -> psycopg.Connection[Any]:
        try:
            import psycopg
            from psycopg.conninfo import conninfo_to_dict
        except ImportError as exc:
            raise DataError(
                "storage.url is a PostgreSQL URL but psycopg is not installed: "
                "pip install 'openrouter-usage[postgres]'"
            ) from exc
        try:
            params: dict[str, Any] = conninfo_to_dict(self.url)
        except psycopg.Error as exc:
            raise DataError(f"storage.url is not a valid PostgreSQL URL: {_one_line(exc)}") \
                from exc
        # dead peers are noticed within about a minute instead of TCP's hours
        for name, value in (("connect_timeout", CONNECT_TIMEOUT_S), ("keepalives", 1),
                            ("keepalives_idle", 15), ("keepalives_interval", 5),
                            ("keepalives_count", 3), ("tcp_user_timeout", 30000),
                            ("application_name", "openrouter-usage")):
            params.setdefault(name, value)
        try:
            conn = psycopg.connect(**params, autocommit=True)
            conn.isolation_level = psycopg.IsolationLevel.READ_COMMITTED
            conn.row_factory = _row_factory
            # a writer frozen mid-transaction (stopped, partitioned) frees the lock in time
            conn.execute("SET idle_in_transaction_session_timeout = '60s'")
            conn.execute(f"SET lock_timeout = '{int(self.busy_timeout_ms):d}ms'")
        except psycopg.Error as exc:
            raise DataError(
                f"cannot connect to history database {self.target}: {_one_line(exc)}"
            ) from exc
        self._conn = conn
        return conn

    @property
    def conn(self) -> psycopg.Connection[Any]:
        """The live connection, opened again if it was lost (never inside a transaction)."""
        conn = self._conn
        if conn is None or conn.closed or conn.broken:
            if conn is not None:
                conn.close()
            conn = self._connect()
        return conn

    def _fail(self, exc: Exception) -> DataError:
        import psycopg

        if isinstance(exc, psycopg.errors.LockNotAvailable):
            return DataError(f"history database is busy (locked by another writer): "
                             f"{_one_line(exc)}")
        if self._conn is not None and self._conn.broken:
            return DataError(f"history database connection lost ({self.target}): "
                             f"{_one_line(exc)}")
        return DataError(f"history database is busy or unusable: {_one_line(exc)}")

    def _run(self, method: str, sql: str, args: Any) -> Cursor:
        import psycopg

        try:
            cur = self.conn.cursor()
            getattr(cur, method)(_pg_sql(sql), args)
            return cur
        except psycopg.Error as exc:
            raise self._fail(exc) from exc

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Cursor:
        return self._run("execute", sql, tuple(params))

    def executemany(self, sql: str, seq: Iterable[Sequence[Any]]) -> Cursor:
        rows = [tuple(p) for p in seq]
        plan = MultiRowInsert.of(sql) or MultiRowDelete.of(sql) or MultiRowUpdate.of(sql)
        if plan is None or len(rows) < 2:
            return self._run("executemany", sql, rows)
        # an INSERT, DELETE or UPDATE of many rows goes as a few statements of many rows each
        # (a column of values is one array parameter): one statement for the server, not one
        # a row
        import psycopg

        changed = 0
        try:
            types = self._column_types(plan.table)
            if not set(plan.columns) <= set(types):
                return self._run("executemany", sql, rows)
            query = plan.sql(types)
            cur = self.conn.cursor()
            for batch in plan.batches(rows):
                cur.execute(query, [list(column) for column in zip(*batch, strict=True)])
                changed += max(cur.rowcount, 0)
        except psycopg.Error as exc:
            raise self._fail(exc) from exc
        return _Changed(changed)

    def _column_types(self, table: str) -> dict[str, str]:
        """A table's columns and their types (`format_type`), read once per PostgresDb."""
        types = self._types.get(table)
        if types is None:
            found = self.conn.execute(
                "SELECT a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a "
                "WHERE a.attrelid = %s::regclass AND a.attnum > 0 AND NOT a.attisdropped",
                (table,)).fetchall()
            types = self._types[table] = {str(name): str(kind) for name, kind in found}
        return types

    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        import psycopg

        cur = self.execute(sql, params)
        try:
            return cur.fetchall()
        except psycopg.Error as exc:
            raise self._fail(exc) from exc

    def insert(self, sql: str, params: Sequence[Any] = (), key: str = "id") -> int:
        return int(self.execute(f"{sql} RETURNING {key}", params).fetchone()[0])

    @contextmanager
    def write(self) -> Iterator[Db]:
        import psycopg

        if self.in_transaction:
            yield self
            return
        try:
            with self.conn.transaction():
                self.conn.execute("SELECT pg_advisory_xact_lock(%s)", (WRITE_LOCK_KEY,))
                yield self
        except psycopg.Error as exc:
            raise self._fail(exc) from exc

    @property
    def in_transaction(self) -> bool:
        from psycopg.pq import TransactionStatus

        conn = self._conn
        if conn is None or conn.closed:
            return False
        return conn.info.transaction_status != TransactionStatus.IDLE

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()

    def __del__(self) -> None:
        # a one-shot command's store is dropped, not closed: close its connection quietly
        conn = getattr(self, "_conn", None)
        if conn is not None and not conn.closed:
            conn.close()

    def set_busy_timeout(self, ms: int) -> None:
        self.busy_timeout_ms = int(ms)
        self.execute(f"SET lock_timeout = '{int(ms):d}ms'")

    # --- schema ----------------------------------------------------------------------------

    def schema_version(self) -> int:
        # a plain query of the catalog (to_regclass may answer from a stale cache)
        if not self.value("SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_tables "
                          "WHERE schemaname = current_schema() "
                          "AND tablename = 'schema_migrations')"):
            return 0
        return int(self.value("SELECT coalesce(max(version), 0) FROM schema_migrations"))

    def set_schema_version(self, version: int) -> None:
        pass  # the schema_migrations row written by migrate() is the version

    def ddl(self, statement: str) -> str:
        for pattern, replacement in _PG_DDL:
            statement = pattern.sub(replacement, statement.strip())
        return statement

    def tables(self) -> list[str]:
        rows = self.execute(
            "SELECT table_name FROM information_schema.tables "
            "WHERE table_schema = current_schema() AND table_type = 'BASE TABLE' "
            "ORDER BY table_name").fetchall()
        return [name for (name,) in rows]

    def columns(self, table: str) -> list[str]:
        rows = self.execute(
            "SELECT column_name FROM information_schema.columns "
            "WHERE table_schema = current_schema() AND table_name = ? ORDER BY ordinal_position",
            (table,)).fetchall()
        return [name for (name,) in rows]

    def location(self) -> str | None:
        return self.url

    def reset_identity(self, table: str, column: str = "id") -> None:
        self.execute(
            f"SELECT setval(pg_get_serial_sequence(?, ?), "
            f'coalesce((SELECT max("{column}") FROM "{table}"), 0) + 1, false)',
            (table, column))


# --- opening -------------------------------------------------------------------------------


def open_db(target: str | Path | sqlite3.Connection | Db) -> Db:
    """A Db for a SQLite path (":memory:" works), a postgresql:// URL, or an open sqlite3
    connection / Db (used as is)."""
    if isinstance(target, Db):
        return target
    if isinstance(target, sqlite3.Connection):
        return SqliteDb(target)
    if isinstance(target, str) and is_postgres_url(target):
        return PostgresDb(target)
    return SqliteDb.open(target)
