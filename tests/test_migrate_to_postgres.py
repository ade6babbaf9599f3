"""`migrate --to postgresql://...`: a SQLite history copied into PostgreSQL, exactly, again and
again; then the bot carries on there (already-sent digests stay sent, new rows get new ids)."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest

from bot.app import App
from bot.cli import main
from bot.config import load_config
from bot.jobs.migrate import run_migrate
from bot.store import Store, connect
from bot.store.backend import open_db
from tests.conftest import no_wait, run_clock
from tests.fake_openrouter import MANAGEMENT_KEY, FakeOpenRouter, sample_org
from tests.fake_slack import FakeSlack

NOW = run_clock().now
YESTERDAY = run_clock().digest_day  # the day a digest sent now reports on


@pytest.fixture()
def used(fake_openrouter: FakeOpenRouter, fake_slack: FakeSlack, tmp_path: Path,
         monkeypatch: pytest.MonkeyPatch, pg_url: str) -> dict[str, Any]:
    """A SQLite history after some use: synced, a digest sent, alerts fired."""
    org = sample_org(last_day=YESTERDAY, days=14)
    fake_openrouter.credits = org["credits"]
    fake_openrouter.activity_rows = org["activity"]
    fake_openrouter.key_activity = org["key_activity"]
    fake_openrouter.keys = org["keys"]
    sqlite_path = tmp_path / "history.db"

    def config(storage: str) -> Path:
        path = tmp_path / ("config-pg.yaml" if storage.startswith("postgresql") else
                           "config-sqlite.yaml")
        path.write_text(f"""
storage: {{{"url" if storage.startswith("postgresql") else "path"}: "{storage}"}}
slack: {{token: "${{SLACK_BOT_TOKEN}}", base_url: "{fake_slack.base_url}"}}
reports: {{daily: {{to: ["slack:#ops"]}}, weekly: {{to: ["slack:#ops"]}}}}
alerts:
  rules: [{{kind: low_credits, below_usd: 1000000, name: credits, to: ["slack:#alerts"]}}]
""")
        return path

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("OPENROUTER_API_KEY", raising=False)
    for name, value in {"OPENROUTER_MANAGEMENT_KEY": MANAGEMENT_KEY,
                        "OPENROUTER_BASE_URL": fake_openrouter.base_url,
                        "SLACK_BOT_TOKEN": fake_slack.token}.items():
        monkeypatch.setenv(name, value)
    old = config(str(sqlite_path))
    for argv in (["sync"], ["send", "daily"], ["alerts"]):
        assert main(["--config", str(old), "-q", *argv], sleep=no_wait) == 0
    store = Store(connect(sqlite_path))  # a log table without a primary key, a row twice
    for _ in range(2):
        store.action_log(NOW, "U1", "ack", "credits", "account", "C000ALERT", "acknowledged")
    store.conn.close()
    return {"sqlite": sqlite_path, "url": pg_url, "old": old, "new": config(pg_url),
            "slack": fake_slack}


def dump(target: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every table but schema_migrations, its rows sorted."""
    db = open_db(target)
    try:
        return {t: sorted((tuple(r) for r in db.execute(f'SELECT * FROM "{t}"')), key=repr)
                for t in db.tables() if t != "schema_migrations"}
    finally:
        db.close()


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv), sleep=no_wait)
    out, err = capsys.readouterr()
    return code, out, err


def test_migrate_copies_every_row_exactly_and_again_copies_nothing(used, capsys) -> None:
    code, out, err = cli(capsys, "--config", str(used["old"]), "migrate", "--to", used["url"])
    assert code == 0, err
    before = dump(str(used["sqlite"]))
    assert dump(used["url"]) == before  # every table, every row, money text and all
    assert sum(len(rows) for rows in before.values()) > 100
    assert {"deliveries", "alerts", "key_usage", "activity", "meta", "slack_actions"} <= {
        t for t, rows in before.items() if rows}
    total = sum(len(rows) for rows in before.values())
    assert f"all {total:,} rows are there ({total:,} copied now)" in out
    assert "key_usage" in out and "deliveries" in out

    code, out, _ = cli(capsys, "--config", str(used["old"]), "migrate", "--to", used["url"])
    assert code == 0 and f"all {total:,} rows are there (0 copied now)" in out
    assert dump(used["url"]) == before


def test_the_bot_carries_on_in_postgresql(used, capsys) -> None:
    assert cli(capsys, "--config", str(used["new"]), "migrate", "--from",
               str(used["sqlite"]))[0] == 0  # the target from storage.url
    posts = len(used["slack"].posts)
    code, out, _ = cli(capsys, "--config", str(used["new"]), "send", "daily")
    assert code == 0 and "already sent" in out  # the outbox came along
    code, out, _ = cli(capsys, "--config", str(used["new"]), "alerts")
    assert code == 0 and "nothing changed" in out  # so did the alert state
    assert len(used["slack"].posts) == posts
    # new rows get ids after the copied ones (the identity sequences were moved on)
    code, out, err = cli(capsys, "--config", str(used["new"]), "send", "weekly")
    assert code == 0, err
    assert len(used["slack"].posts) == posts + 1
    ids = [r[0] for r in dump(used["url"])["deliveries"]]
    assert len(ids) == len(set(ids)) == len(dump(str(used["sqlite"]))["deliveries"]) + 1

    def report(config: Path) -> Any:
        code, out, _ = cli(capsys, "--config", str(config), "report", "--json", "--from",
                           str(YESTERDAY - dt.timedelta(days=12)), "--to", str(YESTERDAY))
        assert code == 0
        doc = json.loads(out)
        doc.pop("as_of")  # when it ran
        return doc

    assert report(used["new"]) == report(used["old"])


def test_new_rows_follow_and_changed_rows_are_reported_never_overwritten(used,
                                                                          capsys) -> None:
    config = used["old"]
    assert cli(capsys, "--config", str(config), "migrate", "--to", used["url"])[0] == 0
    store = Store(connect(used["sqlite"]))
    store.set_meta("note", "written after the first copy")
    store.conn.close()
    code, out, _ = cli(capsys, "--config", str(config), "migrate", "--to", used["url"])
    assert code == 0 and "(1 copied now)" in out
    assert dump(used["url"]) == dump(str(used["sqlite"]))

    target = Store(connect(used["url"]))  # the daemons moved on in PostgreSQL
    target.set_meta("last_sync_at", "2099-01-01T00:00:00.000000+00:00")
    target.conn.close()
    code, _, err = cli(capsys, "--config", str(config), "migrate", "--to", used["url"])
    assert code == 1 and "meta (1 of" in err and "nothing in it was overwritten" in err
    assert Store(connect(used["url"])).get_meta("last_sync_at") == (
        "2099-01-01T00:00:00.000000+00:00")


def test_progress_counts_every_row_once(used) -> None:
    calls: list[tuple[int, int]] = []
    app = App(config=load_config(used["old"], {"SLACK_BOT_TOKEN": "x"}), env={})
    result = run_migrate(app, to_url=used["url"], progress=lambda d, t: calls.append((d, t)))
    assert result.ok and calls[0] == (0, result.rows) and calls[-1] == (result.rows,) * 2
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)


def test_a_database_already_in_use_is_refused(used, capsys) -> None:
    other = Store(connect(used["url"]))  # a daemon ran here first and sent something else
    other.outbox_put("daily", "1999-01-01", "slack:#elsewhere", "{}", NOW)
    other.conn.close()
    code, _, err = cli(capsys, "--config", str(used["old"]), "migrate", "--to", used["url"])
    assert code == 1
    assert "deliveries" in err and "migrate into a new database" in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(("argv", "message"), [
    (["migrate"], "say where to"),
    (["migrate", "--to", "mysql://h/db"], "--to: expected a postgresql://"),
    (["migrate", "--to", "postgresql://h/db", "--from", "/nowhere/h.db"], "no SQLite history"),
])
def test_usage_errors(used, capsys, argv: list[str], message: str) -> None:
    code, _, err = cli(capsys, "--config", str(used["old"]), *argv)
    assert code == 2 and message in err


def test_the_password_on_the_command_line_is_never_printed(used, capsys, pg_server) -> None:
    url = f"postgresql://bot:pa55word-xyz@127.0.0.1:{pg_server.port}/nope?connect_timeout=2"
    code, out, err = cli(capsys, "--config", str(used["old"]), "-v", "migrate", "--to", url)
    assert code == 1 and "cannot connect to history database" in err
    assert "pa55word-xyz" not in out + err


def test_progress_bar_on_a_terminal(used) -> None:
    import os
    import pty
    import subprocess
    import sys

    exe = str(Path(sys.executable).parent / "openrouter-usage")
    main_fd, term_fd = pty.openpty()  # stderr is a terminal, as in an interactive shell
    try:
        done = subprocess.run([exe, "--config", str(used["old"]), "migrate", "--to",
                               used["url"]], stdout=subprocess.PIPE, stderr=term_fd,
                              stdin=subprocess.DEVNULL, text=True, timeout=120)
        os.close(term_fd)
        chunks = []
        while True:
            try:
                chunk = os.read(main_fd, 65536)
            except OSError:  # the terminal's other end is closed: all read
                break
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(main_fd)
    screen = b"".join(chunks).decode()
    assert done.returncode == 0, screen
    total = sum(len(rows) for rows in dump(str(used["sqlite"])).values())
    assert "\rCopying rows [" in screen and f"] {total}/{total}" in screen
    assert "Copying rows" not in done.stdout  # the summary alone goes to stdout
