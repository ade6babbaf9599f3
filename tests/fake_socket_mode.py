"""A fake Slack app on loopback for the interactive bot: the fake Web API of tests.fake_slack
plus the methods the bot uses (apps.connections.open, chat.update, views.publish,
conversations.members, usergroups.users.list, response URLs), and a Socket Mode WebSocket
server (the `websockets` package) handed out by `apps.connections.open`.

The server sends `hello` on each connection, then the envelopes a test asks for, and records
every acknowledgement with the time it arrived; it can drop a connection (the TCP socket, no
close frame) or close it cleanly, as Slack does when it refreshes connections.
"""

from __future__ import annotations

import itertools
import json
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.server import Server, ServerConnection, serve

from tests.fake_slack import FakeSlack, _Handler, _Server
from tests.loopback import serving

APP_TOKEN = "xapp-1-A0APP-1234-fakeapptokenvalue"
WAIT = 10.0  # seconds a test waits at most for something that takes milliseconds


def wait_for(what: str, check: Callable[[], Any], timeout: float = WAIT) -> Any:
    """Poll `check` until it returns something truthy (real sockets need a moment)."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


@dataclass
class Ack:
    envelope_id: str
    at: float  # time.monotonic() when it arrived
    message: dict[str, Any]


@dataclass
class Sent:
    envelope_id: str
    type: str
    at: float
    payload: dict[str, Any]


@dataclass
class Connection:
    ws: ServerConnection
    opened_at: float
    open: bool = True


class SocketModeServer:
    """The Socket Mode WebSocket endpoint: hello, envelopes, acknowledgements, drops."""

    def __init__(self) -> None:
        self.connections: list[Connection] = []
        self.acks: list[Ack] = []
        self.sent: list[Sent] = []
        self.other: list[Any] = []  # anything else the client sent
        self._lock = threading.Lock()
        self._server: Server = serve(self._handler, "127.0.0.1", 0, compression=None,
                                     ping_interval=None)
        self.port = self._server.socket.getsockname()[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/link/?ticket={uuid.uuid4().hex}"

    def stop(self) -> None:
        for conn in self.connections:
            if conn.open:
                conn.ws.close()
        self._server.shutdown()
        self._thread.join(timeout=5)

    def _handler(self, ws: ServerConnection) -> None:
        conn = Connection(ws, time.monotonic())
        with self._lock:
            self.connections.append(conn)
        try:
            ws.send(json.dumps({"type": "hello", "num_connections": 1,
                                "connection_info": {"app_id": "A0APP"}}))
            for raw in ws:
                message = json.loads(raw)
                with self._lock:
                    if isinstance(message, dict) and "envelope_id" in message:
                        self.acks.append(Ack(message["envelope_id"], time.monotonic(), message))
                    else:
                        self.other.append(message)
        except (ConnectionClosed, OSError):
            pass
        finally:
            conn.open = False

    # --- test API ----------------------------------------------------------------------------

    @property
    def current(self) -> Connection:
        return wait_for("an open Socket Mode connection",
                        lambda: next((c for c in reversed(self.connections) if c.open), None))

    def open_count(self) -> int:
        return sum(c.open for c in self.connections)

    def send(self, kind: str, payload: dict[str, Any], envelope_id: str | None = None,
             retry_attempt: int = 0) -> str:
        """Send one envelope on the newest open connection; returns its id."""
        envelope_id = envelope_id or uuid.uuid4().hex
        envelope = {"envelope_id": envelope_id, "type": kind, "payload": payload,
                    "accepts_response_payload": kind != "events_api",
                    "retry_attempt": retry_attempt, "retry_reason": ""}
        conn = self.current
        with self._lock:
            self.sent.append(Sent(envelope_id, kind, time.monotonic(), payload))
        conn.ws.send(json.dumps(envelope))
        return envelope_id

    def acks_for(self, envelope_id: str) -> list[Ack]:
        with self._lock:
            return [a for a in self.acks if a.envelope_id == envelope_id]

    def ack_delay(self, envelope_id: str) -> float:
        """Seconds between sending the envelope and its (first) acknowledgement."""
        sent = next(s for s in self.sent if s.envelope_id == envelope_id)
        ack = wait_for(f"the ack of {envelope_id}", lambda: self.acks_for(envelope_id))[0]
        return float(ack.at - sent.at)

    def drop(self) -> None:
        """Kill the current connection's TCP socket: no close frame, as a network failure."""
        conn = self.current
        conn.open = False
        conn.ws.socket.shutdown(socket.SHUT_RDWR)
        conn.ws.socket.close()

    def close(self) -> None:
        """Close the current connection cleanly (a close frame)."""
        try:
            self.current.ws.close()
        except ConnectionClosed:  # the client hung up before the closing handshake ended
            pass


@dataclass
class Response:
    """A POST to a response URL: what the bot answered someone."""

    url: str
    body: dict[str, Any]

    @property
    def blocks(self) -> list[dict[str, Any]]:
        blocks = self.body.get("blocks") or []
        return json.loads(blocks) if isinstance(blocks, str) else list(blocks)

    def text(self) -> str:
        """Every text of the answer, as one string to search."""
        return self.body.get("text", "") + "\n" + json.dumps(self.blocks, ensure_ascii=False)


class FakeSlackApp(FakeSlack):
    """FakeSlack plus the app: Socket Mode, members, message edits, views, response URLs."""

    def __init__(self) -> None:
        super().__init__()
        self.app_token = APP_TOKEN
        self.scopes += ["commands", "usergroups:read"]
        self.socket = SocketModeServer()
        self.members: dict[str, list[str]] = {
            "C0000OPS": ["U0ALICE", "U0BOB", "U0CAROL"],
            "C000ALERT": ["U0ALICE", "U0BOB"],
        }
        self.members_page_size = 2
        self.groups: dict[str, list[str]] = {"S0ONCALL": ["U0BOB"]}
        self.updates: list[dict[str, Any]] = []
        self.views: list[dict[str, Any]] = []
        self.responses: list[Response] = []
        self._ids = itertools.count(1)

    def api(self, method: str, params: dict[str, Any], auth: str | None) -> dict[str, Any]:
        if method.startswith("response/"):  # a response_url: no token, like Slack's
            with self._lock:
                self.responses.append(Response(f"{self.base_url}{method}", params))
            return {"ok": True}
        if method == "apps.connections.open":
            if auth != f"Bearer {self.app_token}":
                return {"ok": False, "error": "invalid_auth" if auth else "not_authed"}
            return {"ok": True, "url": self.socket.url()}
        return super().api(method, params, auth)

    def api_chat_update(self, params: dict[str, Any]) -> dict[str, Any]:
        channel, ts = str(params.get("channel")), str(params.get("ts"))
        with self._lock:
            post = next((p for p in self.posts if p["channel_id"] == channel
                         and p["ts"] == ts), None)
            if post is None:
                return {"ok": False, "error": "message_not_found"}
            self.updates.append(dict(params))
            post["blocks"] = params.get("blocks")
            post["text"] = params.get("text", post.get("text"))
        return {"ok": True, "channel": channel, "ts": ts}

    def api_views_publish(self, params: dict[str, Any]) -> dict[str, Any]:
        view = params.get("view")
        view = json.loads(view) if isinstance(view, str) else view
        if not isinstance(view, dict) or view.get("type") != "home":
            return {"ok": False, "error": "invalid_arguments"}
        with self._lock:
            self.views.append({"user_id": params.get("user_id"), "view": view})
        return {"ok": True, "view": {"id": f"V{next(self._ids):07d}"}}

    def api_conversations_members(self, params: dict[str, Any]) -> dict[str, Any]:
        missing = self._needs_scope("channels:read", "groups:read")
        if missing:
            return missing
        members = self.members.get(str(params.get("channel")))
        if members is None:
            return {"ok": False, "error": "channel_not_found"}
        start = int(params.get("cursor") or 0)
        page = members[start : start + self.members_page_size]
        more = start + self.members_page_size < len(members)
        return {"ok": True, "members": page,
                "response_metadata": {"next_cursor": str(start + len(page)) if more else ""}}

    def api_usergroups_users_list(self, params: dict[str, Any]) -> dict[str, Any]:
        missing = self._needs_scope("usergroups:read")
        if missing:
            return missing
        users = self.groups.get(str(params.get("usergroup")))
        if users is None:
            return {"ok": False, "error": "no_such_subteam"}
        return {"ok": True, "users": users}

    # --- what people do in Slack ---------------------------------------------------------------

    def new_response_url(self) -> str:
        return f"{self.base_url}response/{next(self._ids)}"

    def slash(self, text: str, user: str = "U0ALICE", channel: str = "C0000OPS",
              command: str = "/openrouter", envelope_id: str | None = None) -> tuple[str, str]:
        """Type `command text`; returns (envelope id, the response URL of the answer)."""
        url = self.new_response_url()
        payload = {"token": "legacy-verification", "team_id": "T0001", "team_domain": "acme",
                   "channel_id": channel, "channel_name": "ops", "user_id": user,
                   "user_name": user.lower(), "command": command, "text": text,
                   "api_app_id": "A0APP", "response_url": url, "trigger_id": "1.2.3"}
        return self.socket.send("slash_commands", payload, envelope_id), url

    def press(self, action_id: str, post: dict[str, Any], user: str = "U0ALICE",
              *, ephemeral: bool = False) -> tuple[str, str]:
        """Press an alert button on a posted message; returns (envelope id, response URL)."""
        blocks = post["blocks"]
        blocks = json.loads(blocks) if isinstance(blocks, str) else blocks
        action = next(e for b in blocks if b.get("type") == "actions"
                      for e in b["elements"] if e.get("action_id") == action_id)
        url = self.new_response_url()
        payload = {
            "type": "block_actions", "user": {"id": user, "username": user.lower()},
            "api_app_id": "A0APP", "team": {"id": "T0001"},
            "container": {"type": "message", "message_ts": post["ts"],
                          "channel_id": post["channel_id"], "is_ephemeral": ephemeral},
            "channel": {"id": post["channel_id"]},
            "message": {"type": "message", "ts": post["ts"], "text": post.get("text", ""),
                        "blocks": blocks},
            "response_url": url, "trigger_id": "1.2.3",
            "actions": [{"action_id": action_id, "block_id": "alert_actions",
                         "type": "button", "value": action["value"],
                         "action_ts": "1700000000.1"}],
        }
        return self.socket.send("interactive", payload), url

    def press_in_home(self, action_id: str, view: dict[str, Any], user: str = "U0ALICE",
                      nth: int = 0) -> str:
        """Press the `nth` button `action_id` in a published App Home view."""
        elements = [e for b in view["blocks"] if b.get("type") == "actions"
                    for e in b["elements"] if e.get("action_id") == action_id]
        payload = {
            "type": "block_actions", "user": {"id": user}, "api_app_id": "A0APP",
            "container": {"type": "view", "view_id": "V0000001"},
            "view": {"id": "V0000001", "type": "home"},
            "actions": [{"action_id": action_id, "type": "button",
                         "value": elements[nth]["value"]}],
        }
        return self.socket.send("interactive", payload)

    def open_home(self, user: str = "U0ALICE") -> str:
        payload = {"type": "event_callback", "team_id": "T0001", "api_app_id": "A0APP",
                   "event_id": uuid.uuid4().hex,
                   "event": {"type": "app_home_opened", "user": user, "channel": "D0APPHOME",
                             "tab": "home"}}
        return self.socket.send("events_api", payload)

    def response(self, url: str) -> Response:
        """The bot's answer posted to `url` (waits for it)."""
        return wait_for(f"an answer at {url}",
                        lambda: next((r for r in self.responses if r.url == url), None))

    def responses_to(self, url: str) -> list[Response]:
        with self._lock:
            return [r for r in self.responses if r.url == url]


@dataclass
class Clock:
    """The injected clock of a test: `now()` for the App, `advance()` to move it."""

    at: Any

    def now(self) -> Any:
        return self.at

    def advance(self, **delta: float) -> None:
        import datetime as dt

        self.at = self.at + dt.timedelta(**delta)


@pytest.fixture
def slack_app() -> Iterator[FakeSlackApp]:
    """A running fake Slack app: Web API at ``.base_url``, Socket Mode at ``.socket``."""
    fake = FakeSlackApp()
    try:
        with serving(_Server(_Handler, fake)) as server:
            fake.root = server.root
            fake.base_url = f"{fake.root}/api/"
            fake.webhook_url = f"{fake.root}/webhook/"
            yield fake
    finally:
        fake.socket.stop()
