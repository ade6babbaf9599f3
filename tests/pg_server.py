"""A throw-away PostgreSQL server on loopback for the tests, and the fixtures that use it.

The server runs from Debian's packages (or any `pg_ctl` on PATH / in `$PG_BINDIR`) with its
data and unix socket in a temporary directory, on a free loopback port, with durability off
(it is thrown away). `initdb` refuses to run as root, so as root the server runs as the
`postgres` user. One server serves the whole session; each test gets its own schema (a
URL whose `search_path` and `application_name` name it), which is much quicker to make than a
database.

A machine without PostgreSQL fails the tests that need it, loudly: `make test` installs it
(`apt-get install postgresql`) first. Set OPENROUTER_USAGE_NO_POSTGRES=1 to skip them instead
(never in CI).
"""

from __future__ import annotations

import glob
import itertools
import os
import shutil
import socket
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

SKIP_ENV = "OPENROUTER_USAGE_NO_POSTGRES"
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
    """One PostgreSQL cluster in a temporary directory, started and stopped by the tests."""

    def __init__(self, bindir: Path | None = None) -> None:
        self.bindir = bindir or find_bindir()
        self.root = Path(tempfile.mkdtemp(prefix="openrouter-usage-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.port = 0
        self._as_postgres = os.geteuid() == 0
        self._names = itertools.count(1)
        self._lock = threading.Lock()
        self._tests_db = False

    # --- life cycle ------------------------------------------------------------------------

    def _run(self, *argv: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        cmd = [str(self.bindir / argv[0]), *argv[1:]]
        if self._as_postgres:  # initdb and postgres refuse to run as root
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                              cwd=self.root, stdin=subprocess.DEVNULL)

    def start(self) -> PgServer:
        if self._as_postgres:
            shutil.chown(self.root, "postgres", "postgres")
        done = self._run("initdb", "-D", str(self.data), "-U", USER, "--auth=trust",
                         "-E", "UTF8", "--no-locale", "--no-sync", "--no-instructions")
        if done.returncode != 0:
            raise PostgresUnavailable(f"initdb failed: {done.stderr.strip() or done.stdout}")
        for _ in range(5):  # a port taken between choosing and binding: choose again
            self.port = free_port()
            options = (f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 "
                       "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
                       "-c max_connections=200 -c shared_buffers=32MB")
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

    def restart(self) -> None:
        """Stop and start the same cluster on the same port (every connection is cut)."""
        self._run("pg_ctl", "restart", "-D", str(self.data), "-m", "fast", "-w",
                  "-l", str(self.log))

    # --- databases -------------------------------------------------------------------------

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://{USER}@127.0.0.1:{self.port}/{dbname}"

    def create_database(self, prefix: str = "d") -> str:
        """A new empty database; returns its URL."""
        import psycopg

        with self._lock:
            name = f"{prefix}{next(self._names)}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}" TEMPLATE template0')
        return self.url(name)

    def create_schema(self) -> str:
        """A new empty schema in the shared `tests` database; returns a URL that uses it
        (tables are made there) and names its sessions after it."""
        import psycopg

        with self._lock:
            name = f"s{next(self._names)}"
            if not self._tests_db:
                with psycopg.connect(self.url(), autocommit=True) as conn:
                    conn.execute("CREATE DATABASE tests TEMPLATE template0")
                self._tests_db = True
        with psycopg.connect(self.url("tests"), autocommit=True) as conn:
            conn.execute(f'CREATE SCHEMA "{name}"')
        return self.url("tests") + f"?options=-csearch_path%3D{name}&application_name={name}"

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


# --- pytest plugin ---------------------------------------------------------------------------


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """The session's PostgreSQL server; fails (never skips) where none can start, unless
    OPENROUTER_USAGE_NO_POSTGRES=1 asks to skip."""
    if os.environ.get(SKIP_ENV) == "1":
        if os.environ.get("CI"):
            pytest.fail(f"{SKIP_ENV}=1 is not allowed in CI: the PostgreSQL tests must run")
        pytest.skip(f"{SKIP_ENV}=1: PostgreSQL tests skipped")
    try:
        server = PgServer().start()
    except (PostgresUnavailable, OSError, subprocess.SubprocessError) as exc:
        pytest.fail(f"cannot start a test PostgreSQL server: {exc}", pytrace=False)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture()
def pg_url(pg_server: PgServer) -> str:
    """A fresh, empty history database (schema) on the session's server."""
    return pg_server.create_schema()



BACKENDS = ["sqlite", "postgresql"]


def make_target(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty history database of `kind`: "memory" (SQLite in memory), "sqlite" (a
    file) or "postgresql" (a new database on the session's server); its path or URL."""
    if kind == "memory":
        return ":memory:"
    if kind == "sqlite":
        return str(tmp_path / "state" / f"history-{next(_files)}.db")
    server: PgServer = request.getfixturevalue("pg_server")
    return server.create_schema()


_files = itertools.count(1)


@pytest.fixture(params=BACKENDS)
def db_target(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh history database on each backend in turn (a SQLite file, then PostgreSQL),
    as the path or URL that `bot.store.connect` and `storage.url` take; several connections
    to it see the same data."""
    return make_target(request.param, request, tmp_path)
