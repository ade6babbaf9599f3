"""A fake Slack Web API and incoming webhook on loopback, reached through slack-sdk's base_url.

Faults come in two kinds: ``fail_next`` answers instead of Slack (the request is not
processed), ``fail_after_store`` lets the fake process the request (a post is stored) and then
misbehaves: drops the connection, answers 5xx, answers late, holds the answer until
``release()``, trickles it, or answers ``ok`` without a ``ts``.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest

from tests.loopback import FakeHandler, Fault, FaultQueue, LoopbackServer, serving

VALID_TOKEN = "xoxb-test-token"
WEBHOOK_PATH = "/webhook/T0001/B0001/XXXXSECRET"


@dataclass
class Call:
    """One request the fake received (``method`` is the API method, ``webhook`` or ``upload``)."""

    method: str
    params: dict[str, Any]
    has_auth: bool
    status: int | str  # a fault's status, or "stored+<status>" for an after-store fault


@dataclass
class Channel:
    id: str
    name: str
    is_member: bool = True
    is_private: bool = False
    is_archived: bool = False


class FakeSlack:
    """State behind the server: channels, recorded calls, posted messages, uploads, faults."""

    def __init__(self) -> None:
        self.token = VALID_TOKEN
        self.scopes = [
            "chat:write", "channels:read", "groups:read", "files:write", "channels:history",
            "groups:history",
        ]
        self.channels = [
            Channel("C0000OPS", "ops"),
            Channel("C000ALERT", "alerts"),
            Channel("C00PUBLIC", "general", is_member=False),
            Channel("G00SECRET", "secret", is_member=False, is_private=True),
            Channel("C00OLDOPS", "old-ops", is_archived=True),
        ]
        self.list_page_size = 2
        self.calls: list[Call] = []
        self.posts: list[dict[str, Any]] = []
        self.webhook_posts: list[dict[str, Any]] = []
        self.uploads: list[dict[str, Any]] = []
        self._pending_uploads: dict[str, dict[str, Any]] = {}
        self.faults = FaultQueue()
        self.after_store = FaultQueue()
        self.released = threading.Event()
        # the clock message timestamps come from (tests with a fixed clock set it to match)
        self.clock: Callable[[], float] = time.time
        self._ts = 0
        self._lock = threading.Lock()
        self.base_url = ""
        self.webhook_url = ""
        self.root = ""

    # -- test API --------------------------------------------------------------------------

    def fail_next(
        self,
        method: str,
        status: int | str,
        n: int = 1,
        headers: dict[str, str] | None = None,
        body: str | None = None,
        delay: float = 0.0,
    ) -> None:
        """Make the next ``n`` calls to ``method`` answer ``status`` without processing them,
        or ``"drop"`` the connection; ``"slow"`` processes them after ``delay`` seconds and
        ``"hold"`` once :meth:`release` is called (a request that arrives late)."""
        self.faults.add(method, status, n, headers, body, delay)

    def fail_after_store(
        self, method: str, status: int | str, n: int = 1, body: str | None = None,
        delay: float = 0.0,
    ) -> None:
        """Process the next ``n`` calls to ``method`` (a post is stored), then misbehave:
        ``"drop"`` the connection, answer ``status`` (5xx), answer after ``delay`` seconds
        (``"slow"``), ``"hold"`` the answer until :meth:`release`, ``"trickle"`` it one
        byte every ``delay`` seconds, or answer ``"no_ts"`` (``ok`` without a ``ts``)."""
        self.after_store.add(method, status, n, None, body, delay)

    def release(self) -> None:
        """Let every held answer go."""
        self.released.set()

    def calls_to(self, method: str) -> list[Call]:
        return [c for c in self.calls if c.method == method]

    # -- behaviour -------------------------------------------------------------------------

    def take_fault(self, method: str) -> Fault | None:
        return self.faults.take(method)

    def find_channel(self, ref: str) -> Channel | None:
        ref = ref.lstrip("#")
        for ch in self.channels:
            if ref in (ch.id, ch.name):
                return ch
        return None

    def api(self, method: str, params: dict[str, Any], auth: str | None) -> dict[str, Any]:
        if auth is None:
            return {"ok": False, "error": "not_authed"}
        if auth != f"Bearer {self.token}":
            return {"ok": False, "error": "invalid_auth"}
        handler = getattr(self, "api_" + method.replace(".", "_"), None)
        if handler is None:
            return {"ok": False, "error": "unknown_method"}
        result: dict[str, Any] = handler(params)
        return result

    def api_auth_test(self, params: dict[str, Any]) -> dict[str, Any]:
        return {
            "ok": True,
            "url": "https://acme.slack.com/",
            "team": "Acme",
            "user": "usage-bot",
            "team_id": "T0001",
            "user_id": "U0BOT",
            "bot_id": "B0BOT",
        }

    def api_chat_postMessage(self, params: dict[str, Any]) -> dict[str, Any]:
        ch = self.find_channel(str(params.get("channel", "")))
        if ch is None:
            return {"ok": False, "error": "channel_not_found"}
        if ch.is_archived:
            return {"ok": False, "error": "is_archived"}
        if ch.is_private and not ch.is_member:
            return {"ok": False, "error": "not_in_channel"}
        if not params.get("text") and not params.get("blocks"):
            return {"ok": False, "error": "no_text"}
        meta = params.get("metadata")
        if meta is not None and not (
            isinstance(meta, dict) and isinstance(meta.get("event_type"), str)
            and isinstance(meta.get("event_payload"), dict)
        ):
            return {"ok": False, "error": "invalid_metadata_format"}
        with self._lock:
            self._ts += 1
            ts = f"{int(self.clock())}.{self._ts:06d}"
            self.posts.append({**params, "ts": ts, "channel_id": ch.id})
        message = {"type": "message", "text": params.get("text", ""), "ts": ts}
        return {"ok": True, "channel": ch.id, "ts": ts, "message": message}

    def _needs_scope(self, *wanted: str) -> dict[str, Any] | None:
        if any(s in self.scopes for s in wanted):
            return None
        return {
            "ok": False,
            "error": "missing_scope",
            "needed": ",".join(wanted),
            "provided": ",".join(self.scopes),
        }

    def _channel_json(self, ch: Channel) -> dict[str, Any]:
        return {
            "id": ch.id,
            "name": ch.name,
            "is_channel": not ch.is_private,
            "is_private": ch.is_private,
            "is_archived": ch.is_archived,
            "is_member": ch.is_member,
        }

    def api_conversations_info(self, params: dict[str, Any]) -> dict[str, Any]:
        missing = self._needs_scope("channels:read", "groups:read")
        if missing:
            return missing
        ch = self.find_channel(str(params.get("channel", "")))
        # the real API only takes IDs here, and hides private channels the bot is not in
        if ch is None or ch.id != params.get("channel") or (ch.is_private and not ch.is_member):
            return {"ok": False, "error": "channel_not_found"}
        return {"ok": True, "channel": self._channel_json(ch)}

    def api_conversations_list(self, params: dict[str, Any]) -> dict[str, Any]:
        missing = self._needs_scope("channels:read")
        if missing:
            return missing
        visible = [c for c in self.channels if not c.is_private or c.is_member]
        start = int(params.get("cursor") or 0)
        size = min(int(params.get("limit") or 100), self.list_page_size)
        page = visible[start : start + size]
        next_cursor = str(start + size) if start + size < len(visible) else ""
        return {
            "ok": True,
            "channels": [self._channel_json(c) for c in page],
            "response_metadata": {"next_cursor": next_cursor},
        }

    def _readable(self, params: dict[str, Any], scope_for: str) -> tuple[Channel | None,
                                                                          dict[str, Any] | None]:
        """The channel a history call reads (by ID only, as the real API), or its error."""
        ch = self.find_channel(str(params.get("channel", "")))
        if ch is None or ch.id != params.get("channel") or (ch.is_private and not ch.is_member):
            return None, {"ok": False, "error": "channel_not_found"}
        missing = self._needs_scope("groups:history" if ch.is_private else "channels:history")
        if missing:
            return None, missing
        if not ch.is_member:
            return None, {"ok": False, "error": "not_in_channel"}
        return ch, None

    def _messages_page(self, posts: list[dict[str, Any]], params: dict[str, Any]
                       ) -> dict[str, Any]:
        with_meta = str(params.get("include_all_metadata", "")).lower() in ("1", "true")
        start = int(params.get("cursor") or 0)
        size = int(params.get("limit") or 100)
        page = posts[start : start + size]
        more = start + size < len(posts)
        messages = []
        for post in page:
            message = {"type": "message", "ts": post["ts"], "text": post.get("text", "")}
            if post.get("thread_ts"):
                message["thread_ts"] = post["thread_ts"]
            if with_meta and post.get("metadata"):
                message["metadata"] = post["metadata"]
            messages.append(message)
        return {
            "ok": True,
            "messages": messages,
            "has_more": more,
            "response_metadata": {"next_cursor": str(start + size) if more else ""},
        }

    def api_conversations_history(self, params: dict[str, Any]) -> dict[str, Any]:
        ch, error = self._readable(params, "history")
        if ch is None:
            return error or {}
        oldest = float(params.get("oldest") or 0)
        with self._lock:
            posts = [p for p in reversed(self.posts) if p["channel_id"] == ch.id
                     and float(p["ts"]) > oldest
                     and (not p.get("thread_ts") or p.get("reply_broadcast"))]
        return self._messages_page(posts, params)  # newest first, as Slack answers

    def api_conversations_replies(self, params: dict[str, Any]) -> dict[str, Any]:
        ch, error = self._readable(params, "history")
        if ch is None:
            return error or {}
        parent = str(params.get("ts", ""))
        oldest = float(params.get("oldest") or 0)
        with self._lock:
            posts = [p for p in self.posts if p["channel_id"] == ch.id
                     and parent in (p["ts"], p.get("thread_ts"))
                     and (p["ts"] == parent or float(p["ts"]) > oldest)]
        if not posts:
            return {"ok": False, "error": "thread_not_found"}
        return self._messages_page(posts, params)  # parent first, then replies, oldest first

    def api_files_getUploadURLExternal(self, params: dict[str, Any]) -> dict[str, Any]:
        missing = self._needs_scope("files:write")
        if missing:
            return missing
        with self._lock:
            file_id = f"F{len(self._pending_uploads) + 1:07d}"
            self._pending_uploads[file_id] = {
                "file_id": file_id,
                "filename": params.get("filename"),
                "length": int(params.get("length") or 0),
                "data": None,
            }
        return {"ok": True, "upload_url": f"{self.root}/upload/{file_id}", "file_id": file_id}

    def upload(self, file_id: str, data: bytes) -> bool:
        with self._lock:
            pending = self._pending_uploads.get(file_id)
            if pending is None:
                return False
            pending["data"] = data
            return True

    def api_files_completeUploadExternal(self, params: dict[str, Any]) -> dict[str, Any]:
        files = json.loads(params.get("files") or "[]")
        done = []
        for item in files:
            pending = self._pending_uploads.get(item.get("id"))
            if pending is None or pending["data"] is None:
                return {"ok": False, "error": "file_not_found"}
            record = {
                **pending,
                "title": item.get("title"),
                "channel": params.get("channel_id"),
                "thread_ts": params.get("thread_ts"),
            }
            self.uploads.append(record)
            done.append({"id": pending["file_id"], "title": item.get("title")})
        return {"ok": True, "files": done}


class _Handler(FakeHandler):
    server: _Server

    def do_POST(self) -> None:  # noqa: N802
        self._handle()

    def do_GET(self) -> None:  # noqa: N802
        self._handle()

    def _handle(self) -> None:
        fake = self.server.fake
        url = urlsplit(self.path)
        raw = self.body()
        if url.path.startswith("/api/"):
            method = url.path[len("/api/") :]
        elif url.path.startswith("/upload/"):
            method = "upload"
        elif url.path.startswith("/webhook/"):
            method = "webhook"
        else:
            self._send(404, "text/plain", b"not found")
            return
        params: dict[str, Any] = dict(parse_qsl(url.query))
        ctype = self.headers.get("Content-Type", "")
        if method == "upload":
            params["bytes"] = len(raw)
        elif ctype.startswith("application/json"):
            params.update(json.loads(raw or b"{}"))
        elif raw:
            params.update(parse_qsl(raw.decode()))
        auth = self.headers.get("Authorization")
        fault = fake.take_fault(method)
        status: int | str = fault.status if fault else 200
        call = Call(method, params, auth is not None, status)
        with fake._lock:
            fake.calls.append(call)
        if fault is not None and fault.delay and fault.status != "hold":
            time.sleep(fault.delay)
        if fault is not None and fault.status == "hold":
            fake.released.wait(fault.delay or 30)  # then processed: a late arrival
        elif fault is not None and fault.status != "slow":
            if fault.status == "drop":
                self.close_connection = True
                return  # the client sees the connection closed with no answer
            assert isinstance(fault.status, int)
            body = fault.body
            if body is None:
                body = (
                    json.dumps({"ok": False, "error": "ratelimited"})
                    if fault.status == 429
                    else "Internal Server Error"
                )
            ctype_out = "application/json" if body.startswith("{") else "text/plain"
            self._send(fault.status, ctype_out, body.encode(), fault.headers)
            return
        if method == "webhook":
            if url.path != WEBHOOK_PATH:
                self._send(404, "text/html", b"no_service")
                return
            if not params.get("text") and not params.get("blocks"):
                self._send(400, "text/html", b"no_text")
                return
            with fake._lock:
                fake.webhook_posts.append(params)
            after = fake.after_store.take(method)
            if after is not None and after.status == "drop":
                self.close_connection = True
                return
            if after is not None and isinstance(after.status, int):
                self._send(after.status, "text/plain", b"Bad Gateway")
                return
            self._send(200, "text/html", b"ok")
            return
        if method == "upload":
            ok = fake.upload(url.path.rsplit("/", 1)[-1], raw)
            self._send(200 if ok else 404, "text/plain", f"OK - {len(raw)}".encode())
            return
        answer = fake.api(method, params, auth)
        headers = {"x-oauth-scopes": ",".join(fake.scopes)}
        after = fake.after_store.take(method)
        if after is not None:
            call.status = f"stored+{after.status}"
            if after.status == "drop":
                self.close_connection = True
                return
            if isinstance(after.status, int):
                text = after.body or ("Bad Gateway" if after.status == 502 else
                                      "Internal Server Error")
                self._send(after.status, "text/plain", text.encode())
                return
            if after.status == "slow":
                time.sleep(after.delay)
            elif after.status == "hold":
                fake.released.wait(after.delay or 30)
            elif after.status == "no_ts":
                answer = {k: v for k, v in answer.items() if k not in ("ts", "message")}
            elif after.status == "trickle":
                self._trickle(json.dumps(answer).encode(), after.delay)
                return
        self._send(200, "application/json", json.dumps(answer).encode(), headers)

    def _trickle(self, body: bytes, every: float) -> None:
        """The whole answer, one byte every ``every`` seconds, until the client gives up."""
        head = (f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode()
        self.close_connection = True
        try:
            for i in range(len(head + body)):
                self.wfile.write((head + body)[i : i + 1])
                self.wfile.flush()
                time.sleep(every)
        except OSError:
            pass

    def _send(
        self, status: int, ctype: str, body: bytes, headers: dict[str, str] | None = None
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", f"{ctype}; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)


class _Server(LoopbackServer):
    fake: FakeSlack


@pytest.fixture
def fake_slack() -> Iterator[FakeSlack]:
    """A running fake Slack; ``.base_url`` for WebClient, ``.webhook_url`` for WebhookClient."""
    fake = FakeSlack()
    with serving(_Server(_Handler, fake)) as server:
        fake.root = server.root
        fake.base_url = f"{fake.root}/api/"
        fake.webhook_url = f"{fake.root}{WEBHOOK_PATH}"
        try:
            yield fake
        finally:
            fake.release()
