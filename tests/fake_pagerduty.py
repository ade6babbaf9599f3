"""A fake PagerDuty Events API v2 on loopback (real sockets): `POST /v2/enqueue` validates an
event as PagerDuty does, answers 202 with its dedup_key, and keeps each incident's state."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.loopback import FakeHandler, FaultQueue, LoopbackServer, serving

ROUTING_KEY = "R0ut1ngKeyF0rTests0000000000abcd"  # 32 characters, as PagerDuty's are
SEVERITIES = ("critical", "error", "warning", "info")


@dataclass
class FakePagerDuty:
    """Accepted events, incidents by dedup_key (`triggered` / `resolved`), scripted faults."""

    events: list[dict[str, Any]] = field(default_factory=list)
    incidents: dict[str, str] = field(default_factory=dict)
    url: str = ""
    faults: FaultQueue = field(default_factory=FaultQueue)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def fail_next(self, status: int, n: int = 1) -> None:
        self.faults.add("enqueue", status, n)

    def problem(self, event: Any) -> str | None:
        """Why PagerDuty would refuse the event (a 400), or None."""
        if not isinstance(event, dict):
            return "Event object is invalid"
        if event.get("routing_key") != ROUTING_KEY:
            return "Invalid routing key"
        action = event.get("event_action")
        if action not in ("trigger", "acknowledge", "resolve"):
            return "'event_action' is invalid"
        if action != "trigger":
            return None if event.get("dedup_key") else "'dedup_key' is required"
        payload = event.get("payload")
        if not isinstance(payload, dict):
            return "'payload' is missing or invalid"
        for name in ("summary", "source", "severity"):
            if not payload.get(name):
                return f"'payload.{name}' is missing"
        if payload["severity"] not in SEVERITIES or len(payload["summary"]) > 1024:
            return "'payload' is invalid"
        return None

    def accept(self, event: dict[str, Any]) -> str:
        key = str(event.get("dedup_key") or f"generated-{len(self.events)}")
        with self._lock:
            self.events.append(event)
            if event["event_action"] == "trigger":
                self.incidents[key] = "triggered"
            elif event["event_action"] == "resolve" and key in self.incidents:
                self.incidents[key] = "resolved"
        return key


class _Handler(FakeHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:  # noqa: N802
        fake = self.server.fake
        raw = self.body()
        fault = fake.faults.take("enqueue")
        if fault is not None and isinstance(fault.status, int):
            self._send(fault.status, {"status": "unavailable", "message": "try again"})
            return
        if self.path != "/v2/enqueue":
            self._send(404, {"status": "not found"})
            return
        try:
            event = json.loads(raw)
        except ValueError:
            self._send(400, {"status": "invalid event", "message": "Event object is invalid"})
            return
        problem = fake.problem(event)
        if problem:
            self._send(400, {"status": "invalid event", "message": problem,
                             "errors": [problem]})
            return
        key = fake.accept(event)
        self._send(202, {"status": "success", "message": "Event processed", "dedup_key": key})

    def _send(self, status: int, body: dict[str, Any]) -> None:
        raw = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)


class _Server(LoopbackServer):
    fake: FakePagerDuty


@pytest.fixture
def fake_pagerduty() -> Iterator[FakePagerDuty]:
    """A running fake Events API; its enqueue URL is ``.url``."""
    fake = FakePagerDuty()
    with serving(_Server(_Handler, fake)) as server:
        fake.url = server.root + "/v2/enqueue"
        yield fake
