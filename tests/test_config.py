"""Config loading: interpolation, validation messages naming the key path, defaults."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from bot.config import load_config, parse_destination, parse_duration
from bot.errors import ConfigError
from bot.models import Destination, DestinationKind

ROOT = Path(__file__).resolve().parent.parent


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def test_example_config_is_valid() -> None:
    env = {"SLACK_BOT_TOKEN": "xoxb-1", "SMTP_PASSWORD": "pw", "OPENROUTER_API_KEY": "k" * 10,
           "PAGERDUTY_ROUTING_KEY": "r" * 32, "OPS_BRIDGE_SECRET": "s" * 16,
           "TEAMS_APPRISE_URL": "msteams://a/b/c"}
    cfg = load_config(ROOT / "config.example.yaml", env)
    assert cfg.timezone == "Europe/Berlin"
    assert cfg.slack.token == "xoxb-1"
    assert cfg.email.password == "pw"
    assert cfg.daily.at == dt.time(9, 0)
    assert cfg.weekly.day == "monday"
    assert tuple(map(str, cfg.weekly.to)) == (
        "email:finance@example.com", "email:eng-leads@example.com")
    assert [r.kind for r in cfg.alerts.rules] == [
        "low_credits",
        "runway",
        "daily_spend",
        "spike",
        "key_limit",
        "model_spend",
        "burn_rate",
        "budget",
        "budget",
        "budget",
    ]
    assert cfg.alerts.rules[0].below_usd == 50.0
    assert cfg.alerts.rules[5].id == "expensive-model"
    assert cfg.alerts.rules[1].id == "runway#1"
    assert cfg.alerts.check_every == dt.timedelta(minutes=15)
    assert cfg.openrouter.key == "k" * 10


def test_no_file_gives_defaults() -> None:
    cfg = load_config(None, {})
    assert cfg.openrouter.base_url == "https://openrouter.ai/api/v1"
    assert cfg.openrouter.key is None
    assert cfg.sync_every == dt.timedelta(hours=1)
    assert cfg.daily.top == 5 and cfg.weekly.top == 10


def test_management_key_preferred_and_base_url_from_env() -> None:
    env = {
        "OPENROUTER_MANAGEMENT_KEY": "mgmt-key-1",
        "OPENROUTER_API_KEY": "plain-key-2",
        "OPENROUTER_BASE_URL": "http://127.0.0.1:9/api/v1/",
    }
    cfg = load_config(None, env)
    assert cfg.openrouter.key == "mgmt-key-1"
    assert cfg.openrouter.base_url == "http://127.0.0.1:9/api/v1"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "alerts:\n  rules:\n    - kind: low_credits\n    - kind: runway\n      below_days: 3\n"
            "    - kind: low_credits\n      below_usd: lots\n",
            "alerts.rules[0]: a low_credits rule needs below_usd or below_percent",
        ),
        (
            "alerts:\n  rules:\n    - {kind: runway, below_days: 3}\n"
            "    - {kind: runway, below_days: 1}\n"
            "    - {kind: low_credits, below_usd: lots}\n",
            "alerts.rules[2].below_usd: expected a number",
        ),
        ("alerts:\n  rules:\n    - {kind: sideways}\n", "alerts.rules[0].kind: expected one of"),
        ("slack:\n  tokn: x\n", "slack.tokn: unknown option"),
        ("colour: blue\n", "colour: unknown option"),
        ("reports:\n  daily:\n    at: '25:00'\n", "reports.daily.at: expected a time"),
        ("reports:\n  weekly:\n    day: someday\n", "reports.weekly.day: expected a weekday"),
        ("reports:\n  daily:\n    top: 0\n", "reports.daily.top: expected a whole number"),
        (
            "reports:\n  daily:\n    to: ['slack #x']\n",
            "reports.daily.to[0]: expected a destination",
        ),
        (
            "reports:\n  daily:\n    to: ['slack:#x']\n",
            "reports.daily.to[0]: slack:#x needs slack.token",
        ),
        ("reports:\n  daily:\n    to: ['email:a@b.co']\n", "e-mail destinations need email.host"),
        ("sync_every: often\n", "sync_every: expected a duration"),
        ("timezone: Mars/Olympus\n", "timezone: unknown time zone"),
        ("email:\n  security: tls\n", "email.security: expected one of starttls, ssl, none"),
        ("slack:\n  token: ${NOPE_NOT_SET}\n", "slack.token: environment variable NOPE_NOT_SET"),
        ("- a list\n", "config: expected a mapping"),
        ("slack: {token: x}\nalerts:\n  rules:\n    - {kind: runway, below_days: 3}\n",
         "alerts.rules[0].to: no destinations; set it or alerts.to"),
        ("alerts:\n  hysteresis_percent: 100\n",
         "alerts.hysteresis_percent: expected a percentage"),
        ("openrouter:\n  timeout: 0\n", "openrouter.timeout: expected a number of seconds above 0"),
        ("email:\n  timeout: 0\n", "email.timeout: expected a number of seconds above 0"),
        ("openrouter: [\n", "not valid YAML at line"),
    ],
)
def test_errors_name_the_key_path(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, text), {})
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_interpolation_and_destinations(tmp_path: Path) -> None:
    text = (
        "slack:\n  token: ${TOK}\n  webhook_url: ${HOOK}\n"
        "reports:\n  daily:\n    to: [slack:#ops, slack:C0123ABC, slack:webhook, stdout]\n"
    )
    cfg = load_config(write(tmp_path, text), {"TOK": "xoxb-abc", "HOOK": "http://h/x"})
    assert cfg.slack.webhook_url == "http://h/x"
    assert tuple(map(str, cfg.daily.to)) == (
        "slack:#ops", "slack:C0123ABC", "slack:webhook", "stdout")


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "nope.yaml", {})


def test_dotenv_is_read_and_environment_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bot.config import load_env

    (tmp_path / ".env").write_text("OPENROUTER_API_KEY=from-dotenv\nONLY_IN_DOTENV=1\n")
    monkeypatch.setenv("OPENROUTER_API_KEY", "from-env")
    env = load_env(tmp_path / ".env")
    assert env["OPENROUTER_API_KEY"] == "from-env"
    assert env["ONLY_IN_DOTENV"] == "1"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30s", dt.timedelta(seconds=30)),
        ("15m", dt.timedelta(minutes=15)),
        ("1h", dt.timedelta(hours=1)),
        ("1d", dt.timedelta(days=1)),
        ("1h30m", dt.timedelta(minutes=90)),
    ],
)
def test_durations_parse_into_timedeltas(text: str, expected: dt.timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["", "0s", "5", "1w", "m"])
def test_bad_durations_are_config_errors(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_duration(text, "x")


def test_a_whole_value_variable_takes_its_yaml_type(tmp_path: Path) -> None:
    text = ("email:\n  host: h\n  port: ${SMTP_PORT}\n  from: a@b.co\n  password: ${PW}\n"
            "slack:\n  charts: ${CHARTS}\n")
    env = {"SMTP_PORT": "2525", "PW": "123456", "CHARTS": "true"}
    cfg = load_config(write(tmp_path, text), env)
    assert cfg.email.port == 2525 and cfg.slack.charts is True
    assert cfg.email.password == "123456"  # a string option stays a string
    with pytest.raises(ConfigError, match="email.port: expected a port number"):
        load_config(write(tmp_path, text), {**env, "SMTP_PORT": "many"})


def test_lenient_loading_for_commands_that_need_little(tmp_path: Path) -> None:
    text = "slack:\n  token: ${UNSET_TOKEN}\nreports:\n  daily:\n    to: ['slack:#x']\n"
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match="UNSET_TOKEN"):
        load_config(path, {})
    cfg = load_config(path, {}, strict=False)
    assert cfg.slack.token is None


@pytest.mark.parametrize(
    ("text", "kind", "target"),
    [
        ("slack:#ops", DestinationKind.SLACK, "#ops"),
        ("slack:C0123ABC", DestinationKind.SLACK, "C0123ABC"),
        ("slack:webhook", DestinationKind.WEBHOOK, ""),
        ("email:lead@example.com", DestinationKind.EMAIL, "lead@example.com"),
        ("stdout", DestinationKind.STDOUT, ""),
    ],
)
def test_destination_parses_into_kind_and_target_and_prints_back_the_same(
    text: str, kind: DestinationKind, target: str
) -> None:
    dest = Destination.parse(text)
    assert (dest.kind, dest.target) == (kind, target)
    assert str(dest) == text  # the outbox keys deliveries by this form: it must not drift


@pytest.mark.parametrize("text", ["slack:", "slack:#a b", "email:nobody", "stdout:x", "pager:me",
                                  "", "Slack:#ops"])
def test_a_malformed_destination_names_the_forms_it_accepts(text: str) -> None:
    with pytest.raises(ConfigError, match=r"^--to x: expected a destination such as slack:#"):
        parse_destination(text, "--to x")


@pytest.mark.parametrize("libyaml", [True, False])
def test_yaml_reads_alike_with_and_without_libyaml(tmp_path: Path, monkeypatch, libyaml) -> None:
    """The config is read with libyaml where PyYAML has it, else with PyYAML's own parser:
    the same values, aliases refused and deep nesting one ConfigError either way."""
    import yaml

    if not libyaml:
        monkeypatch.delattr(yaml, "CSafeLoader")
    path = tmp_path / "c.yaml"
    path.write_text("timezone: Europe/Berlin\nopenrouter: {timeout: 7, concurrency: 3}\n")
    config = load_config(path, {"OPENROUTER_MANAGEMENT_KEY": "k"})
    assert (config.timezone, config.openrouter.timeout, config.openrouter.concurrency) == (
        "Europe/Berlin", 7.0, 3)
    path.write_text("a: &x [1, 2]\nb: *x\n")
    with pytest.raises(ConfigError, match="line 2, column 4: aliases"):
        load_config(path, {})
    # past libyaml's 1,000 levels, or past Python's recursion limit (3 frames a level)
    depth = 1500 if libyaml else 500
    path.write_text("a: " + "[" * depth + "]" * depth + "\n")
    with pytest.raises(ConfigError, match=r"c.yaml: (not valid YAML at .*: exceeded maximum "
                                          r"nesting depth|nested too deeply)$"):
        load_config(path, {})
