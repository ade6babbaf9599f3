"""Loads the YAML config and `.env`, interpolates ${VAR}, and validates it into dataclasses.

Every problem is one ``ConfigError`` whose message starts with the key path, for example
``alerts.rules[2].below_usd: expected a number``, and never quotes a secret. A config file must
be a regular file of at most 1 MiB of UTF-8 YAML without aliases; keys and tokens lose the
whitespace around them (a Kubernetes Secret made from a file ends in a newline) and may hold no
other control characters.
"""

from __future__ import annotations

import datetime as dt
import functools
import math
import os
import re
import stat
import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal, cast

from bot.errors import ConfigError
from bot.models import Destination, DestinationKind
from bot.text import one_line

DEFAULT_BASE_URL = "https://openrouter.ai/api/v1"
DEFAULT_SLACK_API = "https://slack.com/api/"
WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
ALERT_KINDS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    # kind: (thresholds of which at least one is required, optional extras)
    "low_credits": (("below_usd", "below_percent"), ()),
    "runway": (("below_days",), ()),
    "daily_spend": (("above_usd",), ()),
    "spike": (("factor",), ("min_usd", "baseline", "per", "key", "model")),
    "key_limit": (("below_percent", "forecast"), ("key",)),
    "model_spend": (("above_usd",), ("model",)),
    "budget": (("amount_usd",), ("period", "notify_at", "forecast", "per", "key", "model",
                                 "workspace")),
    "burn_rate": (("above_usd_per_hour", "factor"), ("window", "min_usd", "per", "key",
                                                      "model")),
}
BudgetPeriod = Literal["day", "week", "month"]
Scope = Literal["account", "key", "model", "workspace"]
Baseline = Literal["weekday", "7d"]
SCOPES: dict[str, tuple[Scope, ...]] = {
    "budget": ("account", "key", "model", "workspace"),
    "spike": ("account", "key", "model"),
    "burn_rate": ("account", "key", "model"),
}
DEFAULT_NOTIFY_AT = (Decimal(50), Decimal(80), Decimal(100))
MAX_BURN_WINDOW = dt.timedelta(hours=3)  # the analytics API's limit for minute buckets

_DURATION = re.compile(r"^\s*(?:(\d+)d)?\s*(?:(\d+)h)?\s*(?:(\d+)m)?\s*(?:(\d+)s)?\s*$")
_CLOCK = re.compile(r"^([01]?\d|2[0-3]):([0-5]\d)(?::([0-5]\d))?$")
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_ADDRESS = re.compile(r"^[^@\s<>]+@[^@\s<>]+$")

MAX_CONFIG_BYTES = 1 << 20  # a config file (or .env) larger than this is not one
MAX_DURATION = dt.timedelta(days=365)
MAX_SECONDS = 86_400.0  # timeouts: a day at most


@dataclass(frozen=True)
class OpenRouterConfig:
    key: str | None = None
    base_url: str = DEFAULT_BASE_URL
    timeout: float = 30.0
    concurrency: int = 16
    max_attempts: int = 5
    retry_budget: dt.timedelta = dt.timedelta(seconds=60)


@dataclass(frozen=True)
class SlackConfig:
    token: str | None = None
    webhook_url: str | None = None
    base_url: str = DEFAULT_SLACK_API
    charts: bool = False
    # the interactive bot (Socket Mode): an app-level token turns it on
    app_token: str | None = None
    command: str = "/openrouter"
    allowed_users: tuple[str, ...] = ()  # user (U…/W…) or user group (S…) IDs; () = everyone


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
    # budget: `amount_usd` per `period`, notices at `notify_at` percent, optional forecast
    amount_usd: Decimal | None = None
    period: BudgetPeriod = "month"
    notify_at: tuple[Decimal, ...] = DEFAULT_NOTIFY_AT
    forecast: bool = False  # budget, key_limit: alert on the projected end of the period
    # what a budget, spike or burn_rate rule watches: the account, each key or each model
    # (`key`, `model` and `workspace` narrow it to one; a key by its name or hash, a workspace
    # by its name, slug or id)
    per: Scope = "account"
    key: str | None = None
    workspace: str | None = None
    baseline: Baseline = "weekday"  # spike: the same weekday's median, or the 7-day average
    above_usd_per_hour: Decimal | None = None  # burn_rate
    window: dt.timedelta = dt.timedelta(minutes=15)  # burn_rate

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


MAX_BACKFILL = dt.timedelta(days=365)  # the analytics API answers for a year back


@dataclass(frozen=True)
class HistoryConfig:
    backfill: dt.timedelta = MAX_BACKFILL  # how far back the first `sync` fills the history


DEFAULT_PAGERDUTY_URL = "https://events.pagerduty.com/v2/enqueue"


@dataclass(frozen=True)
class HookConfig:
    """One `webhooks:` entry: where its JSON goes and the secret that signs it."""

    url: str
    secret: str | None = None
    timeout: float = 10.0

    def __repr__(self) -> str:  # the URL may carry a token, the secret is one
        return "HookConfig(url=***, secret=***)"


@dataclass(frozen=True)
class OnCallConfig:
    """Alert-only destinations: PagerDuty routing keys (variable -> key), webhooks and
    Apprise URLs by name. Every value here is a secret."""

    pagerduty_url: str = DEFAULT_PAGERDUTY_URL
    pagerduty_keys: dict[str, str] = field(default_factory=dict)
    webhooks: dict[str, HookConfig] = field(default_factory=dict)
    apprise: dict[str, str] = field(default_factory=dict)
    timeout: float = 10.0

    def __repr__(self) -> str:
        return (f"OnCallConfig(pagerduty_keys={sorted(self.pagerduty_keys)}, "
                f"webhooks={sorted(self.webhooks)}, apprise={sorted(self.apprise)})")

    def secrets(self) -> list[str]:
        return [*self.pagerduty_keys.values(), *self.apprise.values(),
                *(v for h in self.webhooks.values() for v in (h.url, h.secret) if v)]


@dataclass(frozen=True)
class Config:
    openrouter: OpenRouterConfig = field(default_factory=OpenRouterConfig)
    timezone: str = "UTC"
    storage_path: Path = field(default_factory=lambda: default_storage_path())
    storage_url: str | None = None  # postgresql://...: used instead of the SQLite file
    # how long a lease (the daemon's, an alerts run's) or a delivery claim outlives its last
    # renewal: a run that died is taken over this long after its last heartbeat
    lease_ttl: dt.timedelta = dt.timedelta(minutes=3)
    slack: SlackConfig = field(default_factory=SlackConfig)
    email: EmailConfig = field(default_factory=EmailConfig)
    daily: ReportConfig = field(default_factory=ReportConfig)
    weekly: ReportConfig = field(default_factory=lambda: ReportConfig(top=10))
    alerts: AlertsConfig = field(default_factory=AlertsConfig)
    sync_every: dt.timedelta = dt.timedelta(hours=1)
    delivery_max_age: dt.timedelta = dt.timedelta(hours=24)
    templates_dir: Path | None = None
    source: Path | None = None
    history: HistoryConfig = field(default_factory=HistoryConfig)
    oncall: OnCallConfig = field(default_factory=OnCallConfig)


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
        import io

        from dotenv import dotenv_values

        text = read_text_file(path, "the .env file")
        values = dotenv_values(stream=io.StringIO(text))
        merged.update({k: v for k, v in values.items() if v is not None})
    merged.update(os.environ)
    return merged


def read_text_file(path: Path, what: str) -> str:
    """A regular file of at most MAX_CONFIG_BYTES of UTF-8 text, or a one-line ConfigError
    (never blocking on a FIFO, never reading a device or a folder)."""
    try:
        info = os.stat(path)
        if not stat.S_ISREG(info.st_mode):
            raise ConfigError(f"{what} {path}: not a regular file")
        if info.st_size > MAX_CONFIG_BYTES:
            raise ConfigError(f"{what} {path}: larger than {MAX_CONFIG_BYTES >> 20} MiB")
        with open(path, "rb") as handle:
            raw = handle.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{what} {path}: larger than {MAX_CONFIG_BYTES >> 20} MiB")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ConfigError(f"{what} {path}: not UTF-8 text (line {line})") from None


def clean_secret(value: str, where: str, *, strip: str | None = None) -> str | None:
    """A key, token or password as read: the whitespace around it (or the characters in
    `strip`) removed; None when nothing is left. Control characters inside, and for HTTP
    headers and SMTP AUTH anything but ASCII, are a ConfigError that never quotes the value."""
    text = value.strip(strip)
    if _CONTROL.search(text):
        raise ConfigError(f"{where}: contains a control character (a line break inside?); "
                          "it must be one line of text")
    if not text.isascii():
        raise ConfigError(f"{where}: contains non-ASCII characters, which it cannot carry "
                          "(HTTP headers and SMTP AUTH are ASCII)")
    return text or None


def openrouter_key(env: Mapping[str, str]) -> str | None:
    """The management key: OPENROUTER_MANAGEMENT_KEY, else OPENROUTER_API_KEY."""
    for name in ("OPENROUTER_MANAGEMENT_KEY", "OPENROUTER_API_KEY"):
        key = clean_secret(env.get(name) or "", name)
        if key:
            return key
    return None


# --- parsing helpers ------------------------------------------------------------------------


def parse_duration(text: str, path: str = "duration") -> dt.timedelta:
    """`30s`, `15m`, `1h`, `1d` (or combinations such as `1h30m`) as a timedelta."""
    m = _DURATION.match(text) if isinstance(text, str) and text.strip() else None
    if not m or not any(m.groups()):
        raise ConfigError(f"{path}: expected a duration such as 30s, 15m, 1h or 1d, got {text!r}")
    d, h, mi, s = (int(g) if g else 0 for g in m.groups())
    seconds = ((d * 24 + h) * 60 + mi) * 60 + s
    if seconds <= 0:
        raise ConfigError(f"{path}: must be longer than zero")
    if seconds > MAX_DURATION.total_seconds():
        raise ConfigError(f"{path}: at most {MAX_DURATION.days}d, got {text.strip()[:40]!r}")
    return dt.timedelta(seconds=seconds)


def parse_clock(text: Any, path: str) -> dt.time:
    """`HH:MM` or `HH:MM:SS` as a time of day."""
    if isinstance(text, int) and not isinstance(text, bool) and 0 <= text < 86_400:
        # YAML 1.1 reads an unquoted 10:30 as the base-60 number 630
        hours, minutes = divmod(text, 60)
        written = f"{hours}:{minutes:02d}" if text < 24 * 60 else \
            f"{text // 3600}:{text // 60 % 60:02d}:{text % 60:02d}"
        raise ConfigError(f'{path}: put the time in quotes, "{written}" (unquoted, YAML reads '
                          f"it as the number {text})")
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
    try:
        typed = _parse_yaml(str(value), f"{path} (from the environment)")
    except ConfigError:
        return value
    return typed if isinstance(typed, kind) else value


def _str(value: Any, path: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{path}: expected a string")
    return value


def _line(value: Any, path: str) -> str:
    """A string of one line (host names, addresses, URLs): no control characters."""
    text = _str(value, path).strip()
    if _CONTROL.search(text):
        raise ConfigError(f"{path}: contains a control character (a line break inside?)")
    return text


def _token(value: Any, path: str) -> str | None:
    """A key, token or webhook URL: surrounding whitespace stripped, one line of ASCII."""
    return clean_secret(_str(value, path), path)


def _password(value: Any, path: str) -> str | None:
    """A password: a trailing line break dropped (spaces kept), one line of ASCII."""
    return clean_secret(_str(value, path), path, strip="\r\n")


def _sender(value: Any, path: str) -> str:
    """The From address, `a@example.com` or `Name <a@example.com>`, on one line."""
    from email.utils import parseaddr

    text = _line(value, path)
    if text and not _ADDRESS.match(parseaddr(text)[1]):
        raise ConfigError(f"{path}: expected an address such as usage@example.com or "
                          f'"Usage <usage@example.com>", got {text[:80]!r}')
    return text


def _port(value: Any, path: str) -> int:
    port = _from_env(value, path, int)
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise ConfigError(f"{path}: expected a port number from 1 to 65535")
    return port


def _bool(value: Any, path: str) -> bool:
    value = _from_env(value, path, bool)
    if not isinstance(value, bool):
        raise ConfigError(f"{path}: expected true or false")
    return value


def _finite(value: Any) -> bool:
    """Whether a YAML number is an ordinary one (not .nan, .inf or too large for a float)."""
    if isinstance(value, int):
        return abs(value) < 10**300
    return math.isfinite(value)


def _number(value: Any, path: str) -> float:
    value = _from_env(value, path, int | float)
    if isinstance(value, bool) or not isinstance(value, int | float) or not _finite(value):
        raise ConfigError(f"{path}: expected a number")
    if value < 0:
        raise ConfigError(f"{path}: must not be negative")
    return float(value)


def _decimal(value: Any, path: str) -> Decimal:
    """A non-negative number as an exact Decimal: `0.1` in the YAML is 0.1, not a float's."""
    value = _from_env(value, path, int | float)
    if isinstance(value, bool) or not isinstance(value, int | float) or not _finite(value):
        raise ConfigError(f"{path}: expected a number")
    if value < 0:
        raise ConfigError(f"{path}: must not be negative")
    return Decimal(str(value))


def _seconds(value: Any, path: str) -> float:
    number = _number(value, path)
    if not 0 < number <= MAX_SECONDS:
        raise ConfigError(f"{path}: expected a number of seconds above 0 and at most "
                          f"{MAX_SECONDS:.0f}")
    return number


def _positive_int(value: Any, path: str) -> int:
    value = _from_env(value, path, int)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{path}: expected a whole number of at least 1")
    return value


def _duration(value: Any, path: str) -> dt.timedelta:
    return parse_duration(value, path)


def parse_backfill(value: Any, path: str) -> dt.timedelta:
    """Whole days from 1d to 365d (`90d`): how far back to fill history."""
    days = parse_duration(value, path)
    if days % dt.timedelta(days=1) or not dt.timedelta(days=1) <= days <= MAX_BACKFILL:
        raise ConfigError(f"{path}: expected whole days from 1d to 365d (the analytics API "
                          f"keeps a year), got {value!r}")
    return days


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


def _app_token(value: Any, path: str) -> str | None:
    text = clean_secret(_str(value, path), path)
    if text and not text.startswith("xapp-"):
        raise ConfigError(f"{path}: expected an app-level token (xapp-...)")
    return text


def _slash_command(value: Any, path: str) -> str:
    text = _str(value, path).strip()
    if not re.fullmatch(r"/[a-z0-9_-]{1,31}", text):
        raise ConfigError(f"{path}: expected a slash command such as /openrouter, got {value!r}")
    return text


def _slack_ids(value: Any, path: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        raise ConfigError(f"{path}: expected a list of Slack user or user group IDs")
    for i, item in enumerate(value):
        if not (isinstance(item, str) and re.fullmatch(r"[UWS][A-Z0-9]{2,}", item)):
            raise ConfigError(f"{path}[{i}]: expected a Slack user ID (U0123ABC) or user group "
                              f"ID (S0123ABC), got {item!r}")
    return tuple(value)


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
        data = _parse_yaml(read_text_file(source, "config file"), str(source)) or {}
    data = _interpolate(data, env, "", strict)
    return parse_config(data, env, source, strict=strict)


@functools.cache
def _loader() -> type:
    """PyYAML's safe loader, refusing aliases (`*name`): a few lines of them expand into
    billions of nodes (the "billion laughs")."""
    import yaml

    class Loader(yaml.SafeLoader):
        def compose_node(self, parent: Any, index: Any) -> Any:
            if self.check_event(yaml.AliasEvent):
                mark = self.peek_event().start_mark
                raise yaml.MarkedYAMLError(problem="aliases (*name) are not allowed",
                                           problem_mark=mark)
            return super().compose_node(parent, index)

    return Loader


def _parse_yaml(text: str, source: str) -> Any:
    """YAML text as Python values; a syntax error names its line and column and the problem,
    never the text of the line (it may hold a password)."""
    import yaml

    fast = getattr(yaml, "CSafeLoader", None)  # libyaml: ~10x faster where installed
    try:
        if fast is None:
            return yaml.load(text, Loader=_loader())
        for event in yaml.parse(text, Loader=fast):  # refuse aliases before building
            if isinstance(event, yaml.AliasEvent):  # (libyaml's mark, the same fields)
                raise yaml.MarkedYAMLError(problem="aliases (*name) are not allowed",
                                           problem_mark=cast(Any, event.start_mark))
        return yaml.load(text, Loader=fast)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = one_line(exc.problem or "", 120)
        raise ConfigError(f"{source}: not valid YAML{where}"
                          + (f": {problem}" if problem else "")) from None
    except yaml.YAMLError:
        raise ConfigError(f"{source}: not valid YAML") from None
    except RecursionError:
        raise ConfigError(f"{source}: nested too deeply") from None


def parse_config(
    data: Any, env: Mapping[str, str], source: Path | None = None, *, strict: bool = True
) -> Config:
    """Validate an already-loaded mapping into a Config."""
    root = _Section(data, "")
    base = root.section("openrouter")
    file_url = base.get("base_url", _line, DEFAULT_BASE_URL)  # the environment wins
    openrouter = OpenRouterConfig(
        key=openrouter_key(env),
        base_url=(env.get("OPENROUTER_BASE_URL", "").strip() or file_url).rstrip("/"),
        timeout=base.get("timeout", _seconds, 30.0),
        concurrency=base.get("concurrency", _positive_int, 16),
        max_attempts=base.get("max_attempts", _positive_int, 5),
        retry_budget=base.get("retry_budget", _duration, dt.timedelta(seconds=60)),
    )
    base.finish()

    s = root.section("slack")
    slack = SlackConfig(
        token=s.get("token", _token),
        webhook_url=s.get("webhook_url", _token),
        base_url=s.get("base_url", _line, DEFAULT_SLACK_API),
        charts=s.get("charts", _bool, False),
        app_token=s.get("app_token", _app_token) or None,
        command=s.get("command", _slash_command, "/openrouter"),
        allowed_users=s.get("allowed_users", _slack_ids, ()),
    )
    s.finish()
    if slack.app_token and not slack.token:
        raise ConfigError("slack.app_token: the interactive bot also needs slack.token (a bot "
                          "token, xoxb-...)")

    e = root.section("email")
    email = EmailConfig(
        host=e.get("host", _line),
        port=e.get("port", _port),
        security=e.get("security", _choice(*SECURITY_MODES), "starttls"),
        username=e.get("username", _token),
        password=e.get("password", _password),
        sender=e.get("from", _sender, ""),
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
    lease_ttl = storage.get("lease", _duration, dt.timedelta(minutes=3))
    storage.finish()
    if storage_path and Path(storage_path).expanduser().is_dir():
        raise ConfigError(f"storage.path: {storage_path} is a folder; name the database file, "
                          "for example history.db inside it")

    hist = root.section("history")
    history = HistoryConfig(backfill=hist.get("backfill", parse_backfill, MAX_BACKFILL))
    hist.finish()

    reports = root.section("reports")
    daily = _report(reports.section("daily"), weekly=False)
    weekly = _report(reports.section("weekly"), weekly=True)
    reports.finish()

    alerts = _alerts(root.section("alerts"))
    oncall = _oncall(root, alerts, env)
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
        history=history,
        oncall=oncall,
    )
    root.finish()
    if strict:
        _check_destinations(cfg)
        if cfg.templates_dir is not None and not cfg.templates_dir.is_dir():
            raise ConfigError(f"templates_dir: {cfg.templates_dir} is not a folder")
    return cfg


def _oncall(root: _Section, alerts: AlertsConfig, env: Mapping[str, str]) -> OnCallConfig:
    """`pagerduty:`, `webhooks:` and `apprise:`, and the routing keys the alerts name."""
    pd = root.section("pagerduty")
    url = pd.get("events_url", _line, DEFAULT_PAGERDUTY_URL)
    timeout = pd.get("timeout", _seconds, 10.0)
    pd.finish()
    hooks_sec = root.section("webhooks")
    hooks: dict[str, HookConfig] = {}
    for name in hooks_sec.data:
        h = hooks_sec.section(str(name))
        hook_url = h.get("url", _token)
        if not hook_url:
            raise ConfigError(f"{h.at('url')}: required (the URL the alert JSON is posted to)")
        hooks[str(name)] = HookConfig(hook_url, h.get("secret", _token),
                                      h.get("timeout", _seconds, 10.0))
        h.finish()
    apprise_sec = root.section("apprise")
    urls = {str(name): apprise_sec.get(str(name), _token) for name in list(apprise_sec.data)}
    apprise_sec.finish()
    keys = {}
    for dest in (*alerts.to, *(d for r in alerts.rules for d in r.to)):
        if dest.kind is DestinationKind.PAGERDUTY and dest.target in env:
            key = clean_secret(env[dest.target], dest.target)
            if key:
                keys[dest.target] = key
    return OnCallConfig(url, keys, hooks, {k: v for k, v in urls.items() if v}, timeout)


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


def _percents(value: Any, path: str) -> tuple[Decimal, ...]:
    if not isinstance(value, list) or not value:
        raise ConfigError(f"{path}: expected a list of percentages such as [50, 80, 100]")
    out = [_decimal(v, f"{path}[{i}]") for i, v in enumerate(value)]
    for i, v in enumerate(out):
        if v <= 0:
            raise ConfigError(f"{path}[{i}]: expected a percentage above 0")
    return tuple(sorted(set(out)))


def _window(value: Any, path: str) -> dt.timedelta:
    window = parse_duration(value, path)
    if window > MAX_BURN_WINDOW:
        raise ConfigError(f"{path}: at most 3h (the longest window of minute data)")
    return window


# how each rule option is read (thresholds not listed here are non-negative numbers)
_RULE_OPTIONS: dict[str, Callable[[Any, str], Any]] = {
    "model": _str,
    "key": _str,
    "workspace": _str,
    "period": _choice("day", "week", "month"),
    "notify_at": _percents,
    "forecast": _bool,
    "baseline": _choice("weekday", "7d"),
    "window": _window,
}


def _rule(data: Any, index: int, path: str) -> AlertRule:
    sec = _Section(data, path)
    kind = sec.get("kind", _choice(*ALERT_KINDS), None)
    if kind is None:
        raise ConfigError(f"{path}.kind: required, one of {', '.join(ALERT_KINDS)}")
    required, extras = ALERT_KINDS[kind]
    values = {k: sec.get(k, _RULE_OPTIONS.get(k, _decimal))
              for k in required + extras if k != "per"}
    if all(values[k] in (None, False) for k in required):
        raise ConfigError(f"{path}: a {kind} rule needs {' or '.join(required)}")
    if "per" in extras:
        narrowed = [k for k in ("key", "model", "workspace") if values.get(k) is not None]
        default = narrowed[0] if narrowed else "account"
        values["per"] = sec.get("per", _choice(*SCOPES[kind]), default)
        for k in narrowed:
            if values["per"] != k:
                raise ConfigError(f"{path}.{k}: only with per: {k}")
    rule = AlertRule(
        kind=kind,
        index=index,
        name=sec.get("name", _str, ""),
        to=sec.get("to", _destinations, ()),
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
    if dest.kind is DestinationKind.PAGERDUTY and dest.target not in cfg.oncall.pagerduty_keys:
        return f"{dest} needs the environment variable {dest.target} (the routing key)"
    if dest.kind is DestinationKind.HOOK and dest.target not in cfg.oncall.webhooks:
        return f"{dest} needs webhooks.{dest.target}.url"
    if dest.kind is DestinationKind.APPRISE and dest.target not in cfg.oncall.apprise:
        return f"{dest} needs apprise.{dest.target} (an Apprise URL)"
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
            if dest.kind.alerts_only and path.startswith("reports."):
                raise ConfigError(f"{path}[{i}]: {dest.kind} destinations take alerts only")
            require_transport(cfg, dest, f"{path}[{i}]")
