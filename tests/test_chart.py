"""The PNG daily-spend chart: valid, sized for e-mail, deterministic, highlighted week."""

from __future__ import annotations

import datetime as dt
import io
import struct
from decimal import Decimal

from bot.compute.aggregate import Figures, Group
from bot.render.chart import MUTED, STRONG, chart_png


def series(values: list[str], start: dt.date = dt.date(2026, 11, 11)) -> list[Group]:
    return [
        Group((start + dt.timedelta(days=i)).isoformat(), Figures(usage=Decimal(v)))
        for i, v in enumerate(values)
    ]


FOURTEEN = series(["21.5", "20", "19.3", "8.35", "7", "17", "17.6"] * 2)


def size(png: bytes) -> tuple[int, int]:
    width, height = struct.unpack(">II", png[16:24])
    return width, height


def colours(png: bytes) -> set[str]:
    from matplotlib.image import imread

    pixels = imread(io.BytesIO(png), format="png")
    return {
        "#{:02x}{:02x}{:02x}".format(*(round(c * 255) for c in px[:3]))
        for px in pixels.reshape(-1, pixels.shape[-1])[::7]
    }


def test_png_of_the_right_size() -> None:
    png = chart_png(FOURTEEN, title="Daily spend", highlight_from=dt.date(2026, 11, 18))
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    assert size(png) == (600, 260)


def test_deterministic() -> None:
    a = chart_png(FOURTEEN, title="Daily spend", highlight_from=dt.date(2026, 11, 18))
    b = chart_png(FOURTEEN, title="Daily spend", highlight_from=dt.date(2026, 11, 18))
    assert a == b
    assert b"Software" not in a  # no version stamp that would vary between installs


def test_highlighted_week_strong_earlier_muted() -> None:
    seen = colours(chart_png(FOURTEEN, title="t", highlight_from=dt.date(2026, 11, 18)))
    assert {STRONG, MUTED} <= seen
    plain = colours(chart_png(FOURTEEN, title="t"))
    assert STRONG in plain and MUTED not in plain


def test_all_zero_and_empty_series_render() -> None:
    zero = chart_png(series(["0"] * 14), title="Nothing spent")
    assert zero.startswith(b"\x89PNG") and size(zero) == (600, 260)
    empty = chart_png([], title="No days")
    assert empty.startswith(b"\x89PNG")


def test_dollar_signs_in_titles_and_small_amounts() -> None:
    png = chart_png(series(["0.004", "0.5", "1.25"]), title="Spend $5 and $6")
    assert png.startswith(b"\x89PNG")
