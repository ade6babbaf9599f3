"""A bundled, deterministic sample org served through the real client via httpx.MockTransport.

The sample is generated relative to a given day so digests always have "yesterday" data, and
its figures do not depend on the day chosen. No key and no network are involved.
"""

from __future__ import annotations

import datetime as dt
import json
import random
from collections import defaultdict
from decimal import Decimal
from typing import Any

import httpx

DEMO_BASE_URL = "https://openrouter.demo.invalid/api/v1"
DEMO_KEY = "demo-key-not-secret"
PAGE_SIZE = 3

# model slug, provider, endpoint id, $ per 1M prompt tokens, $ per 1M completion tokens
MODELS = [
    ("openai/gpt-4o", "OpenAI", "ep-openai-gpt4o", 2.5, 10.0),
    ("anthropic/claude-sonnet-4", "Anthropic", "ep-anthropic-sonnet4", 3.0, 15.0),
    ("google/gemini-2.5-flash", "Google", "ep-google-flash", 0.3, 2.5),
    ("meta-llama/llama-3.3-70b-instruct", "Together", "ep-together-llama70b", 0.88, 0.88),
    ("meta-llama/llama-3.3-70b-instruct", "DeepInfra", "ep-deepinfra-llama70b", 0.23, 0.40),
    ("deepseek/deepseek-r1", "DeepSeek", "ep-deepseek-r1", 0.55, 2.19),
    ("mistralai/mistral-small-3.2", "Mistral", "ep-mistral-small", 0.1, 0.3),
]
NEW_MODEL = ("x-ai/grok-4", "xAI", "ep-xai-grok4", 3.0, 15.0)

# name, disabled, limit, models used (indexes into MODELS), daily scale, byok
KEYS = [
    ("production-api", False, None, (0, 1, 2), 1.0, False),
    ("data-pipeline", False, Decimal(400), (2, 3, 4), 0.8, False),
    ("support-bot", False, Decimal(60), (1, 6), 0.5, False),
    ("eval-harness", True, None, (5, 0), 0.6, False),
    ("research <notebooks>", False, None, (5, 1), 0.3, False),
    ("byok-anthropic", False, None, (1,), 0.4, True),
    ("staging", False, Decimal(25), (2, 6), 0.1, False),
]


def _price(tokens: int, per_million: float) -> Decimal:
    return (Decimal(tokens) * Decimal(str(per_million)) / Decimal(1_000_000)).quantize(
        Decimal("0.000000001")
    )


def sample_org(last_day: dt.date, days: int = 45) -> dict[str, Any]:
    """The sample org's raw API payloads: credits, per-key activity, org activity and keys."""
    rng = random.Random(20261125)
    key_rows: dict[str, list[dict[str, Any]]] = defaultdict(list)
    row: dict[str, Any]
    keys: list[dict[str, Any]] = []
    for index, (name, disabled, limit, model_ids, scale, byok) in enumerate(KEYS):
        key_hash = f"{index:02d}" + "a1b2c3d4e5f6" * 5
        total = Decimal(0)
        for offset in range(days - 1, -1, -1):
            day = last_day - dt.timedelta(days=offset)
            if disabled and offset < 12:
                continue  # disabled twelve days ago; its earlier spend still counts
            weekday_factor = 0.45 if day.weekday() >= 5 else 1.0
            spike = 2.6 if offset == 3 and name == "data-pipeline" else 1.0
            models = [MODELS[m] for m in model_ids]
            if name == "production-api" and offset == 0:
                models.append(NEW_MODEL)
            for slug, provider, endpoint, p_in, p_out in models:
                volume = scale * weekday_factor * spike * rng.uniform(0.7, 1.3)
                requests = int(400 * volume) + 1
                prompt = int(900_000 * volume)
                completion = int(160_000 * volume)
                reasoning = int(completion * 0.6) if "r1" in slug else 0
                cost = _price(prompt, p_in) + _price(completion + reasoning, p_out)
                row = {
                    "date": day.isoformat() if offset % 2 else f"{day.isoformat()} 00:00:00",
                    "model": slug,
                    "model_permaslug": f"{slug}-2025",
                    "endpoint_id": endpoint,
                    "provider_name": provider,
                    "usage": str(Decimal(0) if byok else cost),
                    "byok_usage_inference": str(cost if byok else Decimal(0)),
                    "requests": requests,
                    "prompt_tokens": prompt,
                    "completion_tokens": completion,
                    "reasoning_tokens": reasoning if reasoning else None,
                }
                key_rows[key_hash].append(row)
                total += Decimal(0) if byok else cost
        today_usage = Decimal(0) if disabled else Decimal(str(round(2.1 * scale, 4)))
        keys.append(
            {
                "hash": key_hash,
                "name": name,
                "label": f"sk-or-v1-{key_hash[:3]}...{key_hash[-3:]}",
                "disabled": disabled,
                "limit": str(limit) if limit is not None else None,
                "limit_remaining": str(limit - total % limit) if limit is not None else None,
                "limit_reset": "monthly" if limit is not None else None,
                "usage": str(total),
                "usage_daily": str(today_usage),
                "usage_weekly": str(today_usage * 3),
                "usage_monthly": str(today_usage * 20),
                "byok_usage": "0",
                "created_at": "2026-01-15T10:00:00Z",
                "expires_at": None,
            }
        )
    org: dict[tuple[str, str], dict[str, Any]] = {}
    for rows in key_rows.values():
        for row in rows:
            slot = (row["date"][:10], row["endpoint_id"])
            if slot not in org:
                org[slot] = dict(row)
                continue
            merged = org[slot]
            for field in ("usage", "byok_usage_inference"):
                merged[field] = str(Decimal(merged[field]) + Decimal(row[field]))
            for field in ("requests", "prompt_tokens", "completion_tokens"):
                merged[field] += row[field]
            if row["reasoning_tokens"]:
                merged["reasoning_tokens"] = (merged["reasoning_tokens"] or 0) + row[
                    "reasoning_tokens"
                ]
    used = sum((Decimal(k["usage"]) for k in keys), Decimal(0))
    return {
        "credits": {"total_credits": "1000", "total_usage": str(used + Decimal("180.25"))},
        "activity": list(org.values()),
        "key_activity": dict(key_rows),
        "keys": keys,
    }


def demo_transport(today: dt.date) -> httpx.MockTransport:
    """A MockTransport answering /credits, /activity and /keys like OpenRouter would."""
    org = sample_org(today - dt.timedelta(days=1))
    window_start = (today - dt.timedelta(days=30)).isoformat()

    def in_window(rows: list[dict[str, Any]], date: str | None) -> list[dict[str, Any]]:
        rows = [r for r in rows if r["date"][:10] >= window_start]
        return [r for r in rows if r["date"][:10] == date] if date else rows

    def handler(request: httpx.Request) -> httpx.Response:
        path = request.url.path.rsplit("/", 1)[-1]
        params = request.url.params
        if request.method != "GET":
            return httpx.Response(405, json={"error": {"code": 405, "message": "GET only"}})
        if path == "credits":
            body: Any = org["credits"]
        elif path == "activity":
            key = params.get("api_key_hash")
            rows = org["key_activity"].get(key, []) if key else org["activity"]
            body = in_window(rows, params.get("date"))
        elif path == "keys":
            offset = int(params.get("offset", "0"))
            body = org["keys"][offset : offset + PAGE_SIZE]
        else:
            return httpx.Response(404, json={"error": {"code": 404, "message": "not found"}})
        # Money goes out as JSON numbers written from exact decimal strings.
        text = json.dumps({"data": body})
        for field in (
            "usage",
            "byok_usage_inference",
            "total_credits",
            "total_usage",
            "limit",
            "limit_remaining",
            "usage_daily",
            "usage_weekly",
            "usage_monthly",
            "byok_usage",
        ):
            text = _unquote_numbers(text, field)
        return httpx.Response(200, text=text, headers={"content-type": "application/json"})

    return httpx.MockTransport(handler)


def _unquote_numbers(text: str, field: str) -> str:
    """Turn `"field": "1.23"` into `"field": 1.23` so the JSON carries numbers."""
    import re

    return re.sub(rf'"{field}": "(-?[0-9.]+)"', rf'"{field}": \1', text)
