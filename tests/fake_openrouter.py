"""A fake OpenRouter management API on loopback (real sockets), with a sample org and faults."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest

from tests.loopback import Fault, FaultQueue, LoopbackServer, serving

MANAGEMENT_KEY = "sk-or-v1-fake-management-key-7f3a9c1e5b2d4f6a8c0e"
PREFIX = "/api/v1"


@dataclass
class Request:
    """One request the fake received; ``headers`` never include Authorization."""

    method: str
    path: str  # relative to /api/v1, e.g. "/keys"
    query: dict[str, str]
    headers: dict[str, str]
    has_auth: bool


def _error(code: int, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


# model, permaslug, endpoint, provider, $ per request (float text, as the API sends it)
_MODELS = [
    ("openai/gpt-4o", "openai/gpt-4o-2024-08-06", "ep-oai-4o", "OpenAI", 0.0125),
    ("anthropic/claude-sonnet-4", "anthropic/claude-4-sonnet-20250522", "ep-ant-s4", "Anthropic",
     0.021),
    ("anthropic/claude-sonnet-4", "anthropic/claude-4-sonnet-20250522", "ep-bdr-s4",
     "Amazon Bedrock", 0.021),
    ("google/gemini-2.5-flash", "google/gemini-2.5-flash", "ep-goo-flash", "Google", 0.0007),
    ("deepseek/deepseek-r1", "deepseek/deepseek-r1", "ep-ds-r1", "DeepSeek", 0.0033),
    ("meta-llama/llama-3.3-70b-instruct", "meta-llama/llama-3.3-70b-instruct", "ep-tog-llama",
     "Together", 0.0009),
]


def _key_hash(index: int) -> str:
    return hashlib.sha256(f"sample-key-{index}".encode()).hexdigest()


def sample_org(last_day: dt.date = dt.date(2026, 3, 10), days: int = 3) -> dict[str, Any]:
    """A small realistic org: 12 keys (one disabled, one BYOK, limits), six endpoints, `days`
    days of per-key activity in both date formats with null fields, and the org-wide rows that
    merge them per (date, endpoint). Returns ``credits``, ``activity``, ``key_activity``,
    ``keys`` as raw API payloads.
    """
    keys: list[dict[str, Any]] = []
    key_activity: dict[str, list[dict[str, Any]]] = {}
    for index in range(12):
        key_hash = _key_hash(index)
        disabled = index == 4
        byok = index == 7
        rows: list[dict[str, Any]] = []
        total = byok_total = Decimal(0)
        for back in range(days):
            day = last_day - dt.timedelta(days=back)
            for m, (model, slug, endpoint, provider, price) in enumerate(_MODELS):
                if (index + m + back) % 3:
                    continue  # not every key uses every model every day
                requests = 3 + index * 2 + m + back
                cost = Decimal(str(price)) * requests
                row: dict[str, Any] = {
                    # both formats the API uses
                    "date": day.isoformat() if (index + back) % 2 else f"{day} 00:00:00",
                    "model": model,
                    "model_permaslug": slug,
                    "endpoint_id": endpoint,
                    "provider_name": provider,
                    "usage": 0 if byok else float(cost),
                    "byok_usage_inference": float(cost) if byok else 0,
                    "requests": requests,
                    "prompt_tokens": requests * 1200,
                    "completion_tokens": requests * 300,
                    "reasoning_tokens": requests * 150 if "r1" in model else None,
                    "is_byok": byok,  # a field the client does not know
                }
                rows.append(row)
                if byok:
                    byok_total += cost
                else:
                    total += cost
        key_activity[key_hash] = rows
        limit = 50 if index in (1, 2) else None
        keys.append(
            {
                "hash": key_hash,
                "name": f"key-{index:02d}" if index != 3 else "",
                "label": f"sk-or-v1-{key_hash[:3]}...{key_hash[-3:]}",
                "disabled": disabled,
                "limit": limit,
                "limit_remaining": float(limit - total) if limit is not None else None,
                "limit_reset": "monthly" if limit is not None else None,
                "include_byok_in_limit": False,
                "usage": float(total),
                "usage_daily": 0.25 if not disabled else 0,
                "usage_weekly": 1.5,
                "usage_monthly": float(total),
                "byok_usage": float(byok_total),
                "byok_usage_daily": None,
                "byok_usage_weekly": None,
                "byok_usage_monthly": None,
                "created_at": "2025-11-02T09:30:00.000Z",
                "updated_at": None,
                "expires_at": "2026-12-31T23:59:59Z" if index == 5 else None,
            }
        )
    used = sum((Decimal(str(k["usage"])) for k in keys), Decimal(0))
    return {
        "credits": {"total_credits": 250, "total_usage": float(used + Decimal("12.5"))},
        "activity": merge_rows(key_activity),
        "key_activity": key_activity,
        "keys": keys,
    }


def merge_rows(key_activity: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Org-wide rows: per-key rows summed per (day, endpoint), money summed exactly."""
    merged: dict[tuple[str, str], dict[str, Any]] = {}
    for rows in key_activity.values():
        for row in rows:
            slot = (str(row["date"])[:10], row["endpoint_id"])
            if slot not in merged:
                merged[slot] = dict(row)
                continue
            into = merged[slot]
            for name in ("usage", "byok_usage_inference"):
                total = Decimal(str(into[name] or 0)) + Decimal(str(row[name] or 0))
                into[name] = float(total)
            for name in ("requests", "prompt_tokens", "completion_tokens", "reasoning_tokens"):
                if row[name] is not None:
                    into[name] = (into[name] or 0) + row[name]
    return list(merged.values())


class FakeOpenRouter:
    """State behind the server: the org's data, scripted faults, and every request received."""

    def __init__(self, org: dict[str, Any] | None = None) -> None:
        org = org if org is not None else sample_org()
        self.expected_key = MANAGEMENT_KEY
        self.management = True  # False: the key is valid but not a management key (403)
        self.credits: dict[str, Any] = org["credits"]
        self.activity_rows: list[dict[str, Any]] = org["activity"]
        self.key_activity: dict[str, list[dict[str, Any]]] = org["key_activity"]
        self.keys: list[dict[str, Any]] = org["keys"]
        self.page_size = 3
        self.ignore_offset = False  # a broken server that serves page one forever
        self.latency = 0.0
        self.requests: list[Request] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.base_url = ""
        self.stopping = threading.Event()
        self.faults = FaultQueue()
        self._lock = threading.Lock()

    # -- test API --------------------------------------------------------------------------

    def fail_next(
        self,
        path: str,
        status: int | str,
        n: int = 1,
        headers: dict[str, str] | None = None,
        body: str | bytes | dict[str, Any] | list[Any] | None = None,
        delay: float = 0.0,
    ) -> None:
        """Make the next ``n`` requests to ``path`` (e.g. "/credits") answer ``status``."""
        self.faults.add(path, status, n, headers, body, delay)


    def requests_to(self, path: str) -> list[Request]:
        return [r for r in self.requests if r.path == path]

    # -- behaviour -------------------------------------------------------------------------

    def take_fault(self, path: str) -> Fault | None:
        return self.faults.take(path)

    def answer(self, path: str, query: dict[str, str], auth: str | None) -> tuple[int, Any]:
        if auth != f"Bearer {self.expected_key}":
            return 401, _error(401, "No auth credentials found" if auth is None
                               else "User not found.")
        if not self.management:
            return 403, _error(403, "Only management keys can perform this operation")
        if path == "/credits":
            return 200, {"data": self.credits}
        if path == "/activity":
            return self.answer_activity(query)
        if path == "/keys":
            return self.answer_keys(query)
        return 404, _error(404, "Not Found")

    def answer_activity(self, query: dict[str, str]) -> tuple[int, Any]:
        key_hash = query.get("api_key_hash")
        rows = self.key_activity.get(key_hash, []) if key_hash else self.activity_rows
        date = query.get("date")
        if date is not None:
            try:
                dt.date.fromisoformat(date)
            except ValueError:
                return 400, _error(400, f"Invalid date: {date}")
            rows = [r for r in rows if str(r.get("date", ""))[:10] == date]
        return 200, {"data": [_public(r) for r in rows]}

    def answer_keys(self, query: dict[str, str]) -> tuple[int, Any]:
        try:
            offset = int(query.get("offset", "0"))
        except ValueError:
            return 400, _error(400, "offset must be an integer")
        keys = self.keys
        if query.get("include_disabled") != "true":
            keys = [k for k in keys if not k.get("disabled")]
        if self.ignore_offset:
            offset = 0
        return 200, {"data": keys[offset : offset + self.page_size]}


def _public(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if not k.startswith("_")}


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"  # keep-alive, like the real API; every answer has a length
    disable_nagle_algorithm = True  # headers and body go out in separate writes

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass

    def do_GET(self) -> None:  # noqa: N802
        self._handle()

    def _not_allowed(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        self._record()
        self._send(405, _error(405, "Method Not Allowed"), {"Allow": "GET"})

    do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = do_HEAD = _not_allowed  # noqa: N815

    def _record(self) -> Request:
        url = urlsplit(self.path)
        path = url.path[len(PREFIX) :] if url.path.startswith(PREFIX) else url.path
        headers = {k.lower(): v for k, v in self.headers.items() if k.lower() != "authorization"}
        request = Request(
            self.command, path, dict(parse_qsl(url.query)), headers,
            self.headers.get("Authorization") is not None,
        )
        with self.server.fake._lock:
            self.server.fake.requests.append(request)
        return request

    def _handle(self) -> None:
        fake = self.server.fake
        request = self._record()
        with fake._lock:
            fake.in_flight += 1
            fake.max_in_flight = max(fake.max_in_flight, fake.in_flight)
        try:
            if fake.latency:
                fake.stopping.wait(fake.latency)
            fault = fake.take_fault(request.path)
            if fault is not None:
                if fault.delay:
                    fake.stopping.wait(fault.delay)
                if fault.status == "drop":
                    self.close_connection = True
                    return  # the client sees the connection closed with no answer
                if fault.status != "slow":
                    assert isinstance(fault.status, int)
                    self._send(fault.status, fault.body, fault.headers)
                    return
            if not urlsplit(self.path).path.startswith(PREFIX + "/"):
                self._send(404, _error(404, "Not Found"))
                return
            status, body = fake.answer(
                request.path, request.query, self.headers.get("Authorization")
            )
            self._send(status, body)
        finally:
            with fake._lock:
                fake.in_flight -= 1

    def _send(
        self,
        status: int,
        body: str | bytes | dict[str, Any] | list[Any] | None,
        headers: dict[str, str] | None = None,
    ) -> None:
        if body is None:
            body = _error(status, self.responses.get(status, ("Error",))[0])
        if isinstance(body, dict | list):
            raw, ctype = json.dumps(body).encode(), "application/json"
        elif isinstance(body, str):
            raw = body.encode()
            ctype = "text/html" if body.lstrip().startswith("<") else "text/plain"
        else:
            raw, ctype = body, "application/octet-stream"
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(raw)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(raw)


class _Server(LoopbackServer):
    fake: FakeOpenRouter


@contextmanager
def running(fake: FakeOpenRouter) -> Iterator[FakeOpenRouter]:
    """Serve `fake` on loopback (``.base_url`` is set) until the block ends."""
    with serving(_Server(_Handler, fake)) as server:
        fake.base_url = server.root + PREFIX
        try:
            yield fake
        finally:
            fake.stopping.set()  # wake requests the fake is holding back


@pytest.fixture
def fake_openrouter() -> Iterator[FakeOpenRouter]:
    """A running fake OpenRouter serving `sample_org()`; point a client at ``.base_url``."""
    with running(FakeOpenRouter()) as fake:
        yield fake
