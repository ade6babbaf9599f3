"""Sends alert events to PagerDuty's Events API v2: `trigger` and `resolve` under one
`dedup_key` (the alert's identity), so PagerDuty's incident follows our alert's lifecycle.

Events are idempotent per `dedup_key` (a second trigger of an open incident, a second resolve,
change nothing), so a send whose answer was lost is safely sent again: exactly once in effect.
The routing key is added here, at send time, from the configuration: it is never stored in
the outbox nor shown.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import httpx

from bot.deadline import verified_context
from bot.errors import ConfigError, DeliveryError
from bot.text import one_line, redact

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 3
BACKOFF = 1.0


class PagerDutySender:
    """Posts events; every failure is one DeliveryError line without the routing key."""

    def __init__(self, url: str, *, timeout: float = 10.0,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self._url = url
        self._timeout = timeout
        self._sleep = sleep

    def send(self, routing_key: str, event: dict[str, Any]) -> str:
        """Send one event (without its routing key); returns its dedup_key."""
        body = {**event, "routing_key": routing_key}
        last = ""
        for attempt in range(1, MAX_ATTEMPTS + 1):
            try:
                with httpx.Client(timeout=self._timeout, verify=verified_context()) as client:
                    response = client.post(self._url, json=body)
            except httpx.HTTPError as exc:
                last = one_line(redact(f"{type(exc).__name__}: {exc}", [routing_key]), 200)
            else:
                if response.status_code == 202:
                    log.debug("PagerDuty %s %s accepted", event.get("event_action"),
                              event.get("dedup_key"))
                    return str(response.json().get("dedup_key") or event.get("dedup_key", ""))
                detail = one_line(redact(response.text, [routing_key]), 200)
                if response.status_code == 400:
                    raise ConfigError(f"PagerDuty refused the event (400): {detail}")
                last = f"HTTP {response.status_code} {detail}"
                if response.status_code not in (429, 500, 502, 503, 504):
                    break
            if attempt < MAX_ATTEMPTS:  # safe to repeat: the dedup_key makes it idempotent
                self._sleep(BACKOFF * 2 ** (attempt - 1))
        raise DeliveryError(f"PagerDuty Events API failed: {last}")
