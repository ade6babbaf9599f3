"""Posts alert JSON (`firing` / `resolved`) to a webhook, signed with HMAC-SHA256.

Headers: ``X-OpenRouter-Usage-Signature: sha256=<hex>`` (HMAC-SHA256 of the exact body with
the webhook's secret), ``X-OpenRouter-Usage-Delivery`` (the same for every attempt of one
delivery, so a receiver can drop a repeat) and ``X-OpenRouter-Usage-Event``. A webhook cannot
be asked whether an earlier attempt arrived, so delivery is at-least-once: a send whose answer
was lost is sent again by the outbox.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from typing import Any

import httpx

from bot.config import HookConfig
from bot.deadline import verified_context
from bot.errors import DeliveryError, OutcomeUnknown
from bot.text import one_line, redact

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-OpenRouter-Usage-Signature"
DELIVERY_HEADER = "X-OpenRouter-Usage-Delivery"
EVENT_HEADER = "X-OpenRouter-Usage-Event"


def sign(secret: str, body: bytes) -> str:
    """The signature header's value for `body`."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def body_bytes(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, ensure_ascii=False, sort_keys=True, separators=(",", ":")).encode()


class WebhookSender:
    """Posts one JSON document to one configured webhook."""

    def __init__(self, name: str, hook: HookConfig) -> None:
        self._name = name
        self._hook = hook

    def send(self, doc: dict[str, Any], delivery: str) -> str:
        """POST `doc`; returns the delivery id. A 2xx is success; a 4xx a DeliveryError;
        no answer or a 5xx an OutcomeUnknown (it may have been taken)."""
        raw = body_bytes(doc)
        headers = {"Content-Type": "application/json", DELIVERY_HEADER: delivery,
                   EVENT_HEADER: str(doc.get("status", ""))}
        if self._hook.secret:
            headers[SIGNATURE_HEADER] = sign(self._hook.secret, raw)
        where = f"webhook {self._name}"
        try:
            with httpx.Client(timeout=self._hook.timeout, verify=verified_context()) as client:
                response = client.post(self._hook.url, content=raw, headers=headers)
        except httpx.ConnectError as exc:
            raise DeliveryError(f"{where} failed: {self._reason(exc)}") from exc
        except httpx.HTTPError as exc:
            raise OutcomeUnknown(f"{where}: no answer ({self._reason(exc)})") from exc
        if 200 <= response.status_code < 300:
            log.debug("%s accepted delivery %s", where, delivery)
            return delivery
        detail = f"HTTP {response.status_code} {self._redact(response.text)}".strip()
        if response.status_code >= 500:
            raise OutcomeUnknown(f"{where} failed: {detail}")
        raise DeliveryError(f"{where} failed: {detail}")

    def _reason(self, exc: Exception) -> str:
        return self._redact(f"{type(exc).__name__}: {exc}")

    def _redact(self, text: str) -> str:
        return one_line(redact(text, [self._hook.url, self._hook.secret]), 200)
