"""Shared pytest set-up: the injected clock, and the local fakes (loaded as plugins).

Every test runs at one chosen instant, never at the wall clock's: `--clock NAME` picks it
(default `noon`). Tests derive their dates from the `clock` fixture. At the start of each test
the instant also reaches the code: `time-machine` moves this process's wall clock there, and
the test-only variable OPENROUTER_USAGE_TEST_NOW (read by `bot.app.utcnow`) moves the CLI's
clock and that of daemons started as subprocesses; all tick on from there together. `make test`
runs the tests that take `clock` again at `midnight`, `late` and `dst`.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from zoneinfo import ZoneInfo

import pytest
import time_machine

from bot.app import TEST_NOW

pytest_plugins = [
    "tests.fake_openrouter", "tests.fake_slack", "tests.fake_smtp", "tests.pg_server",
    "tests.fake_pagerduty", "tests.fake_webhook", "tests.fake_socket_mode",
]

UTC = dt.UTC
SETTLE = dt.timedelta(minutes=30)  # a UTC day's data is complete this long after it ends


def no_wait(seconds: float) -> None:
    """A sleep for the code under test: retry backoff is never waited for in the tests."""


@dataclass(frozen=True)
class Clock:
    """The instant a test run pretends it is, and the time zone the tests' configs name."""

    name: str
    now: dt.datetime
    zone: str

    @property
    def today(self) -> dt.date:
        """The current UTC day (in progress)."""
        return self.now.date()

    @property
    def yesterday(self) -> dt.date:
        """The last UTC day OpenRouter's /activity answers for."""
        return self.today - dt.timedelta(days=1)

    @property
    def digest_day(self) -> dt.date:
        """The day a digest reports on by default: the latest one ended `SETTLE` ago."""
        return (self.now - SETTLE).date() - dt.timedelta(days=1)

    def local(self, days: int, at: dt.time) -> dt.datetime:
        """Wall-clock time `at` in the configured zone, `days` after today there, in UTC."""
        zone = ZoneInfo(self.zone)
        day = self.now.astimezone(zone).date() + dt.timedelta(days=days)
        return dt.datetime.combine(day, at, zone).astimezone(UTC)


CLOCKS = {
    clock.name: clock
    for clock in (
        Clock("noon", dt.datetime(2026, 11, 25, 12, 0, tzinfo=UTC), "UTC"),
        # ten minutes into a UTC day (and a month): yesterday is not settled yet
        Clock("midnight", dt.datetime(2026, 3, 1, 0, 10, tzinfo=UTC), "UTC"),
        # two minutes before a UTC day (and a year) ends
        Clock("late", dt.datetime(2026, 12, 31, 23, 58, tzinfo=UTC), "UTC"),
        # Berlin's spring-forward day (02:00 CET -> 03:00 CEST), half an hour after the jump
        Clock("dst", dt.datetime(2026, 3, 29, 1, 30, tzinfo=UTC), "Europe/Berlin"),
    )
}


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--clock", choices=sorted(CLOCKS), default="noon",
        help="the instant (and configured time zone) the suite runs at; default noon",
    )


def pytest_report_header(config: pytest.Config) -> str:
    clock = chosen_clock(config)
    return f"clock: {clock.name} = {clock.now.isoformat()} (zone {clock.zone})"


_chosen: list[Clock] = []


# temporary files go here when TMPDIR is unset and it has room (`temporary_files_in_memory`)
MEMORY_TMP = "/dev/shm"
MEMORY_TMP_ROOM = 2 * 1024**3


def temporary_files_in_memory() -> None:
    """Every temporary file of the run (each `tmp_path`, the PostgreSQL cluster, what daemon
    subprocesses write) in memory, where TMPDIR is unset and /dev/shm is a writable tmpfs with
    2 GiB free. The SQLite histories sync the disk at each commit (synchronous=FULL, as in
    production): on this machine's disk that added ~3 s of CPU and I/O waits to a run. Set
    TMPDIR to keep them anywhere else."""
    if os.environ.get("TMPDIR") or os.environ.get("PYTEST_XDIST_WORKER"):
        return  # chosen by the user, or by the run's main process already
    try:
        room = os.statvfs(MEMORY_TMP)
        with open("/proc/mounts") as mounts:
            tmpfs = any(line.split()[1:3] == [MEMORY_TMP, "tmpfs"] for line in mounts)
    except OSError:
        return
    if tmpfs and room.f_bavail * room.f_frsize >= MEMORY_TMP_ROOM and os.access(
            MEMORY_TMP, os.W_OK | os.X_OK):
        os.environ["TMPDIR"] = MEMORY_TMP  # the workers and subprocesses inherit it
        tempfile.tempdir = None  # asked again on the next use


@pytest.hookimpl(tryfirst=True)  # before the PostgreSQL plugin makes its folder
def pytest_configure(config: pytest.Config) -> None:
    temporary_files_in_memory()
    config.addinivalue_line(
        "markers", "clock: the test takes the `clock` fixture (set on collection); `make test` "
        "runs these again at every other --clock, on SQLite")
    _chosen[:] = [CLOCKS[config.getoption("--clock")]]


def pytest_sessionfinish(session: pytest.Session) -> None:
    """`pytest --collect-only` in a run's main process (`make test` runs it before the workers
    start) also compiles the bundled templates into Jinja's cache, once, for the processes
    after it: on a fresh machine each worker would compile them all (~0.3 s of CPU each)."""
    if session.config.option.collectonly and not os.environ.get("PYTEST_XDIST_WORKER"):
        from bot.render.messages import Renderer, _template, bundled_templates_dir

        env, root = Renderer().env, bundled_templates_dir()
        for path in sorted(root.rglob("*.j2")):
            _template(env, path.relative_to(root).as_posix())


def run_clock() -> Clock:
    """The chosen clock, for a module that needs its instant at import (`NOW = run_clock().now`);
    a test that can should take the `clock` fixture instead."""
    return _chosen[0]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark the tests that take our `clock` fixture, except their PostgreSQL runs (the time
    logic lives above the store, so the SQLite runs cover it at every clock); under xdist,
    spread each file's tests over the run (`interleave_files`)."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        items[:] = interleave_files(items)
    for item in items:
        info = getattr(item, "_fixtureinfo", None)
        defs = info.name2fixturedefs.get("clock", ()) if info is not None else ()
        callspec = getattr(item, "callspec", None)
        on_postgresql = "pg_url" in getattr(item, "fixturenames", ()) or (
            callspec is not None and "postgresql" in (
                callspec.params.get("db_target"), callspec.params.get("fresh_db_target")))
        if defs and defs[-1].func is clock.__wrapped__ and not on_postgresql:
            item.add_marker(pytest.mark.clock)


def interleave_files(items: list[pytest.Item]) -> list[pytest.Item]:
    """The tests of each file spread evenly over the run: the k-th of a file's n tests goes at
    k/n of the way through (ties in file order).

    xdist hands each worker a run of consecutive tests, so in file order the workers all sit
    in the same file at once; where that file's tests mostly wait (daemons taking over a
    lease, a fake Slack or SMTP server holding an answer back) the two cores idled. Spread out
    like this the waiting tests fall among tests that compute, and the run ends with the last
    tests of the largest files (small ones). Every worker orders alike."""
    by_file: dict[str, list[pytest.Item]] = {}
    for item in items:
        by_file.setdefault(item.nodeid.split("::", 1)[0], []).append(item)
    placed = [(k / len(tests), f, k, item) for f, tests in enumerate(by_file.values())
              for k, item in enumerate(tests)]
    return [item for *_, item in sorted(placed, key=lambda p: p[:3])]


def chosen_clock(config: pytest.Config) -> Clock:
    return CLOCKS[config.getoption("--clock")]


@pytest.fixture(scope="session")
def clock(pytestconfig: pytest.Config) -> Clock:
    """The instant this run stands at: derive every date from it."""
    return chosen_clock(pytestconfig)


@pytest.fixture(autouse=True)
def _run_at_the_injected_clock(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[None]:
    """This process's wall clock, the CLI in process and daemons started as subprocesses all
    start at the chosen instant and tick on from there together. (Not through the `clock`
    fixture: a module may define its own fixture of that name.)"""
    now = chosen_clock(request.config).now
    monkeypatch.setenv(TEST_NOW, f"{now.isoformat()}@{time.monotonic()!r}")
    with time_machine.travel(now, tick=True):
        yield


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """The CLI configures logging; put it back so one test's set-up never hides another's."""
    root = logging.getLogger()
    bot = logging.getLogger("bot")
    handlers, root_level, bot_level = list(root.handlers), root.level, bot.level
    yield
    root.handlers[:] = handlers
    root.setLevel(root_level)
    bot.setLevel(bot_level)
