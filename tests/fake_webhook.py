"""A webhook receiver on loopback (real sockets) that verifies each request's HMAC-SHA256
signature over the exact body, as a receiver of our alerts should, and keeps what it took."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.loopback import FakeHandler, FaultQueue, LoopbackServer, serving

SECRET = "whsec-test-0f9a8b7c6d5e4f3a2b1c"


@dataclass
class FakeWebhook:
    """Requests with a valid signature (`received`), ones refused (`refused`), faults."""

    secret: str = SECRET
    received: list[dict[str, Any]] = field(default_factory=list)
    deliveries: list[str] = field(default_factory=list)  # the delivery header of each
    refused: list[str] = field(default_factory=list)
    bodies: list[dict[str, Any]] = field(default_factory=list)  # every body, even refused
    plain: list[dict[str, Any]] = field(default_factory=list)  # posts to /plain (unsigned)
    url: str = ""
    root: str = ""
    faults: FaultQueue = field(default_factory=FaultQueue)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def verify(self, body: bytes, signature: str | None) -> bool:
        expected = "sha256=" + hmac.new(self.secret.encode(), body, hashlib.sha256).hexdigest()
        return signature is not None and hmac.compare_digest(expected, signature)


class _Handler(FakeHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:  # noqa: N802
        fake = self.server.fake
        raw = self.body()
        fault = fake.faults.take("post")
        if fault is not None and isinstance(fault.status, int):
            self._send(fault.status)
            return
        with fake._lock:
            if self.path.startswith("/plain"):  # a receiver that does not sign (Apprise)
                fake.plain.append(json.loads(raw))
                self._send(200)
                return
            fake.bodies.append(json.loads(raw))
            if not fake.verify(raw, self.headers.get("X-OpenRouter-Usage-Signature")):
                fake.refused.append("bad signature")
                self._send(401)
                return
            fake.received.append(json.loads(raw))
            fake.deliveries.append(self.headers.get("X-OpenRouter-Usage-Delivery", ""))
        self._send(204)

    def _send(self, status: int) -> None:
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()


class _Server(LoopbackServer):
    fake: FakeWebhook


@pytest.fixture
def fake_webhook() -> Iterator[FakeWebhook]:
    """A running receiver; post to ``.url``, sign with ``.secret``."""
    fake = FakeWebhook()
    with serving(_Server(_Handler, fake)) as server:
        fake.url = server.root + "/hooks/openrouter"
        fake.root = server.root
        yield fake
