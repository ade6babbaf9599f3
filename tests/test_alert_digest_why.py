"""The daily digest's biggest change, explained: planted data through the fake OpenRouter, sync,
build and render. The change against the day before names its key x model contributors with
their numbers and splits into volume, mix and price; a new expensive model is mix (and called a
new model), not volume; without per-key history that accounts for both days, no explanation."""

from __future__ import annotations

import datetime as dt
import json
import re
from decimal import Decimal
from pathlib import Path

from bot.compute.explain import attributed
from bot.jobs.send import SendOptions, build, run_send
from bot.models import DestinationKind, MailMessage, SlackMessage
from bot.render.messages import Renderer
from tests.alert_world import PRICES, World, each_day, make_world
from tests.rows import row

D = Decimal
M = 1_000_000
DAY = dt.date(2026, 11, 18)  # a Wednesday
BEFORE = DAY - dt.timedelta(days=1)
NOW = dt.datetime(2026, 11, 19, 8, 0, tzinfo=dt.UTC)
EMAIL = """email: {host: 127.0.0.1, port: 2525, security: none, from: bot@example.com}
reports:
  daily: {to: ["slack:#spend", "email:team@example.com"]}
"""


def plant(world: World) -> None:
    """Two weeks of agents on sonnet ($80 a day) and batch on gpt-4o-mini ($20); on DAY the
    agents key also runs claude-opus-4 for $300 (a model nobody used before) and batch does
    half as much again ($30)."""
    t = world.timeline
    for day in each_day(DAY - dt.timedelta(days=13), DAY):
        t.spend(day, "agents", "anthropic/claude-sonnet-4", 80)
        t.spend(day, "batch", "openai/gpt-4o-mini", 30 if day == DAY else 20)
    t.spend(DAY, "agents", "anthropic/claude-opus-4", 300)


def tokens(cost: int, model: str) -> Decimal:
    return D(int(D(cost) / PRICES[model] * M))


def test_daily_digest_explains_its_change_by_key_and_model(fake_openrouter, fake_slack,
                                                           tmp_path: Path) -> None:
    world = make_world(tmp_path, fake_openrouter, "  rules: []\n", extra_yaml=EMAIL,
                       slack=fake_slack)
    plant(world)
    app = world.app(NOW)
    digest = build(app, "daily", DAY).data
    x = digest.why  # type: ignore[union-attr]
    assert x is not None and x.delta == D(310)
    # the day before: 13.3M sonnet tokens and 50M mini tokens for $100; DAY adds 10M opus
    # tokens and 25M more mini tokens
    usual_tokens = tokens(80, "anthropic/claude-sonnet-4") + tokens(20, "openai/gpt-4o-mini")
    added = tokens(300, "anthropic/claude-opus-4") + tokens(10, "openai/gpt-4o-mini")
    assert x.usual_tokens == usual_tokens and x.tokens - x.usual_tokens == added
    blended = D(100) / usual_tokens * M
    assert x.volume_effect == added * blended / M  # more tokens at the day before's rate
    assert x.price_effect == 0  # no key x model changed its own $ per million
    assert x.mix_effect == D(310) - x.volume_effect and x.driver == "mix"
    assert [(c.key, c.model, c.role, c.delta) for c in x.contributors] == [
        ("agents", "anthropic/claude-opus-4", "new_model", D(300)),
        ("batch", "openai/gpt-4o-mini", "volume", D(10)),
    ]

    result = run_send(app, SendOptions("daily", DAY, dry_run=True))
    [slack] = [p.message for p in result.previews if p.destination.kind is DestinationKind.SLACK]
    [mail] = [p.message for p in result.previews if p.destination.kind is DestinationKind.EMAIL]
    assert isinstance(slack, SlackMessage) and isinstance(mail, MailMessage)
    texts = [b["text"]["text"] for b in slack.blocks if isinstance(b.get("text"), dict)]
    [why] = [t for t in texts if t.startswith("*Why it changed*")]
    assert "(against Tue 2026-11-17, by key x model)" in why
    assert ("• agents x anthropic/claude-opus-4: $300.00, new model (5,000 requests, 10.0M "
            "tokens at $30.00 per M)") in why
    assert ("• batch x openai/gpt-4o-mini: $30.00 vs $20.00 (+$10.00, more volume); 37,500 "
            "vs 25,000 requests; $0.40 vs $0.40 per M tokens") in why
    volume = f"+${x.volume_effect:.2f}"
    assert (f"Mostly the mix of models: volume {volume} (98.3M vs 63.3M tokens at the usual "
            "blended $1.58 per M)") in why
    assert "new model anthropic/claude-opus-4), price +$0.00" in why
    # the explanation sits before the top lists
    assert texts.index(why) < next(i for i, t in enumerate(texts) if t.startswith("*Top models"))
    assert "Why it changed" in mail.html and "new model" in mail.html
    assert "agents × anthropic/claude-opus-4" in mail.html
    assert "Mostly the mix of models</strong> · where the +$310.00 came from" in mail.html
    for part, amount in (("Volume", volume), ("Mix", f"+${x.mix_effect:.2f}"),
                         ("Price", "+$0.00")):
        assert re.search(rf">{part}</td>\s*<td[^>]*>{re.escape(amount)}</td>", mail.html)
    assert ("  - agents x anthropic/claude-opus-4: $300.00, new model (5,000 requests, 10.0M "
            "tokens at $30.00 per M)") in mail.text
    assert "Mostly the mix of models: volume" in mail.text
    # nothing was sent and nothing recorded as sent
    assert all(o.status.name != "SENT" for o in result.outcomes) and not fake_slack.posts


def test_no_explanation_when_per_key_history_does_not_account_for_the_day(
        fake_openrouter, tmp_path: Path) -> None:
    """A deleted key's $50 on DAY is in the org-wide figures but in no key's: the per-key rows
    cannot explain the change honestly, so the digest shows none."""
    world = make_world(tmp_path, fake_openrouter, "  rules: []\n")
    plant(world)
    app = world.app(NOW)
    fake_openrouter.analytics_status = 404  # history from /activity alone
    fake_openrouter.activity_rows.append({
        "date": DAY.isoformat(), "model": "openai/gpt-4o-mini",
        "model_permaslug": "openai/gpt-4o-mini", "endpoint_id": "ep-gone",
        "provider_name": "OpenAI", "usage": "50", "byok_usage_inference": "0", "requests": 10,
        "prompt_tokens": 1000, "completion_tokens": 1000, "reasoning_tokens": 0})
    digest = build(app, "daily", DAY).data
    assert digest.spend.cost == D(460) and digest.why is None  # type: ignore[union-attr]
    slack = Renderer().daily_slack(digest)  # type: ignore[arg-type]
    assert not any("Why it changed" in json.dumps(b) for b in slack.blocks)
    mail = Renderer(png_charts=False).daily_email(digest)  # type: ignore[arg-type]
    assert "Why it changed" not in mail.html and "Why it changed" not in mail.text


def test_per_key_rows_must_account_for_both_days() -> None:
    org = [row("2026-11-17", usage="100"), row("2026-11-18", usage="200")]
    keys = [row("2026-11-17", usage="99.5", key="a"), row("2026-11-18", usage="200", key="a")]
    days = (dt.date(2026, 11, 17), dt.date(2026, 11, 18))
    assert attributed(keys, org, days)  # within 1%
    assert not attributed(keys[1:], org, days)  # the day before is missing
    assert not attributed([*keys[:1], row("2026-11-18", usage="150", key="a")], org, days)
