"""A throw-away PostgreSQL server on loopback for the tests, and the fixtures that use it.

The server runs from Debian's packages (or any `pg_ctl` on PATH / in `$PG_BINDIR`) with its
data and unix socket in a temporary directory, on a free loopback port, with durability off
(it is thrown away). `initdb` refuses to run as root, so as root the server runs as the
`postgres` user.

One server serves the whole run: the first process that needs it starts it, every pytest-xdist
worker of the run attaches to it (they meet in a folder the run's main process names in
$OPENROUTER_USAGE_TEST_PG_DIR), and the main process stops it at the end. Each worker has a
database of its own (the store's write lock is an advisory lock, which is per database), and
each test a schema of its own in it (a URL whose `search_path` and `application_name` name it),
much quicker to make than a database. A test that only needs an empty history gets a schema
already migrated, emptied after the test before it (`db_target`, `pg_url`); the migration
tests get new, empty schemas (`fresh_db_target`).

A machine without PostgreSQL fails the tests that need it, loudly: `make test` installs it
(`apt-get install postgresql`) first. Set OPENROUTER_USAGE_NO_POSTGRES=1 to skip them instead
(never in CI).
"""

from __future__ import annotations

import fcntl
import glob
import itertools
import json
import os
import shutil
import socket
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

SKIP_ENV = "OPENROUTER_USAGE_NO_POSTGRES"
RUN_DIR_ENV = "OPENROUTER_USAGE_TEST_PG_DIR"
USER = "bot"


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL server could be found or started here."""


def find_bindir() -> Path:
    """The directory holding initdb, pg_ctl and postgres: $PG_BINDIR, Debian's newest
    /usr/lib/postgresql/N/bin, or wherever pg_ctl is on PATH."""
    candidates: list[str] = []
    if os.environ.get("PG_BINDIR"):
        candidates.append(os.environ["PG_BINDIR"])
    debian = sorted(glob.glob("/usr/lib/postgresql/*/bin"),
                    key=lambda p: int(Path(p).parent.name) if Path(p).parent.name.isdigit() else 0)
    candidates.extend(reversed(debian))
    on_path = shutil.which("pg_ctl")
    if on_path:
        candidates.append(str(Path(on_path).resolve().parent))
    for directory in candidates:
        if all((Path(directory) / tool).exists() for tool in ("initdb", "pg_ctl", "postgres")):
            return Path(directory)
    raise PostgresUnavailable(
        "PostgreSQL server binaries not found (no initdb/pg_ctl/postgres in $PG_BINDIR, "
        "/usr/lib/postgresql/*/bin or PATH): run `make test`, which installs them as root "
        "(apt-get install postgresql), or install them yourself"
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PgServer:
    """One PostgreSQL cluster in a folder, started by the first process of a run that needs it
    and shared by the run's other processes (`shared`)."""

    def __init__(self, root: Path, bindir: Path | None = None) -> None:
        self.bindir = bindir or find_bindir()
        self.root = root
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.port = 0
        self._as_postgres = os.geteuid() == 0
        self._names = itertools.count(1)
        self._lock = threading.Lock()
        # this process's own database on the server, and its emptied, migrated schemas
        worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
        self._worker = "".join(c for c in worker if c.isalnum()).lower() or "main"
        self._tests_db = ""
        self._spare: list[str] = []
        self._fingerprint = ""
        self._admin_conn: Any = None

    @classmethod
    def shared(cls, run_dir: Path) -> PgServer:
        """The run's server: started here if no process of the run has started it yet,
        else the one recorded in `run_dir` (serialised by a lock file there)."""
        with open(run_dir / "lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            state = run_dir / "server.json"
            if state.exists():
                info = json.loads(state.read_text())
                if "error" in info:
                    raise PostgresUnavailable(info["error"])
                server = cls(Path(info["root"]), Path(info["bindir"]))
                server.port = int(info["port"])
                return server
            try:
                server = cls(run_dir / "cluster").start()
            except (PostgresUnavailable, OSError, subprocess.SubprocessError) as exc:
                state.write_text(json.dumps({"error": str(exc)}))
                raise
            state.write_text(json.dumps({"root": str(server.root), "bindir": str(server.bindir),
                                         "port": server.port}))
            return server

    @classmethod
    def stop_shared(cls, run_dir: Path) -> None:
        """Stop the run's server, if one was started, and remove its folder."""
        state = run_dir / "server.json"
        if state.exists():
            info = json.loads(state.read_text())
            if "root" in info:
                cls(Path(info["root"]), Path(info["bindir"])).stop()
        shutil.rmtree(run_dir, ignore_errors=True)

    # --- life cycle ------------------------------------------------------------------------

    def _run(self, *argv: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        cmd = [str(self.bindir / argv[0]), *argv[1:]]
        if self._as_postgres:  # initdb and postgres refuse to run as root
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                              cwd=self.root, stdin=subprocess.DEVNULL)

    def start(self) -> PgServer:
        self.root.mkdir(parents=True, exist_ok=True)
        if self._as_postgres:
            shutil.chown(self.root, "postgres", "postgres")
        done = self._run("initdb", "-D", str(self.data), "-U", USER, "--auth=trust",
                         "-E", "UTF8", "--no-locale", "--no-sync", "--no-instructions")
        if done.returncode != 0:
            raise PostgresUnavailable(f"initdb failed: {done.stderr.strip() or done.stdout}")
        for _ in range(5):  # a port taken between choosing and binding: choose again
            self.port = free_port()
            # thrown away: no durability, no background vacuuming or JIT compiling (tests'
            # tables live for a test), no statistics counters, and the least WAL (no
            # replicas): together ~0.6 s less of the server's CPU per run, and the run
            # seconds quicker
            options = (f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 "
                       "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
                       "-c autovacuum=off -c jit=off -c track_counts=off "
                       "-c wal_level=minimal -c max_wal_senders=0 "
                       "-c max_connections=300 -c shared_buffers=32MB")
            started = self._run("pg_ctl", "start", "-D", str(self.data), "-l", str(self.log),
                                "-w", "-t", "60", "-o", options)
            if started.returncode == 0:
                return self
        log = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
        raise PostgresUnavailable(f"PostgreSQL did not start: {started.stderr.strip()}\n{log}")

    def stop(self) -> None:
        if self.data.exists():
            self._run("pg_ctl", "stop", "-D", str(self.data), "-m", "immediate", "-w",
                      timeout=60)
        shutil.rmtree(self.root, ignore_errors=True)

    # --- databases -------------------------------------------------------------------------

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://{USER}@127.0.0.1:{self.port}/{dbname}"

    def _name(self, prefix: str) -> str:
        """A name no other process of the run uses."""
        with self._lock:
            return f"{prefix}_{self._worker}_{next(self._names)}"

    def create_database(self, prefix: str = "d") -> str:
        """A new empty database; returns its URL."""
        import psycopg

        name = self._name(prefix)
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}" TEMPLATE template0')
        return self.url(name)

    def _database(self) -> str:
        """This process's database on the server, made on first use."""
        with self._lock:
            if not self._tests_db:
                import psycopg

                name = f"tests_{self._worker}"
                with psycopg.connect(self.url(), autocommit=True) as conn:
                    conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
                    conn.execute(f'CREATE DATABASE "{name}" TEMPLATE template0')
                self._tests_db = name
            return self._tests_db

    def _schema_url(self, name: str) -> str:
        return (self.url(self._database())
                + f"?options=-csearch_path%3D{name}&application_name={name}")

    def create_schema(self) -> str:
        """A new empty schema in this process's database; returns a URL that uses it (tables
        are made there) and names its sessions after it."""
        import psycopg

        database = self._database()
        name = self._name("s")
        with psycopg.connect(self.url(database), autocommit=True) as conn:
            conn.execute(f'CREATE SCHEMA "{name}"')
        return self._schema_url(name)

    def migrated_schema(self) -> str:
        """A schema at this program's schema version holding no rows: one a test before has
        given back (`give_back`), else a new one, migrated."""
        if self._spare:
            return self._spare.pop()
        from bot.store import connect

        url = self.create_schema()
        connect(url).close()
        if not self._fingerprint:
            self._fingerprint = self._shape(_schema_of(url), self._admin())
        return url

    def give_back(self, url: str) -> None:
        """Empty a schema `migrated_schema` gave out, for the next test: its sessions are cut,
        its rows deleted (a large table truncated) and its identity columns restarted. A schema
        whose relations, columns, constraints, triggers or migrations a test changed is dropped
        instead."""
        import psycopg

        name = _schema_of(url)
        try:
            conn = self._admin()
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND application_name = %s", (name,))
            conn.execute("SET lock_timeout = '10s'")
            if self._shape(name, conn) != self._fingerprint:
                raise LookupError(name)
            conn.execute(_EMPTY_SCHEMA.replace("{schema}", name))
        except (LookupError, psycopg.Error):
            self._admin().execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
            return
        self._spare.append(url)

    def close(self) -> None:
        """Close this process's own session (the server keeps running)."""
        if self._admin_conn is not None:
            self._admin_conn.close()

    def _admin(self) -> Any:
        """This process's own session on its database (for emptying and checking schemas)."""
        import psycopg

        if self._admin_conn is None or self._admin_conn.closed:
            self._admin_conn = psycopg.connect(self.url(self._database()), autocommit=True)
        return self._admin_conn

    def _shape(self, name: str, conn: Any) -> str:
        """What a test must not have changed for its schema to be reused: every relation,
        column, constraint and trigger, and the migrations recorded."""
        [(shape,)] = conn.execute(_SHAPE, (name,)).fetchall()
        [(versions,)] = conn.execute(
            f'SELECT string_agg(version::text, \',\' ORDER BY version) '
            f'FROM "{name}".schema_migrations').fetchall()
        return f"{shape}#{versions}"

    def terminate_connections(self, url: str) -> int:
        """Cut every session that `url` opened (same database, and same application_name
        when the URL sets one), as a network failure or server restart would."""
        import psycopg
        from psycopg.conninfo import conninfo_to_dict

        info = conninfo_to_dict(url)
        with psycopg.connect(self.url(), autocommit=True) as conn:
            rows = conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = %s AND pid <> pg_backend_pid() "
                "AND (%s::text IS NULL OR application_name = %s)",
                (info["dbname"], info.get("application_name"), info.get("application_name")),
            ).fetchall()
        return len(rows)


_SHAPE = """
SELECT concat_ws('|',
  (SELECT string_agg(c.relname || ':' || c.relkind::text || ':' || coalesce(
      (SELECT string_agg(a.attname || ' ' || format_type(a.atttypid, a.atttypmod)
               || CASE WHEN a.attnotnull THEN '!' ELSE '' END, ',' ORDER BY a.attnum)
       FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped),
      ''), ';' ORDER BY c.relname)
   FROM pg_class c WHERE c.relnamespace = n.oid),
  (SELECT string_agg(pg_get_constraintdef(k.oid), ';' ORDER BY k.conname)
   FROM pg_constraint k WHERE k.connamespace = n.oid),
  (SELECT string_agg(t.tgname, ';' ORDER BY t.tgname)
   FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid WHERE c.relnamespace = n.oid))
FROM pg_namespace n WHERE n.nspname = %s
"""

# Deleting a few rows is much cheaper than TRUNCATE (new files for every table and index);
# a table past 1 MB is truncated so that dead rows do not pile up (autovacuum is off). An
# identity column starts again at 1 by `setval` (what ALTER ... RESTART does, at a fifth of
# the cost: no lock on the table, no new file for its sequence).
_EMPTY_SCHEMA = """
DO $$ DECLARE r record; BEGIN
  FOR r IN SELECT c.oid::regclass AS t, pg_total_relation_size(c.oid) AS size FROM pg_class c
           WHERE c.relnamespace = '"{schema}"'::regnamespace AND c.relkind = 'r'
           AND c.relname <> 'schema_migrations' LOOP
    IF r.size > 1048576 THEN EXECUTE format('TRUNCATE %s', r.t);
    ELSE EXECUTE format('DELETE FROM %s', r.t); END IF;
  END LOOP;
  FOR r IN SELECT a.attrelid::regclass AS t, a.attname FROM pg_attribute a
           JOIN pg_class c ON c.oid = a.attrelid
           WHERE c.relnamespace = '"{schema}"'::regnamespace AND a.attidentity <> '' LOOP
    PERFORM setval(pg_get_serial_sequence(r.t::text, r.attname), 1, false);
  END LOOP;
END $$
"""


def _schema_of(url: str) -> str:
    from psycopg.conninfo import conninfo_to_dict

    return str(conninfo_to_dict(url)["application_name"])


# --- pytest plugin ---------------------------------------------------------------------------


def pytest_configure(config: pytest.Config) -> None:
    """The run's main process names the folder where its processes share one server."""
    if os.environ.get(RUN_DIR_ENV) or hasattr(config, "workerinput"):
        return  # a worker, or a run inside another run: use the outer run's server
    run_dir = Path(tempfile.mkdtemp(prefix="openrouter-usage-pg-"))
    run_dir.chmod(0o755)  # the server may run as another user (`postgres`, under root)
    os.environ[RUN_DIR_ENV] = str(run_dir)
    config.stash[_OWNED] = run_dir


def pytest_unconfigure(config: pytest.Config) -> None:
    run_dir = config.stash.get(_OWNED, None)
    if run_dir is not None:
        PgServer.stop_shared(run_dir)
        os.environ.pop(RUN_DIR_ENV, None)


_OWNED = pytest.StashKey[Path]()


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """The run's PostgreSQL server; fails (never skips) where none can start, unless
    OPENROUTER_USAGE_NO_POSTGRES=1 asks to skip."""
    if os.environ.get(SKIP_ENV) == "1":
        if os.environ.get("CI"):
            pytest.fail(f"{SKIP_ENV}=1 is not allowed in CI: the PostgreSQL tests must run")
        pytest.skip(f"{SKIP_ENV}=1: PostgreSQL tests skipped")
    if not os.environ.get(RUN_DIR_ENV):
        pytest.fail(f"{RUN_DIR_ENV} is not set: tests/pg_server.py must be loaded as a plugin "
                    "(tests/conftest.py's pytest_plugins)", pytrace=False)
    try:
        server = PgServer.shared(Path(os.environ[RUN_DIR_ENV]))
    except (PostgresUnavailable, OSError, subprocess.SubprocessError) as exc:
        pytest.fail(f"cannot start a test PostgreSQL server: {exc}", pytrace=False)
    yield server
    server.close()  # the run's main process stops the server itself (pytest_unconfigure)


@pytest.fixture()
def pg_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty history database (schema) on the run's server, at this program's schema
    version (`fresh_db_target` gives one without tables)."""
    return make_target("postgresql", request, tmp_path)


BACKENDS = ["sqlite", "postgresql"]


def make_target(kind: str, request: pytest.FixtureRequest, tmp_path: Path, *,
                fresh: bool = False) -> str:
    """An empty history database of `kind`, its path or URL: "memory" (SQLite in memory),
    "sqlite" (a file not made yet) or "postgresql" (a schema on the run's server, at this
    program's schema version with no rows; new and without tables if `fresh`)."""
    if kind == "memory":
        return ":memory:"
    if kind == "sqlite":
        return str(tmp_path / "state" / f"history-{next(_files)}.db")
    server: PgServer = request.getfixturevalue("pg_server")
    if fresh:
        return server.create_schema()
    url = server.migrated_schema()
    request.addfinalizer(lambda: server.give_back(url))
    return url


_files = itertools.count(1)


@pytest.fixture(params=BACKENDS)
def db_target(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty history database on each backend in turn (a SQLite file, then PostgreSQL),
    as the path or URL that `bot.store.connect` and `storage.url` take; several connections
    to it see the same data."""
    return make_target(request.param, request, tmp_path)


@pytest.fixture(params=BACKENDS)
def fresh_db_target(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A new history database on each backend in turn with no tables at all, for the
    migration tests."""
    return make_target(request.param, request, tmp_path, fresh=True)
