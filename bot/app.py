"""Wires loaded configuration to the parts: the OpenRouter client, the history store, senders."""

from __future__ import annotations

import datetime as dt
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bot.config import Config
from bot.errors import ConfigError, DataError

if TYPE_CHECKING:
    import httpx

    from bot.deliver.outbox import Transports
    from bot.openrouter import OpenRouterClient
    from bot.store import Store

log = logging.getLogger(__name__)


TEST_NOW = "OPENROUTER_USAGE_TEST_NOW"


def utcnow() -> dt.datetime:
    """The time every command runs at: the wall clock, in UTC.

    Test-only hook, not a setting: the environment variable OPENROUTER_USAGE_TEST_NOW moves the
    clock. `INSTANT` (ISO 8601 with an offset) stops it there; `INSTANT@M` makes it read INSTANT
    when `time.monotonic()` read M (a clock shared by every process on the machine) and run on
    from there. The test suite sets it so the CLI, and daemons it starts as subprocesses, run
    at the hour it chooses.
    """
    value = os.environ.get(TEST_NOW)
    if not value:
        return dt.datetime.now(dt.UTC)
    text, _, mark = value.partition("@")
    try:
        instant = dt.datetime.fromisoformat(text)
        since = time.monotonic() - float(mark) if mark else 0.0
    except ValueError:
        instant = None
    if instant is None or instant.tzinfo is None:
        raise ConfigError(f"{TEST_NOW}: expected INSTANT or INSTANT@MONOTONIC, got {value!r}")
    return instant.astimezone(dt.UTC) + dt.timedelta(seconds=since)


@dataclass
class App:
    """One run's collaborators, created lazily; `now` is the clock everything below uses and
    `sleep` the one wait (retry backoff) every client and sender uses."""

    config: Config
    env: Mapping[str, str]
    now: Callable[[], dt.datetime] = utcnow
    sleep: Callable[[float], None] = time.sleep
    transport: httpx.BaseTransport | None = None
    openrouter_key: str | None = None
    _store: Store | None = field(default=None, repr=False)

    def client(self, max_attempts: int | None = None) -> OpenRouterClient:
        """The OpenRouter client; `max_attempts` overrides the configured retries (for `check`,
        which should answer quickly)."""
        from bot.openrouter import MANAGEMENT_KEYS_URL, OpenRouterClient

        key = self.openrouter_key or self.config.openrouter.key
        if not key:
            raise ConfigError(
                "no OpenRouter key: set OPENROUTER_MANAGEMENT_KEY (or OPENROUTER_API_KEY) in the "
                f"environment or .env; create a management key at {MANAGEMENT_KEYS_URL}"
            )
        return OpenRouterClient(
            key,
            self.config.openrouter.base_url,
            timeout=self.config.openrouter.timeout,
            concurrency=self.config.openrouter.concurrency,
            max_attempts=max_attempts or self.config.openrouter.max_attempts,
            retry_budget=self.config.openrouter.retry_budget.total_seconds(),
            transport=self.transport,
            sleep=self.sleep,
        )

    def transports(self) -> Transports:
        """The Slack and SMTP senders (each created on first use)."""
        from bot.deliver.outbox import Transports

        return Transports(self.config, sleep=self.sleep)

    def store(self) -> Store:
        """The history database, created and migrated on first use."""
        if self._store is None:
            from bot.store import Store, connect

            if self.config.storage_url:
                log.debug("opening history database %s", self.storage_name())
                self._store = Store(connect(self.config.storage_url))
                return self._store
            path = self.config.storage_path
            log.debug("opening history database %s", path)
            try:
                self._store = Store(connect(path))
            except OSError as exc:
                raise ConfigError(f"storage.path: cannot open {path}: {exc}") from exc
        return self._store

    def existing_store(self) -> Store | None:
        """The history database if it exists already (reports never create one; a
        PostgreSQL database always exists), read-only when it cannot be written."""
        if self._store is not None or self.config.storage_url:
            return self.store()
        path = Path(self.config.storage_path)
        if not path.exists():
            return None
        try:
            return self.store()
        except DataError as exc:  # a read-only file or folder, say: a report only reads
            from bot.store import Store, connect_read_only

            log.debug("cannot open history database %s for writing (%s): reading it "
                      "read-only", path, exc)
            try:
                self._store = Store(connect_read_only(path))
            except DataError:
                raise exc from None
            return self._store

    def storage_name(self) -> str:
        """The history database for messages: its path, or its URL without the password."""
        if self.config.storage_url:
            from bot.store.backend import redact_url

            return redact_url(self.config.storage_url)
        return str(self.config.storage_path)

    def close(self) -> None:
        if self._store is not None:
            self._store.conn.close()
            self._store = None

    def secrets(self) -> list[str]:
        """Every secret value this run knows, for redaction of output and logs."""
        values: list[Any] = [
            self.openrouter_key,
            self.config.openrouter.key,
            self.config.slack.token,
            self.config.slack.webhook_url,
            self.config.slack.app_token,
            self.config.email.password,
            *_url_password(self.config.storage_url),
            *self.config.oncall.secrets(),
        ]
        return [v for v in values if isinstance(v, str) and v]


def _url_password(url: str | None) -> list[str]:
    """The password in a database URL, as written and percent-decoded."""
    from urllib.parse import unquote

    from bot.store.backend import url_password

    password = url_password(url) if url else None
    return [password, unquote(password)] if password else []
