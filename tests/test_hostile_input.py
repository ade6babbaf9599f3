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
from tests.fake_openrouter import MANAGEMENT_KEY, FakeOpenRouter, sample_org

NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)
if NOW.time() < dt.time(0, 40):  # keep "yesterday" a completed, settled day
    NOW = NOW.replace(hour=1)
YESTERDAY = NOW.date() - dt.timedelta(days=1)


def no_wait(seconds: float) -> None:
    """Retry backoff is never waited for in these tests."""


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
    assert err.splitlines()[-1] == ("openrouter-usage: error: c.yaml: not valid YAML at line 3, "
                                    "column 28: mapping values are not allowed here")
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


def test_absurd_credits_are_one_line_exit_1(org, capsys) -> None:
    org.fail_next("/credits", 200, body='{"data": {"total_credits": 1e5000, "total_usage": 1}}')
    code, out, err = cli(capsys, "report")
    assert code == 1
    assert_one_line(err)
    assert "total_credits is out of range" in err
