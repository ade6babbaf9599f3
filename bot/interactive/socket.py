"""The Socket Mode connection: every envelope is acknowledged first, then handled on a worker.

Built on slack-sdk's Socket Mode client over `websocket-client` (the SDK's threaded flavour).
That flavour notices a dropped connection at once and reconnects in about half a second; the
SDK's `builtin` flavour only noticed a dropped TCP connection after its ping checks failed five
times (30 s at the default interval, spinning a CPU core meanwhile).

The SDK's own watchdog for that flavour reconnects whenever the session has no socket, which
is also true for the half second between creating a connection and opening it: it then opened
a second connection and left the first one's socket unclosed. This module watches instead and
reconnects only when the connection stays lost across two checks (e.g. when a reconnection
failed because Slack could not be reached); a dropped or closed connection is reconnected at
once by the client itself.

Acknowledging is the listener's only job on the SDK's threads, so a slow answer never delays
the acknowledgement of the next envelope (Slack wants it within 3 seconds). An envelope Slack
delivers again (same id) is acknowledged again but handled once.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from bot.errors import DeliveryError

if TYPE_CHECKING:
    from slack_sdk import WebClient
    from slack_sdk.socket_mode.request import SocketModeRequest
    from slack_sdk.socket_mode.websocket_client import SocketModeClient

log = logging.getLogger(__name__)
REMEMBERED = 1000  # envelope ids kept to recognise a redelivery

# The SDK and websocket-client log every normal reconnection as an error; this module logs
# connection events itself, so their loggers only pass on what is worse.
_SDK_LOG = logging.getLogger(__name__ + ".sdk")
_SDK_LOG.setLevel(logging.CRITICAL)


@dataclass(frozen=True)
class Envelope:
    """One Socket Mode envelope: `type` is slash_commands, interactive or events_api."""

    id: str
    type: str
    payload: dict[str, Any] = field(default_factory=dict)
    retry_attempt: int = 0


class SocketListener:
    """Holds the Socket Mode connection and a small pool that runs `handle` per envelope."""

    def __init__(
        self,
        app_token: str,
        web: WebClient,
        handle: Callable[[Envelope], None],
        *,
        workers: int = 4,
        ping_interval: float = 10.0,
    ) -> None:
        self._app_token = app_token
        self._web = web
        self._handle = handle
        self._workers = workers
        self._ping_interval = ping_interval
        self._client: SocketModeClient | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._watcher: threading.Thread | None = None
        self.connections = 0  # WebSocket connections opened so far (1 + reconnections)

    @property
    def started(self) -> bool:
        return self._client is not None

    def start(self) -> None:
        """Open the connection (asks Slack for a URL with the app token); raises a one-line
        DeliveryError when Slack refuses or cannot be reached. Reconnects by itself after."""
        if self._client is not None:
            return
        from slack_sdk.errors import SlackApiError, SlackClientError
        from slack_sdk.socket_mode.interval_runner import IntervalRunner
        from slack_sdk.socket_mode.websocket_client import SocketModeClient

        self._stopping.clear()
        self._pool = ThreadPoolExecutor(max_workers=self._workers,
                                        thread_name_prefix="slack-interactive")
        client = SocketModeClient(
            app_token=self._app_token,
            web_client=self._web,
            logger=_SDK_LOG,
            ping_interval=self._ping_interval,
            concurrency=2,  # they only acknowledge; the work runs on our pool
            on_open_listeners=[self._close_promptly, lambda _ws: self._opened()],
            on_close_listeners=[lambda _ws: self._closed()],
            on_error_listeners=[self._on_error],
        )
        # (after the client: it resets websocket-client's logger level)
        logging.getLogger("websocket").setLevel(logging.CRITICAL)
        client.socket_mode_request_listeners.append(self._on_request)
        client.current_app_monitor_started = True  # our watch replaces the SDK's watchdog
        # The SDK's session runner looks for a new connection every 0.5 s, so a connection
        # would sit idle for up to half a second after it opened: look every 20 ms instead.
        client.current_session_runner.shutdown()
        client.current_session_runner = IntervalRunner(client._run_current_session, 0.02).start()
        try:
            client.connect()
        except (SlackApiError, SlackClientError, OSError) as exc:
            client.close()
            self._pool.shutdown(wait=False)
            self._pool = None
            reason = exc.response.get("error") if isinstance(exc, SlackApiError) else None
            raise DeliveryError(
                "Slack Socket Mode: cannot connect with slack.app_token: "
                + (str(reason) if reason else type(exc).__name__)
            ) from exc
        self._client = client
        self._watcher = threading.Thread(target=self._watch, args=(client,), daemon=True,
                                         name="slack-socket-watch")
        self._watcher.start()

    def stop(self) -> None:
        """Close the connection and wait for the answers being worked on."""
        self._stopping.set()
        client, pool, watcher = self._client, self._pool, self._watcher
        self._client = self._pool = self._watcher = None
        if watcher is not None:
            watcher.join()
        if client is not None:
            self._hang_up(client)
            # the SDK's message thread waits up to a second for the next message: wake it
            client.closed = True
            client.message_queue.put(None)
            client.close()
        if pool is not None:
            pool.shutdown(wait=True)
        log.info("Slack Socket Mode: disconnected")

    @staticmethod
    def _hang_up(client: SocketModeClient, wait: float = 2.0) -> None:
        """Close the WebSocket with a close frame and let the receiving thread see the answer.

        Closing through the SDK alone closes the socket under websocket-client's receiving
        thread, which then sits in select() for its 10-second timeout before it notices; after
        `wait` without an answer the socket is shut down, which wakes it at once."""
        client.auto_reconnect_enabled = False
        session = client.current_session
        sock = getattr(session, "sock", None)
        if session is None or sock is None:
            return
        try:
            sock.send_close()
        except Exception:  # noqa: BLE001 - already gone: nothing to wait for
            return
        deadline = time.monotonic() + wait
        while session.sock is not None and time.monotonic() < deadline:
            time.sleep(0.01)
        if session.sock is not None:
            sock.abort()

    def _watch(self, client: SocketModeClient) -> None:
        """Reconnect when the connection is lost at two checks in a row."""
        lost = False
        while not self._stopping.wait(self._ping_interval):
            session = client.current_session
            if session is not None and session.sock is not None:
                lost = False
                continue
            if not lost:
                lost = True
                continue
            log.info("Slack Socket Mode: not connected, reconnecting")
            try:
                client.connect_to_new_endpoint()
            except Exception as exc:  # noqa: BLE001 - keep watching; try again next time
                log.warning("Slack Socket Mode: reconnecting failed (%s), trying again in %gs",
                            type(exc).__name__, self._ping_interval)
            lost = False

    # --- the SDK's threads ---------------------------------------------------------------

    def _opened(self) -> None:
        self.connections += 1
        log.info("Slack Socket Mode: connected%s",
                 "" if self.connections == 1 else f" again (connection {self.connections})")

    @staticmethod
    def _on_error(ws: Any, _error: Exception) -> None:
        """After the server closed the connection, close its socket: websocket-client marks
        the connection closed when it answers the close frame, and then skips closing the
        socket when the app tears the connection down (the socket waited for the GC)."""
        sock = getattr(ws, "sock", None)
        if sock is not None and not getattr(sock, "connected", True):
            sock.shutdown()

    def _closed(self) -> None:
        if not self._stopping.is_set():
            log.info("Slack Socket Mode: connection closed, reconnecting")

    @staticmethod
    def _close_promptly(ws: Any) -> None:
        """Make the SDK's close of this connection end its receive loop first.

        On Slack's `disconnect` (a refresh, ~10 s before Slack closes the connection), the
        SDK opens a new connection and closes the old one from another thread; the new one
        starts only once the old one's receive loop has ended. Closing the socket under that
        loop leaves it in select() on a closed descriptor for up to 10 s (no connection all
        that time). So a close first stops the loop, shuts the socket's reading side (which
        wakes select()) and waits briefly for the loop to let go of the socket; then it
        closes as the SDK does. (Called on open, from the thread that runs the loop: a close
        from that thread itself has no loop to wait for.)"""
        close = ws.close
        loop = threading.current_thread()

        def close_now(**kwargs: Any) -> None:
            ws.keep_running = False
            sock = ws.sock
            raw = getattr(sock, "sock", None)
            if raw is not None and threading.current_thread() is not loop:
                with contextlib.suppress(OSError):
                    raw.shutdown(socket.SHUT_RD)
                deadline = time.monotonic() + 2.0
                while ws.sock is sock and time.monotonic() < deadline:
                    time.sleep(0.005)
            close(**kwargs)

        ws.close = close_now

    def _on_request(self, client: Any, req: SocketModeRequest) -> None:
        """Acknowledge at once; hand a first delivery to the pool."""
        from slack_sdk.socket_mode.response import SocketModeResponse

        try:
            client.send_socket_mode_response(SocketModeResponse(envelope_id=req.envelope_id))
        except Exception as exc:  # noqa: BLE001 - the SDK's thread must go on
            log.warning("Slack Socket Mode: could not acknowledge %s envelope: %s",
                        req.type, type(exc).__name__)
        with self._lock:
            if req.envelope_id in self._seen:
                log.info("Slack Socket Mode: %s envelope delivered again; handled already",
                         req.type)
                return
            self._seen[req.envelope_id] = None
            while len(self._seen) > REMEMBERED:
                self._seen.popitem(last=False)
        envelope = Envelope(req.envelope_id, req.type, dict(req.payload or {}),
                            int(req.retry_attempt or 0))
        pool = self._pool
        if pool is None:
            return
        try:
            pool.submit(self._work, envelope)
        except RuntimeError:  # stopping
            return

    def _work(self, envelope: Envelope) -> None:
        try:
            self._handle(envelope)
        except Exception as exc:  # noqa: BLE001 - one bad envelope must not stop the rest
            log.error("Slack %s envelope failed: %s", envelope.type,
                      str(exc) or type(exc).__name__)
            log.debug("envelope traceback", exc_info=True)
