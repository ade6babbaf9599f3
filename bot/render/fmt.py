"""Display formatting of money, changes, counts and days (the only place figures are rounded)."""

from __future__ import annotations

import datetime as dt
from decimal import ROUND_HALF_UP, Decimal

CENT = Decimal("0.01")


def money(value: Decimal | float | int | None) -> str:
    """`$1,234.56`; a non-zero amount under a cent is `<$0.01` (or `-<$0.01`)."""
    if value is None:
        return "n/a"
    amount = Decimal(str(value)) if not isinstance(value, Decimal) else value
    if amount != 0 and abs(amount) < CENT:
        return "<$0.01" if amount > 0 else "-<$0.01"
    rounded = amount.quantize(CENT, rounding=ROUND_HALF_UP)
    sign = "-" if rounded < 0 else ""
    return f"{sign}${abs(rounded):,.2f}"


def signed_money(value: Decimal) -> str:
    """`+$12.30` / `-$1.00`: a difference in money."""
    return ("+" if value >= 0 else "") + money(value)


def change_pct(ratio: Decimal) -> Decimal:
    """A relative change (0.123) as the percentage shown, rounded to one place (12.3)."""
    return (ratio * 100).quantize(Decimal("0.1"), rounding=ROUND_HALF_UP)


def change(ratio: Decimal | None) -> str:
    """`+12.3%` / `-4.0%` / `0.0%` for a relative change; `new` (None) when nothing came before."""
    if ratio is None:
        return "new"
    pct = change_pct(ratio)
    if pct == 0:
        return "0.0%"
    return f"{'+' if pct > 0 else ''}{pct}%"


def trend(ratio: Decimal | None) -> str:
    """Which way a change went as shown: `up` (spend rose, or new), `down` or `flat`."""
    if ratio is None:
        return "up"
    pct = change_pct(ratio)
    return "up" if pct > 0 else "down" if pct < 0 else "flat"


def percent(value: Decimal) -> str:
    """A percentage to one place: `4.0%`."""
    return f"{value:.1f}%"


def number(value: Decimal) -> str:
    """A threshold as written: `10`, `7.5`, `0.25` (no exponent, no trailing zeros)."""
    return f"{value.normalize():f}"


def count(value: int) -> str:
    """Whole numbers with thousands separators."""
    return f"{value:,}"


def amount(value: Decimal | int) -> str:
    """A count that may be an average (requests on a usual day), whole: `1,204`."""
    return f"{Decimal(value).quantize(Decimal(1), rounding=ROUND_HALF_UP):,}"


def tokens(value: Decimal | int) -> str:
    """A token count at a glance: `320`, `9.5k`, `4.1M`, `2.3B`."""
    n = Decimal(value)
    for size, suffix in ((Decimal(10) ** 9, "B"), (Decimal(10) ** 6, "M"), (Decimal(1000), "k")):
        if abs(n) >= size:
            return f"{(n / size).quantize(Decimal('0.1'), rounding=ROUND_HALF_UP)}{suffix}"
    return amount(n)


def duration(value: dt.timedelta) -> str:
    """`15 min`, `2 h`, `1 h 30 min`: a window as people say it."""
    minutes = int(value.total_seconds() // 60)
    hours, minutes = divmod(minutes, 60)
    parts = ([f"{hours} h"] if hours else []) + ([f"{minutes} min"] if minutes else [])
    return " ".join(parts) or f"{int(value.total_seconds())} s"


def number_1(value: Decimal) -> str:
    """A ratio to one place: `7.5`."""
    return f"{value.quantize(Decimal('0.1'), rounding=ROUND_HALF_UP)}"


def first_upper(text: str) -> str:
    """The text with its first letter made upper case (the rest untouched, unlike capitalize)."""
    return text[:1].upper() + text[1:]


def days_label(value: Decimal | None) -> str:
    """Runway in days: `12.5 days`, `>365 days`, `n/a` when nothing is being spent."""
    if value is None:
        return "n/a"
    if value > 365:
        return ">365 days"
    return f"{value.quantize(Decimal('0.1'), rounding=ROUND_HALF_UP)} days"


def day(value: dt.date) -> str:
    """`Tue 2026-11-24`."""
    return f"{value:%a} {value.isoformat()}"


def as_of(value: dt.datetime) -> str:
    """`2026-11-25 09:30 UTC`."""
    return value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


def bar_length(value: Decimal, peak: Decimal, width: int) -> int:
    """How many of `width` units a bar of value/peak takes (at least 1 for any non-zero value)."""
    if peak <= 0 or value <= 0:
        return 0
    return max(int((value / peak * width).to_integral_value(rounding=ROUND_HALF_UP)), 1)


def bar(value: Decimal, peak: Decimal, width: int = 30) -> str:
    """A text bar proportional to value/peak (at least one block for any non-zero value)."""
    return "█" * bar_length(value, peak, width)
