"""The weekly report's cost review from planted data through history (fake OpenRouter, sync,
build, render): it names the pricey model and the key behind it, and is absent when the data
cannot support it."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from pathlib import Path

from bot.compute.cost_review import review
from bot.jobs.send import build
from bot.render.messages import Renderer
from tests.alert_world import each_day, make_world
from tests.rows import row

D = Decimal
END = dt.date(2026, 11, 22)  # a Sunday: the week of the 16th


def test_weekly_cost_review_names_the_model_and_key_the_data_plants(
        fake_openrouter, tmp_path: Path) -> None:
    world = make_world(tmp_path, fake_openrouter, "  rules: []\n")
    t = world.timeline
    for day in each_day(END - dt.timedelta(days=13), END):
        t.spend(day, "batch", "openai/gpt-4o-mini", 20)  # $0.40/M: 50M tokens a day
        t.spend(day, "chat", "google/gemini-2.5-flash", 10, byok=True)  # $0.50/M, BYOK
        t.spend(day, "research", "anthropic/claude-opus-4", 24)  # $30/M
        t.spend(day, "agents", "anthropic/claude-opus-4", 6)
    app = world.app(dt.datetime(2026, 11, 23, 8, 0, tzinfo=dt.UTC))
    weekly = build(app, "weekly", END).data
    cr = weekly.cost_review
    assert cr is not None
    tokens = 7 * (50_000_000 + 20_000_000 + 1_000_000)
    assert cr.tokens == tokens and cr.blended == D(7 * 60) / tokens * 1_000_000
    [opus] = cr.models
    assert (opus.model, opus.key, opus.key_share) == ("anthropic/claude-opus-4", "research",
                                                      D("0.8"))
    assert opus.rate == D(30) and opus.multiple >= 5
    # at the blended rate its 7M tokens would cost 7M x blended; the rest is the saving
    week_saving = D(7 * 30) - 7_000_000 * cr.blended / 1_000_000
    assert abs(opus.monthly_saving - week_saving * D(365) / 12 / 7) < D("1e-9")
    assert cr.byok_share == D(70) / D(420)
    slack = Renderer().weekly_slack(weekly)
    text = "\n".join(b["text"]["text"] for b in slack.blocks if "text" in b
                     and isinstance(b["text"], dict))
    assert "*Cost review*" in text and "anthropic/claude-opus-4: *$30.00*/M tokens" in text
    assert "80.0% of it from key research" in text
    mail = Renderer(png_charts=False).weekly_email(weekly)
    assert "Cost review" in mail.html and "research (80.0%)" in mail.html
    assert "anthropic/claude-opus-4: $30.00/M tokens" in mail.text


def test_cost_review_is_absent_without_tokens_or_with_one_model() -> None:
    one_model = [row("2026-11-20", model="a", usage="5", prompt=1000)]
    assert review(one_model, [], {}) is None
    no_tokens = [row("2026-11-20", model="a", usage="5"), row("2026-11-20", model="b", usage="1")]
    assert review(no_tokens, [], {}) is None
    even = [row("2026-11-20", model="a", usage="5", prompt=1_000_000),
            row("2026-11-20", model="b", usage="4", prompt=1_000_000)]
    calm = review(even, [], {})
    assert calm is not None and calm.models == [] and calm.blended == D("4.5")
