"""Runs a fake HTTP service on 127.0.0.1 in a thread, for the fakes the tests start."""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Fault:
    """A scripted answer: an HTTP status, "drop" (close the connection with no answer) or
    "slow" (answer normally after ``delay`` seconds); any fault may also carry a delay."""

    status: int | str
    remaining: int
    headers: dict[str, str] = field(default_factory=dict)
    body: Any = None
    delay: float = 0.0


class FaultQueue:
    """Scripted faults per path or method, consumed in order, safe across server threads."""

    def __init__(self) -> None:
        self._faults: dict[str, list[Fault]] = {}
        self._lock = threading.Lock()

    def add(self, key: str, status: int | str, n: int = 1,
            headers: dict[str, str] | None = None, body: Any = None, delay: float = 0.0) -> None:
        with self._lock:
            self._faults.setdefault(key, []).append(
                Fault(status, n, dict(headers or {}), body, delay))

    def take(self, key: str) -> Fault | None:
        with self._lock:
            queue = self._faults.get(key) or []
            while queue and queue[0].remaining <= 0:
                queue.pop(0)
            if not queue:
                return None
            queue[0].remaining -= 1
            return queue[0]

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()


class FakeHandler(BaseHTTPRequestHandler):
    """The request handler the fakes build on: no access log, and the request body read."""

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass

    def body(self) -> bytes:
        """The request's body (as long as its Content-Length says; empty without one)."""
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""


class LoopbackServer(ThreadingHTTPServer):
    """A threading HTTP server on a free loopback port, carrying the fake it serves."""

    daemon_threads = True

    def __init__(self, handler: type[BaseHTTPRequestHandler], fake: Any) -> None:
        super().__init__(("127.0.0.1", 0), handler)
        self.fake = fake

    @property
    def root(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def handle_error(self, request: Any, client_address: Any) -> None:
        # a client that timed out and hung up is not the fake's problem
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


@contextmanager
def serving(server: LoopbackServer, poll: float = 0.01) -> Iterator[LoopbackServer]:
    """Serve until the block ends, then shut down and close the socket."""
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": poll})
    thread.daemon = True
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
