"""`migrate --to postgresql://...`: copy a SQLite history into PostgreSQL, idempotently.

The source is `--from PATH`, else the configured `storage.path`; the target is `--to URL`,
else the configured `storage.url` (so the URL, with its password from `${VAR}`, can stay in
the config file and out of the command line). Both are migrated to this program's schema,
every table is copied (a row already there is never overwritten), and every source row is
checked to be in the target, equal. Run it again at any time: it adds only what is new. Stop
the daemons and one-shot jobs that write to the SQLite file first, so nothing is written
there meanwhile.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from bot.errors import ConfigError, DataError

if TYPE_CHECKING:
    from bot.app import App
    from bot.store.copy import TableCopy

log = logging.getLogger(__name__)


@dataclass
class MigrateResult:
    """What was copied where, table by table."""

    source: str
    target: str  # without its password
    tables: list[TableCopy] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(t.ok for t in self.tables)

    @property
    def copied(self) -> int:
        return sum(t.copied for t in self.tables)

    @property
    def rows(self) -> int:
        return sum(t.source_rows for t in self.tables)


def resolve(app: App, to_url: str | None, from_path: str | None) -> tuple[Path, str]:
    """The SQLite file to copy and the PostgreSQL URL to copy it to."""
    from bot.store import is_postgres_url

    target = to_url or app.config.storage_url
    if not target:
        raise ConfigError("migrate: say where to: --to postgresql://user@host/database "
                          "(or set storage.url in the config)")
    if not is_postgres_url(target):
        raise ConfigError("--to: expected a postgresql://user@host/database URL")
    if from_path:
        source = Path(from_path).expanduser()
    elif app.config.storage_url and not to_url:
        raise ConfigError("migrate: storage.url is the target; name the SQLite file to copy "
                          "with --from PATH")
    else:
        source = app.config.storage_path
    if not source.is_file():
        raise ConfigError(f"migrate: no SQLite history at {source} (--from PATH)")
    return source, target


def run_migrate(
    app: App,
    *,
    to_url: str | None = None,
    from_path: str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> MigrateResult:
    """Copy the SQLite history into PostgreSQL and check every row arrived."""
    from bot.store import connect, redact_url
    from bot.store.copy import copy_history

    source_path, url = resolve(app, to_url, from_path)
    result = MigrateResult(str(source_path), redact_url(url))
    source = connect(source_path)
    try:
        target = connect(url)
        try:
            log.info("copying %s into %s", source_path, result.target)
            result.tables = copy_history(source, target, progress)
        finally:
            target.close()
    finally:
        source.close()
    if not result.ok:
        bad = ", ".join(f"{t.name} ({t.missing} of {t.source_rows} rows not there as in the "
                        f"source, {t.target_rows} rows in the target)"
                        for t in result.tables if not t.ok)
        raise DataError(f"migrate: the target differs from the source: {bad}; it holds other "
                        "rows (or a row changed on either side since the last copy); nothing "
                        "in it was overwritten: migrate into a new database")
    return result
