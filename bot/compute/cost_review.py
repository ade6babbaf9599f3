"""The weekly report's cost review: the account's blended $ per million tokens, the models
whose effective rate is a large multiple of it (with the key driving most of their spend),
the BYOK share, and what moving that traffic to the blended rate would save a month.

Only when the data supports it: with token counts and at least two models; otherwise None and
the section is absent. Cache hit rates need the analytics API's cached-token counts, which
/activity rows do not carry; the field stays None until they do.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal

from bot.models import ZERO, ActivityRow

MILLION = Decimal(1_000_000)
MULTIPLE = Decimal(5)  # a model at 5x the blended rate or more is listed
MIN_SHARE = Decimal("0.01")  # ...if it is at least 1% of the week's spend
MONTH_OF_WEEKS = Decimal(365) / 12 / 7  # weeks in an average month


@dataclass(frozen=True)
class Pricey:
    """A model well above the blended rate, and the key behind most of its spend."""

    model: str
    cost: Decimal
    tokens: int
    rate: Decimal  # $ per million tokens
    multiple: Decimal  # of the blended rate
    key: str  # display name of the key with most of its spend ("" when unknown)
    key_share: Decimal  # that key's share of the model's spend, 0..1
    monthly_saving: Decimal  # $ a month at the blended rate instead


@dataclass(frozen=True)
class CostReview:
    cost: Decimal
    tokens: int
    blended: Decimal  # $ per million tokens, all models
    models: list[Pricey]
    byok_share: Decimal  # 0..1 of the week's cost
    cache_hit_rate: Decimal | None = None
    multiple: Decimal = MULTIPLE

    @property
    def monthly_saving(self) -> Decimal:
        return sum((m.monthly_saving for m in self.models), ZERO)


def review(rows: Iterable[ActivityRow], key_rows: Iterable[ActivityRow],
           names: Mapping[str, str], *, multiple: Decimal = MULTIPLE) -> CostReview | None:
    """The review of one week's org-wide `rows` (per key x model `key_rows` name the keys)."""
    cost = byok = ZERO
    tokens = 0
    by_model: dict[str, tuple[Decimal, int]] = {}
    for r in rows:
        t = r.prompt_tokens + r.completion_tokens
        cost += r.cost
        byok += r.byok_usage
        tokens += t
        c, n = by_model.get(r.model, (ZERO, 0))
        by_model[r.model] = (c + r.cost, n + t)
    if tokens <= 0 or cost <= 0 or len(by_model) < 2:
        return None
    blended = cost / tokens * MILLION
    key_spend: dict[str, dict[str, Decimal]] = {}
    for r in key_rows:
        per_key = key_spend.setdefault(r.model, {})
        per_key[r.key_hash] = per_key.get(r.key_hash, ZERO) + r.cost
    pricey = []
    for model, (c, n) in by_model.items():
        if n <= 0 or c < cost * MIN_SHARE:
            continue
        rate = c / n * MILLION
        if rate < blended * multiple:
            continue
        keys = key_spend.get(model, {})
        top = max(keys, key=lambda h: (keys[h], h)) if keys else ""
        total = sum(keys.values(), ZERO)
        saving = (c - n * blended / MILLION) * MONTH_OF_WEEKS
        pricey.append(Pricey(model, c, n, rate, rate / blended,
                             (names.get(top) or top[:12]) if top else "",
                             keys[top] / total if top and total else ZERO, saving))
    pricey.sort(key=lambda p: (-p.monthly_saving, p.model))
    return CostReview(cost, tokens, blended, pricey, byok / cost, None, multiple)
