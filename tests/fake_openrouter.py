"""A fake OpenRouter management API on loopback (real sockets), with a sample org and faults.

It serves `/key`, `/credits`, `/activity` (optionally within a 30-day window, split per
workspace), `/workspaces`, `/keys` (per workspace, paged) and the analytics API
(`/analytics/meta`, `POST /analytics/query`) with the limits the real one documents: at most 2
dimensions, `provider` only in windows of 31 days, truncation past a row cap, both time-bucket
prefixes, counts as strings, null cost components, keys labelled by name while filters take
hashes, 64 queries a minute (on an injected clock) and scripted 408s. Day buckets come from
the activity rows; minute (windows up to 3 h) and hour buckets from `minute_spend`.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import itertools
import json
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest

from tests.loopback import FakeHandler, Fault, FaultQueue, LoopbackServer, serving

MANAGEMENT_KEY = "sk-or-v1-fake-management-key-7f3a9c1e5b2d4f6a8c0e"
PREFIX = "/api/v1"
DEFAULT_WORKSPACE = "0df9e665-d932-5740-b2c7-b52af166bc11"
ANALYTICS_DIMENSIONS = ("model", "api_key_id", "workspace", "user", "app", "variant", "provider")
DAY = dt.timedelta(days=1)


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
                "workspace_id": DEFAULT_WORKSPACE,
            }
        )
    used = sum((Decimal(str(k["usage"])) for k in keys), Decimal(0))
    return {
        "credits": {"total_credits": 250, "total_usage": float(used + Decimal("12.5"))},
        "activity": merge_rows(key_activity),
        "key_activity": key_activity,
        "keys": keys,
        "workspaces": [{"id": DEFAULT_WORKSPACE, "name": "Default", "slug": "default"}],
    }


def workspace_org(last_day: dt.date, days: int = 3) -> dict[str, Any]:
    """`sample_org` with its keys spread over three workspaces, two keys named "staging" (one
    in Production, one in Contractors) and a key in each with the same usage pattern."""
    org = sample_org(last_day, days)
    org["workspaces"] = [
        {"id": DEFAULT_WORKSPACE, "name": "Default", "slug": "default"},
        {"id": "6a1f0c2e-0000-4000-8000-00000000a001", "name": "Production", "slug": "prod"},
        {"id": "6a1f0c2e-0000-4000-8000-00000000a002", "name": "Contractors", "slug": "contr"},
    ]
    for index, key in enumerate(org["keys"]):
        key["workspace_id"] = org["workspaces"][index % 3]["id"]
    org["keys"][1]["name"] = "staging"  # Production
    org["keys"][2]["name"] = "staging"  # Contractors
    return org


def year_org(today: dt.date, days: int = 365) -> dict[str, Any]:
    """A small org with `days` days of history before `today`: six keys in three workspaces
    (two named "staging"; one BYOK), a deleted key whose spend stays in the analytics API,
    and spend without any key; three models, one of them served by two providers.

    Built once per (today, days); each call gets its own copy to change as it likes."""
    org = _year_org(today, days)
    return {
        "credits": dict(org["credits"]),
        "activity": [dict(r) for r in org["activity"]],
        "key_activity": {h: [dict(r) for r in rows] for h, rows in org["key_activity"].items()},
        "keys": [dict(k) for k in org["keys"]],
        "workspaces": [dict(w) for w in org["workspaces"]],
        "deleted_keys": dict(org["deleted_keys"]),
        "keyless": [dict(r) for r in org["keyless"]],
    }


@functools.lru_cache(maxsize=4)
def _year_org(today: dt.date, days: int) -> dict[str, Any]:
    workspaces = [
        {"id": DEFAULT_WORKSPACE, "name": "Default", "slug": "default"},
        {"id": "6a1f0c2e-0000-4000-8000-00000000b001", "name": "Production", "slug": "prod"},
        {"id": "6a1f0c2e-0000-4000-8000-00000000b002", "name": "Contractors", "slug": "contr"},
    ]
    names = ["api", "staging", "staging", "batch", "", "byok"]
    keys: list[dict[str, Any]] = []
    key_activity: dict[str, list[dict[str, Any]]] = {}
    models = _MODELS[:3]  # gpt-4o, sonnet via Anthropic and via Bedrock
    for index, name in enumerate([*names, "old-key"]):
        key_hash = hashlib.sha256(f"year-key-{index}".encode()).hexdigest()
        byok = name == "byok"
        rows = []
        for back in range(1, days + 1):
            day = today - DAY * back
            for m, (model, slug, endpoint, provider, price) in enumerate(models):
                if (index + m + back) % 4 == 0 or (name == "old-key" and back < 60):
                    continue  # not every model every day; the old key stopped 60 days ago
                requests = 1 + (index * 5 + back * 7 + m * 3) % 23
                cost = Decimal(str(price)) * requests
                rows.append({
                    "date": f"{day} 00:00:00" if back % 2 else day.isoformat(),
                    "model": model, "model_permaslug": slug, "endpoint_id": endpoint,
                    "provider_name": provider,
                    "usage": 0 if byok else float(cost),
                    "byok_usage_inference": float(cost) if byok else 0,
                    "requests": requests, "prompt_tokens": requests * 900,
                    "completion_tokens": requests * 250, "reasoning_tokens": None,
                })
        key_activity[key_hash] = rows
        if name == "old-key":
            continue  # deleted: no longer listed, its spend is still in the analytics API
        keys.append({
            "hash": key_hash, "name": name, "label": f"sk-or-v1-{key_hash[:3]}...{key_hash[-3:]}",
            "disabled": index == 3, "limit": None, "limit_remaining": None,
            "limit_reset": None, "usage": 1.0, "usage_daily": 0.1, "usage_weekly": 0.5,
            "usage_monthly": 1.0, "byok_usage": 0, "workspace_id": workspaces[index % 3]["id"],
        })
    deleted = {hashlib.sha256(f"year-key-{len(names)}".encode()).hexdigest(): "old-key"}
    keyless = [dict(r, requests=1, usage=0.5, byok_usage_inference=0, prompt_tokens=10,
                    completion_tokens=5)
               for r in key_activity[keys[0]["hash"]] if r["model"] == "openai/gpt-4o"][::9]
    everything = dict(key_activity)
    everything[""] = keyless
    return {
        "credits": {"total_credits": 5000, "total_usage": 1234.5},
        "activity": merge_rows(everything),
        "key_activity": key_activity,
        "keys": keys,
        "workspaces": workspaces,
        "deleted_keys": deleted,
        "keyless": keyless,
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
        # None: a server without /workspaces (404), where /keys lists every key
        self.workspaces: list[dict[str, Any]] | None = org.get("workspaces")
        self.workspace_page_cap = 100
        self.deleted_keys: dict[str, str] = dict(org.get("deleted_keys", {}))  # hash -> name
        self.keyless_rows: list[dict[str, Any]] = list(org.get("keyless", []))
        self.key_endpoint = True  # False: a server without /key (404)
        self.key_fields: dict[str, Any] | None = None  # replaces /key's is_* fields when set
        self.today: dt.date | None = None  # set: /activity keeps only the 30 days before it
        # the analytics API
        self.analytics_status: int | None = None  # 403 or 404: not available
        self.analytics_max_rows = 100_000  # past this many rows an answer is truncated
        self.analytics_timeout_days: int | None = None  # longer windows answer 408
        self.analytics_per_minute = 64
        self.clock: Callable[[], float] | None = None  # set: enforce 64/min on this clock
        self.string_counts = True
        self.provider_days_back: int | None = None  # set: `provider` only this many days back
        # spend as it happens, for minute and hour buckets: (instant, key hash or None, model
        # permaslug, usage, byok usage)
        self.minute_spend: list[tuple[dt.datetime, str | None, str, Decimal, Decimal]] = []
        self.analytics_queries: list[dict[str, Any]] = []
        self.rate_limited = 0  # queries answered 429 for going past 64 a minute
        self._analytics_sent: list[float] = []
        self._facts: dict[dt.date, list[tuple[Any, ...]]] | None = None
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

    def answer(
        self, path: str, query: dict[str, str], auth: str | None, body: Any = None
    ) -> tuple[int, Any]:
        if auth != f"Bearer {self.expected_key}":
            return 401, _error(401, "No auth credentials found" if auth is None
                               else "User not found.")
        if path == "/key":
            if not self.key_endpoint:
                return 404, _error(404, "Not Found")
            info: dict[str, Any] = {
                "label": "sk-or-v1-fak...c0e", "limit": None, "usage": 0, "usage_daily": 0,
                "is_free_tier": False, "rate_limit": {"requests": -1},
            }
            info.update(self.key_fields if self.key_fields is not None else {
                "is_management_key": self.management, "is_provisioning_key": self.management})
            return 200, {"data": info}
        if not self.management:
            if path == "/credits":  # what an inference key gets in the wild: a 200 of zeros
                return 200, {"data": {"total_credits": 0, "total_usage": 0}}
            return 403, _error(403, "Only management keys can perform this operation")
        if path == "/credits":
            return 200, {"data": self.credits}
        if path == "/activity":
            return self.answer_activity(query)
        if path == "/keys":
            return self.answer_keys(query)
        if path == "/workspaces":
            return self.answer_workspaces(query)
        if path == "/analytics/meta":
            if self.analytics_status:
                return self.analytics_status, _error(self.analytics_status, "Not available")
            return 200, {"data": {"metrics": [{"name": "total_usage"}],
                                  "dimensions": [{"name": d} for d in ANALYTICS_DIMENSIONS],
                                  "operators": [{"name": "in"}],
                                  "granularities": [{"name": "day"}]}}
        if path == "/analytics/query":
            return self.answer_analytics(body)
        return 404, _error(404, "Not Found")

    # -- /activity, /keys, /workspaces -----------------------------------------------------

    def in_window(self, day: str) -> bool:
        if self.today is None:
            return True
        return str(self.today - DAY * 30) <= day[:10] < str(self.today)

    def key_rows(self, key_hash: str) -> list[dict[str, Any]]:
        """One key's /activity rows (every day the fake knows)."""
        return self.key_activity.get(key_hash, [])

    def workspace_of(self) -> dict[str, str]:
        return {k["hash"]: k.get("workspace_id") or DEFAULT_WORKSPACE for k in self.keys}

    def answer_activity(self, query: dict[str, str]) -> tuple[int, Any]:
        key_hash = query.get("api_key_hash")
        date = query.get("date")
        if date is not None:
            try:
                dt.date.fromisoformat(date)
            except ValueError:
                return 400, _error(400, f"Invalid date: {date}")
            if not self.in_window(date):
                return 400, _error(400, f"Date {date} is outside the last 30 completed days")
        scope = query.get("workspace_id")
        if query.get("group_by") == "workspace" or scope:
            rows = self.workspace_rows(scope)
        else:
            rows = self.key_rows(key_hash) if key_hash else self.activity_rows
        rows = [r for r in rows if self.in_window(str(r.get("date", "")))]
        if date is not None:
            rows = [r for r in rows if str(r.get("date", ""))[:10] == date]
        return 200, {"data": [_public(r) for r in rows]}

    def workspace_rows(self, scope: str | None) -> list[dict[str, Any]]:
        """Rows split per workspace, with `workspace_id`; spend without a key is the default
        workspace's."""
        where = self.workspace_of()
        split: dict[str, dict[str, list[dict[str, Any]]]] = {}
        for key_hash, rows in [*self.key_activity.items(), ("", self.keyless_rows)]:
            space = where.get(key_hash, DEFAULT_WORKSPACE)
            split.setdefault(space, {})[key_hash] = rows
        out = []
        for space, by_key in split.items():
            if scope is None or space == scope:
                out.extend(dict(r, workspace_id=space) for r in merge_rows(by_key))
        return out

    def answer_keys(self, query: dict[str, str]) -> tuple[int, Any]:
        try:
            offset = int(query.get("offset", "0"))
        except ValueError:
            return 400, _error(400, "offset must be an integer")
        keys = self.keys
        space = query.get("workspace_id")
        if self.workspaces is not None:
            wanted = space or (self.workspaces[0]["id"] if self.workspaces else DEFAULT_WORKSPACE)
            keys = [k for k in keys if (k.get("workspace_id") or DEFAULT_WORKSPACE) == wanted]
        if query.get("include_disabled") != "true":
            keys = [k for k in keys if not k.get("disabled")]
        if self.ignore_offset:
            offset = 0
        return 200, {"data": keys[offset : offset + self.page_size]}

    def answer_workspaces(self, query: dict[str, str]) -> tuple[int, Any]:
        if self.workspaces is None:
            return 404, _error(404, "Not Found")
        try:
            offset = int(query.get("offset", "0"))
            limit = int(query.get("limit", "50"))
        except ValueError:
            return 400, _error(400, "offset and limit must be integers")
        if not 1 <= limit <= 100:
            return 400, _error(400, "limit must be between 1 and 100")
        page = self.workspaces[offset : offset + min(limit, self.workspace_page_cap)]
        return 200, {"data": page, "total_count": len(self.workspaces)}

    # -- the analytics API -----------------------------------------------------------------

    def reindex(self) -> None:
        """Forget the analytics index (after changing the org's rows in place)."""
        self._facts = None

    def labels(self) -> dict[str, str]:
        """Key hash -> what the analytics API calls the key: its name, else its label."""
        out = {k["hash"]: k.get("name") or k.get("label") or "" for k in self.keys}
        out.update(self.deleted_keys)
        return out

    def facts(self, first: dt.date, last: dt.date) -> Iterable[tuple[Any, ...]]:
        """(day, key hash or None, model permaslug, provider, workspace id, usage, byok,
        requests, prompt, completion, reasoning) for every day in `first`..`last`."""
        if self._facts is None:
            index: dict[dt.date, list[tuple[Any, ...]]] = {}
            where = self.workspace_of()
            sources = [*self.key_activity.items(), (None, self.keyless_rows)]
            for key_hash, rows in sources:
                for r in rows:
                    day = dt.date.fromisoformat(str(r["date"])[:10])
                    index.setdefault(day, []).append((
                        day, key_hash, r.get("model_permaslug") or r.get("model"),
                        r.get("provider_name"), where.get(key_hash or "", DEFAULT_WORKSPACE),
                        Decimal(str(r.get("usage") or 0)),
                        Decimal(str(r.get("byok_usage_inference") or 0)),
                        r.get("requests") or 0, r.get("prompt_tokens") or 0,
                        r.get("completion_tokens") or 0, r.get("reasoning_tokens") or 0,
                    ))
            self._facts = index
        index = self._facts
        return itertools.chain.from_iterable(
            index.get(first + DAY * n, ()) for n in range((last - first).days + 1))

    def timed_facts(self, start: dt.datetime, end: dt.datetime, granularity: str
                    ) -> Iterable[tuple[Any, ...]]:
        """`facts` from `minute_spend` in `start`..`end`, bucketed by minute or hour."""
        where = self.workspace_of()
        for at, key_hash, model, usage, byok in self.minute_spend:
            if start <= at < end:
                bucket = at.replace(second=0, microsecond=0)
                if granularity == "hour":
                    bucket = bucket.replace(minute=0)
                yield (bucket, key_hash, model, None, where.get(key_hash or "", DEFAULT_WORKSPACE),
                       usage, byok, 1, 0, 0, 0)

    def answer_analytics(self, body: Any) -> tuple[int, Any]:
        if self.analytics_status:
            return self.analytics_status, _error(self.analytics_status, "Not available")
        if self.clock is not None:
            now = self.clock()
            self._analytics_sent = [t for t in self._analytics_sent if t > now - 60]
            if len(self._analytics_sent) >= self.analytics_per_minute:
                wait = self._analytics_sent[0] + 60 - now
                self.rate_limited += 1
                return 429, (_error(429, "Rate limit exceeded"), {"Retry-After": f"{wait:.3f}"})
            self._analytics_sent.append(now)
        if not isinstance(body, dict):
            return 400, _error(400, "Body must be a JSON object")
        self.analytics_queries.append(body)
        problem = _analytics_problem(body)
        if problem:
            return 400, _error(400, problem)
        start = _instant(body["time_range"]["start"])
        end = _instant(body["time_range"]["end"])
        days = (end - start) / DAY
        dims: list[str] = body.get("dimensions") or []
        if "provider" in dims and days > 31:
            return 400, _error(400, "Dimension provider is limited to 31-day time ranges")
        if ("provider" in dims and self.provider_days_back is not None and self.today
                and start.date() < self.today - DAY * self.provider_days_back):
            return 400, _error(400, "Dimension provider is only kept for the last 31 days")
        if days > 366:
            return 400, _error(400, "Time range is limited to 365 days")
        if self.analytics_timeout_days is not None and days > self.analytics_timeout_days:
            return 408, _error(408, "Operation timed out. Please try again later.")
        granularity = body.get("granularity") or "day"
        if granularity == "minute" and end - start > dt.timedelta(hours=3):
            return 400, _error(400, "Minute granularity is limited to time ranges of 3 hours")
        labels = self.labels()
        resolvable = {k["hash"] for k in self.keys}
        warnings: list[str] = []
        keep: Callable[[str | None], bool] | None = None
        for f in body.get("filters") or []:
            if f.get("field") != "api_key_id":
                return 400, _error(400, f"Filtering on {f.get('field')} is not faked")
            values = f["value"] if isinstance(f["value"], list) else [f["value"]]
            unknown = [v for v in values if v not in resolvable]
            if unknown and f["operator"] in ("in", "eq"):
                warnings.append(f"Could not resolve api_key_id values: {len(unknown)}")
            wanted = set(values) & resolvable
            if f["operator"] in ("in", "eq"):
                keep = lambda h, w=wanted, k=keep: (k is None or k(h)) and h in w  # noqa: E731
            elif f["operator"] in ("not_in", "neq"):
                keep = (lambda h, w=wanted, k=keep:  # noqa: E731
                        (k is None or k(h)) and h not in w)
            else:
                return 400, _error(400, f"Operator {f['operator']} is not faked for api_key_id")
        groups: dict[tuple[Any, ...], list[Any]] = {}
        spaces = {w["id"]: w["name"] for w in self.workspaces or []}
        facts = (self.timed_facts(start, end, granularity) if granularity in ("minute", "hour")
                 else self.facts(start.date(), (end - dt.timedelta(microseconds=1)).date()))
        value_of: dict[str, Callable[[tuple[Any, ...]], Any]] = {
            "api_key_id": lambda f: labels.get(f[1]) if f[1] else None,
            "model": lambda f: f[2], "provider": lambda f: f[3],
            "workspace": lambda f: spaces.get(f[4], "Default"),
        }
        getters = [value_of.get(d, lambda f: None) for d in dims]
        for fact in facts:
            if keep is not None and not keep(fact[1]):
                continue
            slot = (fact[0], *[get(fact) for get in getters])
            sums = groups.get(slot)
            if sums is None:
                groups[slot] = list(fact[5:11])
            else:
                sums[0] += fact[5]
                sums[1] += fact[6]
                sums[2] += fact[7]
                sums[3] += fact[8]
                sums[4] += fact[9]
                sums[5] += fact[10]
        self._queries = getattr(self, "_queries", 0) + 1
        bucket = f"date__{granularity}" if self._queries % 2 else f"created_at__{granularity}"
        rows = []
        for slot, s in sorted(groups.items(), key=lambda g: (g[0][0], str(g[0][1:]))):
            when = slot[0]
            row: dict[str, Any] = {bucket: f"{when:%Y-%m-%dT%H:%M}:00.000Z"
                                   if isinstance(when, dt.datetime) else f"{when}T00:00:00.000Z"}
            row.update(zip(dims, slot[1:], strict=True))
            count = str if self.string_counts else int
            row.update({
                "total_usage": float(s[0] + s[1]), "credits_usage": float(s[0]),
                "byok_usage": float(s[1]) if s[1] else None,
                "request_count": count(s[2]), "tokens_prompt": count(s[3]),
                "tokens_completion": count(s[4]),
                "reasoning_tokens": count(s[5]) if s[5] else None,
            })
            rows.append(row)
        limit = body.get("limit", 1000)
        if body.get("granularity") and dims and "group_limit" not in body:
            limit = max(limit, len(rows))  # the server raises it for time series
        limit = min(limit, self.analytics_max_rows)
        truncated = len(rows) > limit
        return 200, {"data": {
            "data": rows[:limit],
            "metadata": {"query_time_ms": 12, "row_count": min(len(rows), limit),
                         "truncated": truncated},
            "warnings": warnings,
        }}


def _instant(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


def _analytics_problem(body: dict[str, Any]) -> str:
    """Why the analytics API would answer 400, or ""."""
    metrics = body.get("metrics")
    if not isinstance(metrics, list) or not metrics:
        return "metrics is required"
    dims = body.get("dimensions") or []
    if len(dims) > 2:
        return "At most 2 dimensions may be requested"
    if any(d not in ANALYTICS_DIMENSIONS for d in dims):
        return "Unknown dimension"
    if len(body.get("filters") or []) > 20:
        return "At most 20 filters may be given"
    if body.get("limit", 1000) > 10_000:
        return "limit must be at most 10000"
    if body.get("granularity") not in (None, "minute", "hour", "day", "week", "month"):
        return "Unknown granularity"
    span = body.get("time_range")
    if not isinstance(span, dict) or "start" not in span or "end" not in span:
        return "time_range needs start and end (the fake does not default to 7 days)"
    try:
        start, end = _instant(span["start"]), _instant(span["end"])
    except (TypeError, ValueError):
        return "time_range: invalid date-time"
    if end <= start:
        return "time_range: end must be after start"
    return ""


def _public(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if not k.startswith("_")}


class _Handler(FakeHandler):
    server: _Server
    protocol_version = "HTTP/1.1"  # keep-alive, like the real API; every answer has a length
    disable_nagle_algorithm = True  # headers and body go out in separate writes

    def do_GET(self) -> None:  # noqa: N802
        self._handle()

    def do_POST(self) -> None:  # noqa: N802
        if urlsplit(self.path).path != PREFIX + "/analytics/query":
            self._not_allowed()
            return
        raw = self.body()
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        self._handle(body)

    def _not_allowed(self) -> None:
        self.body()
        self._record()
        self._send(405, _error(405, "Method Not Allowed"), {"Allow": "GET"})  # POST: analytics

    do_PUT = do_PATCH = do_DELETE = do_OPTIONS = do_HEAD = _not_allowed  # noqa: N815

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

    def _handle(self, body: Any = None) -> None:
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
            status, answer = fake.answer(
                request.path, request.query, self.headers.get("Authorization"), body
            )
            headers = None
            if isinstance(answer, tuple):
                answer, headers = answer
            self._send(status, answer, headers)
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
