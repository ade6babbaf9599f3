"""Why spend changed: the top contributors (key x model), and how much of the change came from
volume, from the mix of models and from price.

A change is explained against a *usual* spend: the baseline days' figures per key and model,
scaled to as many days as the explained span. The whole change splits exactly into three parts:

- **volume**: the change in tokens, priced at the usual *blended* $ per million tokens (the
  usual spend divided by the usual tokens): what the change would have been had the same mix of
  models simply run more (or less);
- **price**: for each key x model used both times, its own change of $ per million tokens on
  today's tokens (a provider raised its price, longer prompts on a per-request model);
- **mix**: the rest: traffic moving to pricier or cheaper models, models that are new or gone.

So a new expensive model shows as mix (its tokens count as volume only at the old blended
rate), not as volume. Each contributor also says what it is: a *new model* (not used by anyone
in the baseline), *new* for its key, *gone*, or more/less volume or price on its own.
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
Driver = Literal["volume", "mix", "price", "several", "none"]
Role = Literal["new_model", "new", "gone", "volume", "price", "both", "unknown"]


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


class _Against:
    """Spend and tokens now against their usual: the change and the $ per million tokens
    (blended over models where there are several)."""

    cost: Decimal
    usual: Decimal
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


@dataclass(frozen=True)
class Contributor(_Against):
    """One key x model: its cost, requests and tokens now against its usual."""

    key_hash: str  # "" when only models are known
    key: str  # the key's display name ("" when only models are known)
    model: str  # "" when only keys are known
    cost: Decimal
    usual: Decimal
    requests: Decimal
    usual_requests: Decimal
    tokens: Decimal
    usual_tokens: Decimal
    new_model: bool = False  # its model was used by nobody in the baseline

    @property
    def new(self) -> bool:
        """Not there in the baseline (no spend and no tokens)."""
        return self.usual == 0 and self.usual_tokens == 0 and self.usual_requests == 0

    @property
    def volume_effect(self) -> Decimal:
        """Its change from more (or fewer) tokens at its own usual price (all of it when new
        or without token counts)."""
        usual_price = self.usual_price
        if usual_price is None:
            return self.delta
        return (self.tokens - self.usual_tokens) * usual_price / MILLION

    @property
    def price_effect(self) -> Decimal:
        """Its change from a different $ per million tokens on today's tokens."""
        return self.delta - self.volume_effect

    @property
    def role(self) -> Role:
        """What this contributor is: a new model, new for its key, gone, or moved by volume,
        by price or both (unknown without token counts)."""
        if self.new:
            return "new_model" if self.new_model else "new"
        if self.cost == 0 and self.tokens == 0:
            return "gone"
        if self.usual_price is None or self.price is None:
            return "unknown"
        return _driver(self.volume_effect, self.price_effect)


def _driver(volume: Decimal, price: Decimal) -> Literal["volume", "price", "both"]:
    a, b = abs(volume), abs(price)
    if a >= 2 * b:
        return "volume"
    if b >= 2 * a:
        return "price"
    return "both"


@dataclass(frozen=True)
class Explanation(_Against):
    """A change in spend, its top contributors and where it came from."""

    cost: Decimal
    usual: Decimal
    requests: Decimal
    usual_requests: Decimal
    tokens: Decimal
    usual_tokens: Decimal
    volume_effect: Decimal  # the change in tokens at the usual blended $ per million
    price_effect: Decimal  # each key x model's own change of $ per million, on today's tokens
    contributors: list[Contributor]  # the largest moves in the direction of the change first
    more: int  # contributors that moved that way but are not listed
    counts: bool = True  # whether requests and tokens are known (not from key usage alone)
    mix_effect: Decimal = ZERO  # the rest: pricier or cheaper models, new or gone ones
    usual_known: bool = True  # False: there is no usual to compare with (yet)

    @property
    def rising(self) -> bool:
        return self.delta >= 0

    @property
    def new_models(self) -> list[str]:
        """Models among the listed contributors that nobody used in the baseline."""
        return sorted({c.model for c in self.contributors if c.new_model and c.model})

    @property
    def driver(self) -> Driver:
        """The part (volume, mix or price) that makes at least two thirds of the three parts'
        sizes; several when none does; none when nothing changed or without token counts."""
        if not self.counts or self.delta == 0:
            return "none"
        parts: dict[Driver, Decimal] = {"volume": abs(self.volume_effect),
                                        "mix": abs(self.mix_effect),
                                        "price": abs(self.price_effect)}
        total = sum(parts.values(), ZERO)
        if total == 0:
            return "none"
        for name, size in parts.items():
            if size * 3 >= total * 2:
                return name
        return "several"


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
    models_before = {model for (_, model), s in usual.items() if s.cost or s.tokens or s.requests}
    contributors = []
    for (key_hash, model) in now.keys() | usual.keys():
        a, b = now.get((key_hash, model), _Sums()), usual.get((key_hash, model), _Sums())
        name = names.get(key_hash) or key_hash[:12]
        contributors.append(Contributor(
            key_hash, name, model, a.cost, b.cost, a.requests, b.requests, a.tokens, b.tokens,
            new_model=bool(model) and model not in models_before))
    cost = sum((c.cost for c in contributors), ZERO)
    usual_cost = sum((c.usual for c in contributors), ZERO)
    tokens = sum((c.tokens for c in contributors), ZERO)
    usual_tokens = sum((c.usual_tokens for c in contributors), ZERO)
    counts = tokens > 0 or usual_tokens > 0 or (cost == 0 and usual_cost == 0)
    blended = per_million(usual_cost, usual_tokens)
    if blended is not None:
        volume = (tokens - usual_tokens) * blended / MILLION
    elif usual_cost == 0:  # nothing before: all of it is new volume
        volume = cost
    else:  # spend before without token counts: no rate to price the tokens at
        volume, counts = ZERO, False
    price = sum((c.price_effect for c in contributors
                 if c.usual_price is not None and c.price is not None), ZERO)
    rising = cost >= usual_cost
    sign = 1 if rising else -1
    moved = sorted((c for c in contributors if c.delta * sign > 0),
                   key=lambda c: (-c.delta * sign, c.key, c.model))
    return Explanation(
        cost=cost,
        usual=usual_cost,
        requests=sum((c.requests for c in contributors), ZERO),
        usual_requests=sum((c.usual_requests for c in contributors), ZERO),
        tokens=tokens,
        usual_tokens=usual_tokens,
        volume_effect=volume,
        price_effect=price,
        mix_effect=cost - usual_cost - volume - price,
        contributors=moved[:top],
        more=max(len(moved) - top, 0),
        counts=counts,
    )


def attributed(detail: Iterable[ActivityRow], total: Iterable[ActivityRow],
               days: Iterable[dt.date]) -> bool:
    """Whether the per-key rows `detail` account for the org-wide spend in `total` on each
    of `days` (within a cent or 1%): only then do they explain a change honestly."""
    wanted = set(days)
    have: dict[dt.date, Decimal] = {}
    want: dict[dt.date, Decimal] = {}
    for r in detail:
        if r.date in wanted:
            have[r.date] = have.get(r.date, ZERO) + r.cost
    for r in total:
        if r.date in wanted:
            want[r.date] = want.get(r.date, ZERO) + r.cost
    for day in wanted:
        a, b = have.get(day, ZERO), want.get(day, ZERO)
        if abs(a - b) > max(Decimal("0.01"), abs(b) / 100):
            return False
    return True

