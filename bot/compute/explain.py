"""Why spend changed: the top contributors (key x model) and whether it was volume or price.

A change is explained against a *usual* day: the average of the baseline days, per key and
model. Each contributor's change splits exactly into a volume part (more or fewer tokens at the
usual $ per million tokens) and a price part (a different $ per million tokens on today's
tokens); a contributor that was not there before is all volume. Summed over the contributors,
the parts say whether the change came from volume, from price, or from both.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Literal

from bot.models import ZERO, ActivityRow

MILLION = Decimal(1_000_000)
TOP = 3  # contributors named in a message
Driver = Literal["volume", "price", "both", "none"]


@dataclass
class _Sums:
    cost: Decimal = ZERO
    requests: Decimal = ZERO
    tokens: Decimal = ZERO

    def add(self, row: ActivityRow, weight: Decimal = Decimal(1)) -> None:
        self.cost += row.cost * weight
        self.requests += row.requests * weight
        self.tokens += (row.prompt_tokens + row.completion_tokens) * weight


def per_million(cost: Decimal, tokens: Decimal) -> Decimal | None:
    """$ per million tokens, None without tokens."""
    return cost / tokens * MILLION if tokens > 0 else None


@dataclass(frozen=True)
class Contributor:
    """One key x model: its cost, requests and tokens now against its usual day."""

    key_hash: str  # "" when only models are known
    key: str  # the key's display name ("" when only models are known)
    model: str  # "" when only keys are known
    cost: Decimal
    usual: Decimal
    requests: Decimal
    usual_requests: Decimal
    tokens: Decimal
    usual_tokens: Decimal

    @property
    def delta(self) -> Decimal:
        return self.cost - self.usual

    @property
    def price(self) -> Decimal | None:
        return per_million(self.cost, self.tokens)

    @property
    def usual_price(self) -> Decimal | None:
        return per_million(self.usual, self.usual_tokens)

    @property
    def volume_effect(self) -> Decimal:
        """The change from more (or fewer) tokens at the usual price."""
        usual_price = self.usual_price
        if usual_price is None:  # new here (or no token counts): all of it is volume
            return self.delta
        return (self.tokens - self.usual_tokens) * usual_price / MILLION

    @property
    def price_effect(self) -> Decimal:
        """The change from a different price on today's tokens."""
        return self.delta - self.volume_effect


@dataclass(frozen=True)
class Explanation:
    """A change in spend, its top contributors and where it came from."""

    cost: Decimal
    usual: Decimal
    requests: Decimal
    usual_requests: Decimal
    tokens: Decimal
    usual_tokens: Decimal
    volume_effect: Decimal
    price_effect: Decimal
    contributors: list[Contributor]  # the largest increases first
    more: int  # contributors that rose but are not listed
    counts: bool = True  # whether requests and tokens are known (not from key usage alone)

    @property
    def delta(self) -> Decimal:
        return self.cost - self.usual

    @property
    def price(self) -> Decimal | None:
        return per_million(self.cost, self.tokens)

    @property
    def usual_price(self) -> Decimal | None:
        return per_million(self.usual, self.usual_tokens)

    @property
    def driver(self) -> Driver:
        """Volume when it explains at least two thirds of the change, price likewise, else
        both; none when nothing changed or without token counts."""
        if not self.counts or self.delta == 0:
            return "none"
        volume, price = abs(self.volume_effect), abs(self.price_effect)
        if volume >= 2 * price:
            return "volume"
        if price >= 2 * volume:
            return "price"
        return "both"


def explain(
    rows: Iterable[ActivityRow],
    baseline: Iterable[ActivityRow],
    names: Mapping[str, str],
    *,
    days: int = 1,
    baseline_days: int = 1,
    top: int = TOP,
    by_key: bool = True,
    by_model: bool = True,
) -> Explanation:
    """Explain the spend in `rows` (over `days` days) against `baseline` (over
    `baseline_days` days) scaled to as many days, by key (a row's `key_hash`) and/or model."""
    def who(r: ActivityRow) -> tuple[str, str]:
        return (r.key_hash if by_key else "", r.model if by_model else "")

    now: dict[tuple[str, str], _Sums] = {}
    usual: dict[tuple[str, str], _Sums] = {}
    for r in rows:
        now.setdefault(who(r), _Sums()).add(r)
    weight = Decimal(days) / baseline_days if baseline_days > 0 else ZERO
    for r in baseline:
        usual.setdefault(who(r), _Sums()).add(r, weight)
    contributors = []
    for (key_hash, model) in now.keys() | usual.keys():
        a, b = now.get((key_hash, model), _Sums()), usual.get((key_hash, model), _Sums())
        name = names.get(key_hash) or key_hash[:12]
        contributors.append(Contributor(key_hash, name, model, a.cost, b.cost, a.requests,
                                        b.requests, a.tokens, b.tokens))
    contributors.sort(key=lambda c: (-c.delta, c.key, c.model))
    rising = [c for c in contributors if c.delta > 0]
    return Explanation(
        cost=sum((c.cost for c in contributors), ZERO),
        usual=sum((c.usual for c in contributors), ZERO),
        requests=sum((c.requests for c in contributors), ZERO),
        usual_requests=sum((c.usual_requests for c in contributors), ZERO),
        tokens=sum((c.tokens for c in contributors), ZERO),
        usual_tokens=sum((c.usual_tokens for c in contributors), ZERO),
        volume_effect=sum((c.volume_effect for c in contributors), ZERO),
        price_effect=sum((c.price_effect for c in contributors), ZERO),
        contributors=rising[:top],
        more=max(len(rising) - top, 0),
    )


def in_days(rows: Iterable[ActivityRow], days: set[dt.date]) -> list[ActivityRow]:
    return [r for r in rows if r.date in days]
