"""Loads the YAML config and `.env`, interpolates ${VAR}, and validates it into dataclasses.

Every problem is one ``ConfigError`` whose message starts with the key path, for example
``alerts.rules[2].below_usd: expected a number``.
"""

from __future__ import annotations

import datetime as dt
import math
import os
import re
import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

from bot.errors import ConfigError
from bot.models import Destination, DestinationKind

DEFAULT_BASE_URL = "https://openrouter.ai/api/v1"
DEFAULT_SLACK_API = "https://slack.com/api/"
WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
ALERT_KINDS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    # kind: (thresholds of which at least one is required, optional extras)
    "low_credits": (("below_usd", "below_percent"), ()),
    "runway": (("below_days",), ()),
    "daily_spend": (("above_usd",), ()),
    "spike": (("factor",), ("min_usd",)),
    "key_limit": (("below_percent",), ()),
    "model_spend": (("above_usd",), ("model",)),
}

_DURATION = re.compile(r"^\s*(?:(\d+)d)?\s*(?:(\d+)h)?\s*(?:(\d+)m)?\s*(?:(\d+)s)?\s*$")
_CLOCK = re.compile(r"^([01]?\d|2[0-3]):([0-5]\d)(?::([0-5]\d))?$")
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


@dataclass(frozen=True)
class OpenRouterConfig:
    key: str | None = None
    base_url: str = DEFAULT_BASE_URL
    timeout: float = 30.0
    concurrency: int = 8
    max_attempts: int = 5
    retry_budget: dt.timedelta = dt.timedelta(seconds=60)


@dataclass(frozen=True)
class SlackConfig:
    token: str | None = None
    webhook_url: str | None = None
    base_url: str = DEFAULT_SLACK_API
    charts: bool = False


Security = Literal["starttls", "ssl", "none"]
SECURITY_MODES: tuple[Security, ...] = ("starttls", "ssl", "none")
DEFAULT_PORTS: dict[Security, int] = {"starttls": 587, "ssl": 465, "none": 25}


@dataclass(frozen=True)
class EmailConfig:
    """SMTP settings; ``security`` is ``starttls`` (default), ``ssl`` or ``none``."""

    host: str | None = None
    port: int | None = None
    security: Security = "starttls"
    username: str | None = None
    password: str | None = None
    sender: str = ""
    timeout: float = 30.0
    ca_file: str | None = None

    @property
    def configured(self) -> bool:
        """Whether e-mail can be sent: a host and a From address are set."""
        return bool(self.host and self.sender)

    @property
    def effective_port(self) -> int:
        """The configured port, else 587 for starttls, 465 for ssl, 25 for none."""
        return self.port if self.port is not None else DEFAULT_PORTS[self.security]

    def __repr__(self) -> str:  # keep the password out of any accidental log line
        return (
            f"EmailConfig(host={self.host!r}, port={self.effective_port}, "
            f"security={self.security!r}, username={self.username!r}, sender={self.sender!r})"
        )


@dataclass(frozen=True)
class ReportConfig:
    enabled: bool = True
    at: dt.time = dt.time(9, 0)
    day: str = "monday"
    to: tuple[Destination, ...] = ()
    top: int = 5
    skip_if_empty: bool = False


@dataclass(frozen=True)
class AlertRule:
    kind: str
    index: int
    name: str = ""
    to: tuple[Destination, ...] = ()
    below_usd: Decimal | None = None
    below_percent: Decimal | None = None
    below_days: Decimal | None = None
    above_usd: Decimal | None = None
    factor: Decimal | None = None
    min_usd: Decimal = Decimal(0)
    model: str | None = None

    @property
    def id(self) -> str:
        """Stable identity for alert state: the name if given, else kind and position."""
        return self.name or f"{self.kind}#{self.index}"


@dataclass(frozen=True)
class AlertsConfig:
    check_every: dt.timedelta = dt.timedelta(minutes=15)
    repeat_every: dt.timedelta = dt.timedelta(hours=24)
    hysteresis_percent: Decimal = Decimal(5)
    to: tuple[Destination, ...] = ()
    rules: tuple[AlertRule, ...] = ()


@dataclass(frozen=True)
class Config:
    openrouter: OpenRouterConfig = field(default_factory=OpenRouterConfig)
    timezone: str = "UTC"
    storage_path: Path = field(default_factory=lambda: default_storage_path())
    storage_url: str | None = None  # postgresql://...: used instead of the SQLite file
    lease_ttl: dt.timedelta = dt.timedelta(seconds=90)
    slack: SlackConfig = field(default_factory=SlackConfig)
    email: EmailConfig = field(default_factory=EmailConfig)
    daily: ReportConfig = field(default_factory=ReportConfig)
    weekly: ReportConfig = field(default_factory=lambda: ReportConfig(top=10))
    alerts: AlertsConfig = field(default_factory=AlertsConfig)
    sync_every: dt.timedelta = dt.timedelta(hours=1)
    delivery_max_age: dt.timedelta = dt.timedelta(hours=24)
    templates_dir: Path | None = None
    source: Path | None = None


def default_storage_path() -> Path:
    """The history database under the user's state directory (XDG)."""
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "openrouter-usage" / "history.db"


# --- environment -------------------------------------------------------------------------


def load_env(dotenv_path: str | os.PathLike[str] | None = None) -> dict[str, str]:
    """The process environment over the values of `.env` (the environment wins)."""
    path = Path(dotenv_path) if dotenv_path else Path.cwd() / ".env"
    merged: dict[str, str] = {}
    if path.is_file():
        from dotenv import dotenv_values

        merged.update({k: v for k, v in dotenv_values(path).items() if v is not None})
    merged.update(os.environ)
    return merged


def openrouter_key(env: Mapping[str, str]) -> str | None:
    """The management key: OPENROUTER_MANAGEMENT_KEY, else OPENROUTER_API_KEY."""
    return env.get("OPENROUTER_MANAGEMENT_KEY") or env.get("OPENROUTER_API_KEY") or None


# --- parsing helpers ------------------------------------------------------------------------


def parse_duration(text: str, path: str = "duration") -> dt.timedelta:
    """`30s`, `15m`, `1h`, `1d` (or combinations such as `1h30m`) as a timedelta."""
    m = _DURATION.match(text) if isinstance(text, str) and text.strip() else None
    if not m or not any(m.groups()):
        raise ConfigError(f"{path}: expected a duration such as 30s, 15m, 1h or 1d, got {text!r}")
    d, h, mi, s = (int(g) if g else 0 for g in m.groups())
    value = dt.timedelta(days=d, hours=h, minutes=mi, seconds=s)
    if value <= dt.timedelta(0):
        raise ConfigError(f"{path}: must be longer than zero")
    return value


def parse_clock(text: Any, path: str) -> dt.time:
    """`HH:MM` or `HH:MM:SS` as a time of day."""
    m = _CLOCK.match(text) if isinstance(text, str) else None
    if not m:
        raise ConfigError(f"{path}: expected a time as HH:MM or HH:MM:SS, got {text!r}")
    return dt.time(int(m.group(1)), int(m.group(2)), int(m.group(3) or 0))


def parse_destination(text: Any, path: str) -> Destination:
    """`slack:#channel`, `slack:C0123ABC`, `slack:webhook`, `email:a@b.c` or `stdout`."""
    try:
        return Destination.parse(text)
    except ValueError as exc:
        raise ConfigError(f"{path}: {exc}") from None


class _Section:
    """Reads one mapping of the config, remembering which keys were used."""

    def __init__(self, data: Any, path: str) -> None:
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ConfigError(f"{path or 'config'}: expected a mapping")
        self.data = data
        self.path = path
        self.used: set[str] = set()

    def at(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def get(self, key: str, conv: Callable[[Any, str], Any], default: Any = None) -> Any:
        self.used.add(key)
        if key not in self.data or self.data[key] is None:
            return default
        return conv(self.data[key], self.at(key))

    def section(self, key: str) -> _Section:
        self.used.add(key)
        return _Section(self.data.get(key), self.at(key))

    def finish(self) -> None:
        unknown = sorted(str(k) for k in self.data if k not in self.used)
        if unknown:
            raise ConfigError(f"{self.at(unknown[0])}: unknown option")


class EnvValue(str):
    """A whole option value taken from one ${VAR}: text that numeric and boolean options
    may read as their type (`port: ${SMTP_PORT}`)."""


def _from_env(value: Any, path: str, kind: type | types.UnionType) -> Any:
    """The typed value of an EnvValue, or `value` unchanged for a literal from the YAML."""
    if not isinstance(value, EnvValue):
        return value
    import yaml

    try:
        typed = yaml.safe_load(value)
    except yaml.YAMLError:
        return value
    return typed if isinstance(typed, kind) else value


def _str(value: Any, path: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{path}: expected a string")
    return value


def _bool(value: Any, path: str) -> bool:
    value = _from_env(value, path, bool)
    if not isinstance(value, bool):
        raise ConfigError(f"{path}: expected true or false")
    return value


def _number(value: Any, path: str) -> float:
    value = _from_env(value, path, int | float)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{path}: expected a number")
    if value < 0:
        raise ConfigError(f"{path}: must not be negative")
    return float(value)


def _decimal(value: Any, path: str) -> Decimal:
    """A non-negative number as an exact Decimal: `0.1` in the YAML is 0.1, not a float's."""
    value = _from_env(value, path, int | float)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(f"{path}: expected a number")
    if value < 0:
        raise ConfigError(f"{path}: must not be negative")
    return Decimal(str(value))


def _seconds(value: Any, path: str) -> float:
    number = _number(value, path)
    if number <= 0:
        raise ConfigError(f"{path}: expected a number of seconds above 0")
    return number


def _positive_int(value: Any, path: str) -> int:
    value = _from_env(value, path, int)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{path}: expected a whole number of at least 1")
    return value


def _duration(value: Any, path: str) -> dt.timedelta:
    return parse_duration(value, path)


def _destinations(value: Any, path: str) -> tuple[Destination, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        raise ConfigError(f"{path}: expected a list of destinations")
    return tuple(parse_destination(d, f"{path}[{i}]") for i, d in enumerate(value))


def _database_url(value: Any, path: str) -> str:
    text = _str(value, path).strip()
    if text.split(":", 1)[0].lower() not in ("postgresql", "postgres") or "://" not in text:
        raise ConfigError(f"{path}: expected a postgresql://user@host/database URL "
                          "(for SQLite set storage.path instead)")
    return text


def _choice(*options: str) -> Callable[[Any, str], Any]:
    def conv(value: Any, path: str) -> str:
        if value not in options:
            raise ConfigError(f"{path}: expected one of {', '.join(options)}, got {value!r}")
        return str(value)

    return conv


def _timezone(value: Any, path: str) -> str:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    if isinstance(value, str) and value:
        try:
            ZoneInfo(value)
            return value
        except (ZoneInfoNotFoundError, ValueError, OSError):
            pass
    raise ConfigError(f"{path}: unknown time zone {value!r} (use an IANA name such as UTC)")


def _weekday(value: Any, path: str) -> str:
    text = str(value).strip().lower() if isinstance(value, str) else ""
    for day in WEEKDAYS:
        if text in (day, day[:3]):
            return day
    raise ConfigError(f"{path}: expected a weekday such as monday, got {value!r}")


def _clock(value: Any, path: str) -> dt.time:
    return parse_clock(value, path)


# --- interpolation ---------------------------------------------------------------------------


def _interpolate(value: Any, env: Mapping[str, str], path: str, strict: bool = True) -> Any:
    """Replace ${VAR} in every string of the loaded YAML.

    A value that is exactly one ``${VAR}`` becomes an EnvValue, which numeric and boolean
    options read as their type (so ``port: ${SMTP_PORT}`` is a number). An unset variable is
    an error, or with ``strict=False`` (commands that do not need the option) leaves the
    option unset.
    """
    if isinstance(value, dict):
        return {
            k: _interpolate(v, env, f"{path}.{k}" if path else str(k), strict)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_interpolate(v, env, f"{path}[{i}]", strict) for i, v in enumerate(value)]
    if not isinstance(value, str):
        return value
    missing = [name for name in _VAR.findall(value) if name not in env]
    if missing:
        if strict:
            raise ConfigError(f"{path}: environment variable {missing[0]} is not set")
        return None
    whole = _VAR.fullmatch(value)
    if whole:
        return EnvValue(env[whole.group(1)])
    return _VAR.sub(lambda m: env[m.group(1)], value)


# --- loading ---------------------------------------------------------------------------------


def find_config_path(explicit: str | None, env: Mapping[str, str]) -> Path | None:
    """--config, else $OPENROUTER_USAGE_CONFIG, else ./config.yaml if present."""
    if explicit:
        return Path(explicit)
    if env.get("OPENROUTER_USAGE_CONFIG"):
        return Path(env["OPENROUTER_USAGE_CONFIG"])
    default = Path("config.yaml")
    return default if default.is_file() else None


def load_config(
    path: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    *,
    strict: bool = True,
) -> Config:
    """Read and validate the config file at `path` (None: defaults only) against `env`.

    With ``strict=False`` (for `report` and `sync`, which need only the OpenRouter and
    storage options) unset variables leave their option unset and destinations are not
    checked for a transport.
    """
    env = load_env() if env is None else env
    data: Any = {}
    source = Path(path) if path else None
    if source is not None:
        try:
            text = source.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot read config file {source}: {exc.strerror or exc}") from exc
        import yaml

        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark is not None else ""
            raise ConfigError(f"{source}: not valid YAML{where}") from exc
    data = _interpolate(data, env, "", strict)
    return parse_config(data, env, source, strict=strict)


def parse_config(
    data: Any, env: Mapping[str, str], source: Path | None = None, *, strict: bool = True
) -> Config:
    """Validate an already-loaded mapping into a Config."""
    root = _Section(data, "")
    base = root.section("openrouter")
    openrouter = OpenRouterConfig(
        key=openrouter_key(env),
        base_url=(
            env.get("OPENROUTER_BASE_URL") or base.get("base_url", _str, DEFAULT_BASE_URL)
        ).rstrip("/"),
        timeout=base.get("timeout", _seconds, 30.0),
        concurrency=base.get("concurrency", _positive_int, 8),
        max_attempts=base.get("max_attempts", _positive_int, 5),
        retry_budget=base.get("retry_budget", _duration, dt.timedelta(seconds=60)),
    )
    base.finish()

    s = root.section("slack")
    slack = SlackConfig(
        token=s.get("token", _str) or None,
        webhook_url=s.get("webhook_url", _str) or None,
        base_url=s.get("base_url", _str, DEFAULT_SLACK_API),
        charts=s.get("charts", _bool, False),
    )
    s.finish()

    e = root.section("email")
    email = EmailConfig(
        host=e.get("host", _str),
        port=e.get("port", _positive_int),
        security=e.get("security", _choice(*SECURITY_MODES), "starttls"),
        username=e.get("username", _str) or None,
        password=e.get("password", _str) or None,
        sender=e.get("from", _str, ""),
        timeout=e.get("timeout", _seconds, 30.0),
        ca_file=e.get("ca_file", _str),
    )
    e.finish()

    storage = root.section("storage")
    storage_path = storage.get("path", _str)
    storage_url = storage.get("url", _database_url)
    if "url" in storage.data and storage_url is None:
        raise ConfigError("storage.url: empty, or an environment variable in it is not set")
    if storage_path and storage_url:
        raise ConfigError("storage: set either path (SQLite) or url (PostgreSQL), not both")
    lease_ttl = storage.get("lease", _duration, dt.timedelta(seconds=90))
    storage.finish()

    reports = root.section("reports")
    daily = _report(reports.section("daily"), weekly=False)
    weekly = _report(reports.section("weekly"), weekly=True)
    reports.finish()

    alerts = _alerts(root.section("alerts"))
    templates_dir = root.get("templates_dir", _str)
    cfg = Config(
        openrouter=openrouter,
        timezone=root.get("timezone", _timezone, "UTC"),
        storage_path=Path(storage_path).expanduser() if storage_path else default_storage_path(),
        storage_url=storage_url,
        lease_ttl=lease_ttl,
        slack=slack,
        email=email,
        daily=daily,
        weekly=weekly,
        alerts=alerts,
        sync_every=root.get("sync_every", _duration, dt.timedelta(hours=1)),
        delivery_max_age=root.get("delivery_max_age", _duration, dt.timedelta(hours=24)),
        templates_dir=Path(templates_dir).expanduser() if templates_dir else None,
        source=source,
    )
    root.finish()
    if strict:
        _check_destinations(cfg)
        if cfg.templates_dir is not None and not cfg.templates_dir.is_dir():
            raise ConfigError(f"templates_dir: {cfg.templates_dir} is not a folder")
    return cfg


def _report(sec: _Section, *, weekly: bool) -> ReportConfig:
    report = ReportConfig(
        enabled=sec.get("enabled", _bool, True),
        at=sec.get("at", _clock, dt.time(9, 0)),
        day=sec.get("day", _weekday, "monday") if weekly else "monday",
        to=sec.get("to", _destinations, ()),
        top=sec.get("top", _positive_int, 10 if weekly else 5),
        skip_if_empty=sec.get("skip_if_empty", _bool, False),
    )
    sec.finish()
    return report


def _alerts(sec: _Section) -> AlertsConfig:
    check_every = sec.get("check_every", _duration, dt.timedelta(minutes=15))
    repeat_every = sec.get("repeat_every", _duration, dt.timedelta(hours=24))
    hysteresis = sec.get("hysteresis_percent", _decimal, Decimal(5))
    if not 0 <= hysteresis < 100:
        raise ConfigError(f"{sec.at('hysteresis_percent')}: expected a percentage below 100")
    to = sec.get("to", _destinations, ())
    sec.used.add("rules")
    raw_rules = sec.data.get("rules") or []
    if not isinstance(raw_rules, list):
        raise ConfigError(f"{sec.at('rules')}: expected a list of rules")
    rules = tuple(_rule(r, i, f"{sec.at('rules')}[{i}]") for i, r in enumerate(raw_rules))
    for rule in rules:
        if not (rule.to or to):
            raise ConfigError(f"{sec.at('rules')}[{rule.index}].to: no destinations; set it "
                              f"or {sec.at('to')}")
    names = [r.id for r in rules]
    for i, rid in enumerate(names):
        if rid in names[:i]:
            raise ConfigError(f"{sec.at('rules')}[{i}].name: duplicate rule name {rid!r}")
    sec.finish()
    return AlertsConfig(check_every, repeat_every, hysteresis, to, rules)


def _rule(data: Any, index: int, path: str) -> AlertRule:
    sec = _Section(data, path)
    kind = sec.get("kind", _choice(*ALERT_KINDS), None)
    if kind is None:
        raise ConfigError(f"{path}.kind: required, one of {', '.join(ALERT_KINDS)}")
    required, extras = ALERT_KINDS[kind]
    values = {k: sec.get(k, _decimal) for k in required + tuple(x for x in extras if x != "model")}
    if all(values[k] is None for k in required):
        raise ConfigError(f"{path}: a {kind} rule needs {' or '.join(required)}")
    rule = AlertRule(
        kind=kind,
        index=index,
        name=sec.get("name", _str, ""),
        to=sec.get("to", _destinations, ()),
        model=sec.get("model", _str) if "model" in extras else None,
        **{k: v for k, v in values.items() if v is not None},
    )
    sec.finish()
    return rule


def transport_problem(cfg: Config, dest: Destination) -> str | None:
    """What `dest` lacks to be delivered (a bot token, a webhook URL, SMTP), or None."""
    if dest.kind is DestinationKind.WEBHOOK and not cfg.slack.webhook_url:
        return "slack:webhook needs slack.webhook_url"
    if dest.kind is DestinationKind.SLACK and not cfg.slack.token:
        return f"{dest} needs slack.token (a bot token)"
    if dest.kind is DestinationKind.EMAIL and not cfg.email.configured:
        return "e-mail destinations need email.host and email.from"
    return None


def require_transport(cfg: Config, dest: Destination, where: str) -> None:
    """A destination needs its transport configured: ConfigError naming `where` if not."""
    problem = transport_problem(cfg, dest)
    if problem:
        raise ConfigError(f"{where}: {problem}")


def _check_destinations(cfg: Config) -> None:
    """Destinations must have the transport they need configured."""
    places = [
        ("reports.daily.to", cfg.daily.to),
        ("reports.weekly.to", cfg.weekly.to),
        ("alerts.to", cfg.alerts.to),
    ] + [(f"alerts.rules[{r.index}].to", r.to) for r in cfg.alerts.rules]
    for path, dests in places:
        for i, dest in enumerate(dests):
            require_transport(cfg, dest, f"{path}[{i}]")
