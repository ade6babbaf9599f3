"""Sends alerts through Apprise (Microsoft Teams, Discord, Telegram, ntfy, Opsgenie ... by URL),
an optional extra: ``pip install 'openrouter-usage[apprise]'``.

Apprise reports only success or failure, so a failed or interrupted send is retried by the
outbox: at-least-once.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

from bot.errors import ConfigError, DeliveryError

log = logging.getLogger(__name__)
EXTRA = "pip install 'openrouter-usage[apprise]'"


@contextmanager
def _quiet() -> Iterator[None]:
    """Apprise imports modules Python deprecates (imghdr); that is not ours to report."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        yield


def available() -> bool:
    """Whether the apprise library is installed."""
    try:
        with _quiet():
            import apprise  # noqa: F401
    except ImportError:
        return False
    return True


class AppriseSender:
    """Notifies one Apprise URL; the URL (it holds tokens) never appears in an error."""

    def __init__(self, name: str, url: str) -> None:
        try:
            with _quiet():
                import apprise
        except ImportError as exc:
            raise ConfigError(f"apprise:{name} needs the apprise library: {EXTRA}") from exc
        self._name = name
        with _quiet():  # plugins load on first use
            self._apobj = apprise.Apprise()
            added = self._apobj.add(url)
        if not added:
            raise ConfigError(f"apprise.{name}: not a URL Apprise understands")

    def send(self, title: str, body: str) -> str:
        with _quiet():
            ok = self._apobj.notify(title=title, body=body)
        if not ok:
            raise DeliveryError(f"apprise:{self._name}: the notification was not accepted")
        log.debug("apprise:%s notified", self._name)
        return ""
