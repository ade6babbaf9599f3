"""Small builders for activity rows used by unit tests."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

from bot.models import ActivityRow


def row(
    day: str,
    model: str = "openai/gpt-4o",
    provider: str = "OpenAI",
    usage: str = "0",
    byok: str = "0",
    requests: int = 1,
    prompt: int = 0,
    completion: int = 0,
    reasoning: int = 0,
    key: str = "",
    endpoint: str | None = None,
) -> ActivityRow:
    return ActivityRow(
        date=dt.date.fromisoformat(day),
        model=model,
        model_permaslug=model,
        endpoint_id=endpoint or f"{provider}/{model}",
        provider=provider,
        usage=Decimal(usage),
        byok_usage=Decimal(byok),
        requests=requests,
        prompt_tokens=prompt,
        completion_tokens=completion,
        reasoning_tokens=reasoning,
        key_hash=key,
    )
