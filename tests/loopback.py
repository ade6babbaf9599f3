"""Runs a fake HTTP service on 127.0.0.1 in a thread, for the fakes the tests start."""

from __future__ import annotations

import selectors
import socket
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
        self._stopping = False
        self._wake_read, self._wake_write = socket.socketpair()

    @property
    def root(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def handle_error(self, request: Any, client_address: Any) -> None:
        # a client that timed out and hung up is not the fake's problem
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)

    def serve_until_stopped(self) -> None:
        """Accept connections until `stop`. Unlike `serve_forever`, which wakes every poll
        interval to look for a shutdown (a fake idling through a test burnt ~1% of a core
        so), this sleeps until a connection comes or `stop` writes to its wake-up socket."""
        with selectors.DefaultSelector() as selector:
            selector.register(self.socket, selectors.EVENT_READ)
            selector.register(self._wake_read, selectors.EVENT_READ)
            while not self._stopping:
                for key, _ in selector.select():
                    if key.fileobj is self.socket and not self._stopping:
                        self.handle_request()  # accepts the waiting connection at once

    def stop(self) -> None:
        self._stopping = True
        self._wake_write.send(b"\0")

    def server_close(self) -> None:
        super().server_close()
        self._wake_read.close()
        self._wake_write.close()


@contextmanager
def serving(server: LoopbackServer) -> Iterator[LoopbackServer]:
    """Serve until the block ends, then stop and close the socket."""
    thread = threading.Thread(target=server.serve_until_stopped, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.stop()
        thread.join(timeout=5)
        server.server_close()
