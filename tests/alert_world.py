"""A spend timeline for alert tests: what each key spent on each model each UTC day (and
today so far), served by the fake OpenRouter as the API would answer at a given instant.

`Timeline.serve(fake, now)` sets the fake's `/activity` (the 30 completed UTC days before
`now`, org-wide and per key), `/keys` (with `usage_daily`/`weekly`/`monthly` counted up to
`now`) and `/credits`. Token counts follow from each model's price, so a volume change and a
price change look different, as they do in the real data.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from bot.app import App
from bot.config import load_config
from tests.fake_openrouter import MANAGEMENT_KEY, FakeOpenRouter, merge_rows

D = Decimal
DAY = dt.timedelta(days=1)
MILLION = D(1_000_000)
# $ per million tokens (prompt and completion together) of the models the tests use
PRICES = {
    "anthropic/claude-opus-4": D(30),
    "anthropic/claude-sonnet-4": D(6),
    "openai/gpt-4o-mini": D("0.4"),
    "google/gemini-2.5-flash": D("0.5"),
}
PROVIDERS = {
    "anthropic/claude-opus-4": "Anthropic",
    "anthropic/claude-sonnet-4": "Anthropic",
    "openai/gpt-4o-mini": "OpenAI",
    "google/gemini-2.5-flash": "Google",
}


def key_hash(name: str) -> str:
    return hashlib.sha256(f"alert-test-key-{name}".encode()).hexdigest()


@dataclass
class Spend:
    cost: Decimal = D(0)
    byok: Decimal = D(0)
    requests: int = 0
    tokens: int = 0


@dataclass
class Timeline:
    """Spend by (day, key name, model); key names are unique here, hashes derive from them."""

    keys: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> extra /keys fields
    days: dict[tuple[dt.date, str, str], Spend] = field(default_factory=dict)
    # key name -> spend so far today, overriding the day's cost x the fraction of it elapsed
    today: dict[str, Decimal] = field(default_factory=dict)
    credits: Decimal = D(100_000)

    def key(self, name: str, **fields: Any) -> None:
        self.keys.setdefault(name, {}).update(fields)

    def spend(self, day: dt.date, key: str, model: str, cost: Decimal | str | int, *,
              price: Decimal | None = None, byok: bool = False,
              tokens_per_request: int = 2000) -> None:
        """`key` spent `cost` on `model` on UTC `day` (at the model's price per M tokens, or
        `price`)."""
        self.key(key)
        cost = D(cost)
        per_m = price if price is not None else PRICES[model]
        tokens = int(cost / per_m * MILLION)
        s = self.days.setdefault((day, key, model), Spend())
        if byok:
            s.byok += cost
        else:
            s.cost += cost
        s.tokens += tokens
        s.requests += max(tokens // tokens_per_request, 1 if cost else 0)

    def day_cost(self, day: dt.date, key: str | None = None, model: str | None = None) -> Decimal:
        return sum((s.cost + s.byok for (d, k, m), s in self.days.items()
                    if d == day and key in (None, k) and model in (None, m)), D(0))

    # -- what the API answers at `now` -----------------------------------------------------

    def _so_far(self, name: str, day: dt.date, now: dt.datetime) -> Decimal:
        if day == now.date() and name in self.today:
            return self.today[name]
        full = self.day_cost(day, name)
        if day < now.date():
            return full
        midnight = dt.datetime.combine(day, dt.time(), dt.UTC)
        return full * D((now - midnight).total_seconds()) / D(86400)

    def serve(self, fake: FakeOpenRouter, now: dt.datetime) -> None:
        today = now.astimezone(dt.UTC).date()
        first = today - DAY * 30
        key_activity: dict[str, list[dict[str, Any]]] = {}
        for (day, name, model), s in sorted(self.days.items()):
            if not first <= day < today:
                continue
            prompt = s.tokens * 3 // 4
            key_activity.setdefault(key_hash(name), []).append({
                "date": day.isoformat(),
                "model": model,
                "model_permaslug": model,
                "endpoint_id": f"ep-{model}",
                "provider_name": PROVIDERS[model],
                "usage": str(s.cost),
                "byok_usage_inference": str(s.byok),
                "requests": s.requests,
                "prompt_tokens": prompt,
                "completion_tokens": s.tokens - prompt,
                "reasoning_tokens": 0,
            })
        week_start = today - DAY * today.weekday()
        month_start = today.replace(day=1)
        keys = []
        used = D(0)
        for name, extra in sorted(self.keys.items()):
            def total(start: dt.date, name: str = name) -> Decimal:
                out, day = D(0), start
                while day <= today:
                    out += self._so_far(name, day, now)
                    day += DAY
                return out

            spent_days = {d for (d, k, _m) in self.days if k == name and d <= today}
            if name in self.today:
                spent_days.add(today)
            lifetime = sum((self._so_far(name, d, now) for d in spent_days), D(0))
            used += lifetime
            keys.append({
                "hash": key_hash(name), "name": name, "label": f"sk-or-v1-{name[:3]}...",
                "disabled": False, "limit": None, "limit_remaining": None, "limit_reset": None,
                "usage": str(lifetime), "usage_daily": str(total(today)),
                "usage_weekly": str(total(week_start)), "usage_monthly": str(total(month_start)),
                "byok_usage": 0, "byok_usage_daily": 0, "byok_usage_weekly": 0,
                "byok_usage_monthly": 0, "created_at": "2026-01-05T10:00:00Z", **extra,
            })
        fake.key_activity = key_activity
        fake.activity_rows = merge_rows(key_activity)
        fake.keys = keys
        fake.page_size = 100
        fake.credits = {"total_credits": str(self.credits), "total_usage": str(used)}


@dataclass
class World:
    """The fakes, a config file and the clock of one alert test."""

    fake: FakeOpenRouter
    config: Path
    env: dict[str, str]
    timeline: Timeline
    slack: Any = None

    def app(self, now: dt.datetime) -> App:
        """Serve the timeline as of `now` and make the app that runs at `now`."""
        self.timeline.serve(self.fake, now)
        return App(config=load_config(self.config, self.env), env=self.env,
                   now=lambda: now, sleep=lambda _seconds: None)


def make_world(tmp: Path, fake: FakeOpenRouter, alerts_yaml: str, *, slack: Any = None,
               extra_yaml: str = "", env: dict[str, str] | None = None) -> World:
    """A config with `alerts_yaml` (the `alerts:` section's body, indented by two spaces)."""
    slack_yaml = (f"slack:\n  token: ${{SLACK_BOT_TOKEN}}\n  base_url: {slack.base_url}\n"
                  if slack is not None else "")
    config = tmp / "config.yaml"
    config.write_text(f"storage: {{path: {tmp / 'history.db'}}}\n{slack_yaml}{extra_yaml}"
                      f"alerts:\n{alerts_yaml}")
    full_env = {"OPENROUTER_MANAGEMENT_KEY": MANAGEMENT_KEY,
                "OPENROUTER_BASE_URL": fake.base_url, **(env or {})}
    if slack is not None:
        full_env["SLACK_BOT_TOKEN"] = slack.token
    return World(fake, config, full_env, Timeline(), slack)


def each_day(start: dt.date, end: dt.date) -> Iterator[dt.date]:
    day = start
    while day <= end:
        yield day
        day += DAY


def slack_texts(slack: Any, start: int = 0,
                where: Callable[[dict[str, Any]], bool] = lambda p: True) -> list[str]:
    """The text and blocks of each Slack post from index `start`, as one string each."""
    out = []
    for post in slack.posts[start:]:
        if not where(post):
            continue
        blocks = post.get("blocks")
        if isinstance(blocks, str):
            blocks = json.loads(blocks)
        out.append(post.get("text", "") + "\n" + json.dumps(blocks, ensure_ascii=False))
    return out
