"""Copies a whole history database into another (SQLite into PostgreSQL): every table, in
batches, idempotently, with every row checked at the end.

Both databases are first migrated to the same schema. Rows go in with ``ON CONFLICT DO
NOTHING``: a row already in the target is never overwritten (it may be newer: a delivery a
daemon has sent since), so a second copy writes nothing, an interrupted one simply continues,
and rows added to the SQLite file since are copied. Tables with foreign keys come after the
tables they point to. The check reads every table back from the target: each source row must
be there, equal, and the row counts must match; a target that holds other rows (a database a
daemon has used, or a row changed on either side since the last copy) fails it, naming the
tables.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from bot.errors import DataError
from bot.store.backend import Db, SqliteDb

BATCH = 2000
SKIP = ("schema_migrations",)  # each database keeps its own record of its migrations


@dataclass(frozen=True)
class TableCopy:
    """One table: rows in the source, rows this copy added, rows in the target after it."""

    name: str
    source_rows: int
    copied: int  # rows this copy inserted
    target_rows: int
    missing: int  # source rows not in the target (or different there)

    @property
    def ok(self) -> bool:
        return self.missing == 0 and self.target_rows == self.source_rows


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _order(source: SqliteDb, tables: list[str]) -> list[str]:
    """`tables` with every table after the tables its foreign keys reference."""
    refs = {t: {str(r[2]) for r in source.execute(f"PRAGMA foreign_key_list({_quote(t)})")}
            for t in tables}
    deps = {t: (refs[t] & set(tables)) - {t} for t in tables}
    ordered: list[str] = []
    while len(ordered) < len(tables):
        ready = [t for t in tables if t not in ordered and deps[t] <= set(ordered)]
        if not ready:
            raise DataError(f"history tables reference each other in a cycle: {tables}")
        ordered.extend(sorted(ready))
    return ordered


def _has_primary_key(source: SqliteDb, table: str) -> bool:
    return any(int(r[5]) > 0 for r in source.execute(f"PRAGMA table_info({_quote(table)})"))


def _batches(source: SqliteDb, target: Db, table: str,
             cols: str) -> Iterator[tuple[int, Sequence[Any]]]:
    """The source's rows in batches: (rows read, rows to insert). A table without a primary
    key (a log) cannot tell which rows are there already, so as many copies of each row as
    the target holds are left out."""
    cursor = source.raw.execute(f"SELECT {cols} FROM {_quote(table)}")
    have: Counter[tuple[Any, ...]] | None = None
    if not _has_primary_key(source, table):
        have = Counter(tuple(r) for r in target.execute(f"SELECT {cols} FROM {_quote(table)}"))
    while batch := cursor.fetchmany(BATCH):
        if have is None:
            yield len(batch), batch
            continue
        fresh = []
        for row in batch:
            if have[tuple(row)] > 0:
                have[tuple(row)] -= 1
            else:
                fresh.append(row)
        yield len(batch), fresh


def _identity(source: SqliteDb, table: str) -> str | None:
    """The column that is an identity on PostgreSQL (an INTEGER PRIMARY KEY), if any."""
    info = source.execute(f"PRAGMA table_info({_quote(table)})").fetchall()
    pk = [r for r in info if int(r[5]) > 0]
    if len(pk) == 1 and str(pk[0][2]).upper() == "INTEGER":
        return str(pk[0][1])
    return None


def copy_history(
    source: Db,
    target: Db,
    progress: Callable[[int, int], None] | None = None,
) -> list[TableCopy]:
    """Copy every table of `source` (SQLite, migrated) into `target` (migrated to the same
    schema version); returns what happened per table, in copy order."""
    if not isinstance(source, SqliteDb):
        raise DataError("migrate copies from a SQLite history database")
    if source.schema_version() != target.schema_version():
        raise DataError(f"schema versions differ: source {source.schema_version()}, target "
                        f"{target.schema_version()}")
    tables = _order(source, [t for t in source.tables() if t not in SKIP])
    missing_tables = sorted(set(tables) - set(target.tables()))
    if missing_tables:
        raise DataError(f"the target lacks tables {', '.join(missing_tables)}")
    counts = {t: int(source.value(f"SELECT count(*) FROM {_quote(t)}")) for t in tables}
    total, done = sum(counts.values()), 0
    if progress:
        progress(0, total)
    results: list[TableCopy] = []
    for table in tables:
        columns = source.columns(table)
        cols = ", ".join(_quote(c) for c in columns)
        insert = (f"INSERT INTO {_quote(table)} ({cols}) VALUES "
                  f"({', '.join('?' * len(columns))}) ON CONFLICT DO NOTHING")
        copied = 0
        for read, rows in _batches(source, target, table, cols):
            if rows:
                with target.write():
                    added = target.executemany(insert, rows).rowcount
                copied += max(added, 0)
            done += read
            if progress:
                progress(done, total)
        identity = _identity(source, table)
        if identity is not None:
            with target.write():
                target.reset_identity(table, identity)
        results.append(_check(source, target, table, counts[table], copied))
    return results


def _check(source: SqliteDb, target: Db, table: str, source_rows: int,
           copied: int) -> TableCopy:
    """Every source row must be in the target, equal (as often); the counts must match."""
    cols = ", ".join(_quote(c) for c in source.columns(table))
    have = Counter(tuple(r) for r in target.execute(f"SELECT {cols} FROM {_quote(table)}"))
    want = Counter(tuple(r) for r in source.raw.execute(f"SELECT {cols} FROM {_quote(table)}"))
    missing = sum((want - have).values())
    return TableCopy(table, source_rows, copied, sum(have.values()), missing)
