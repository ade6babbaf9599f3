"""Shared pytest set-up: the local fakes live in their own modules, loaded as plugins."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

pytest_plugins = [
    "tests.fake_openrouter", "tests.fake_slack", "tests.fake_smtp", "tests.pg_server",
    "tests.fake_pagerduty", "tests.fake_webhook", "tests.fake_socket_mode",
]


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
