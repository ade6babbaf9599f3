"""The daily-spend chart: a PNG with matplotlib (valid, sized for e-mail, deterministic,
highlighted week), HTML-table bars in e-mail without it."""

from __future__ import annotations

import datetime as dt
import io
import json
import re
import struct
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from bot.compute.aggregate import Figures, Group
from bot.compute.digest import WeeklyReport, build_daily, build_weekly
from bot.models import ActivityRow
from bot.render import chart
from bot.render.chart import MUTED, STRONG, _drawn, chart_png, png_available
from bot.render.messages import Renderer
from tests.conftest import no_wait
from tests.rows import row


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


def test_the_same_series_gives_the_same_png_bytes_without_a_version_stamp() -> None:
    a = chart_png(FOURTEEN, title="Daily spend", highlight_from=dt.date(2026, 11, 18))
    _drawn.cache_clear()  # drawn again, not the kept copy
    b = chart_png(FOURTEEN, title="Daily spend", highlight_from=dt.date(2026, 11, 18))
    assert a == b and a is not b
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


# --- without matplotlib (the `charts` extra): HTML-table bars in e-mail, text in Slack ----------


@pytest.fixture()
def no_matplotlib(monkeypatch: pytest.MonkeyPatch) -> None:
    """This test runs as if matplotlib were not installed: importing it fails."""
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)


def fourteen_days() -> list[ActivityRow]:
    """Nov 11-24 (the last of them the peak, $24), with nothing spent on Nov 21."""
    values = ["21.5", "20", "19.3", "8.35", "7", "17", "17.6", "18", "17.4", "17", "0", "9", "19.7",
              "24"]
    return [row((dt.date(2026, 11, 11) + dt.timedelta(days=i)).isoformat(), usage=v)
            for i, v in enumerate(values)]


AS_OF = dt.datetime(2026, 11, 25, 9, 30, tzinfo=dt.UTC)


def weekly_report() -> WeeklyReport:
    return build_weekly(dt.date(2026, 11, 24), as_of=AS_OF, rows=fourteen_days(), key_rows={},
                        key_names={}, credits=None)


def bars(html: str) -> list[tuple[str, str]]:
    """(width, colour) of each drawn bar."""
    return re.findall(r'<table role="presentation" width="(\d+)%"[^>]*>(?:\s|<tbody>)*<tr>\s*'
                      r'<td class="bar"[^>]*\bbgcolor="(#[0-9a-f]{6})"', html)


def test_png_available_follows_the_import(no_matplotlib: None) -> None:
    assert not png_available()


def test_email_without_matplotlib_draws_the_bars_with_tables(no_matplotlib: None) -> None:
    msg = Renderer().weekly_email(weekly_report())
    assert msg.inline_images == {} and "cid:" not in msg.html and "<img" not in msg.html
    drawn = bars(msg.html)
    # 14 days, the empty one without a bar; widths are shares of the $24 peak
    assert len(drawn) == 13
    assert drawn[-1] == ("100", STRONG) and drawn[0] == ("90", MUTED)  # 21.5 / 24
    assert [c for _, c in drawn] == [MUTED] * 7 + [STRONG] * 6  # this week strong
    assert "Sat 11-21" in msg.html and "$24.00" in msg.html  # every day labelled, with amount
    assert "This week" in msg.html and "Week before" in msg.html  # the legend
    # no CSS the big clients strip is needed: the bars are attributes on table cells
    assert 'bgcolor="#2563eb"' in msg.html and 'height="14"' in msg.html


def test_daily_email_without_matplotlib_highlights_the_day(no_matplotlib: None) -> None:
    d = build_daily(dt.date(2026, 11, 24), as_of=AS_OF, rows=fourteen_days(), key_rows={},
                    key_names={}, keys=[], credits=None)
    msg = Renderer().daily_email(d)
    drawn = bars(msg.html)
    assert len(drawn) == 13 and drawn[-1] == ("100", STRONG)
    assert {c for _, c in drawn[:-1]} == {MUTED}
    assert msg.inline_images == {}


def test_slack_charts_without_matplotlib_keep_the_text_chart(
    no_matplotlib: None, caplog: pytest.LogCaptureFixture
) -> None:
    msg = Renderer().weekly_slack(weekly_report(), charts=True)
    assert msg.chart_png is None
    assert "```" in json.dumps(msg.blocks)  # the text chart is in the message itself
    assert "openrouter-usage[charts]" in caplog.text


def test_demo_without_matplotlib_writes_the_weekly_email_with_a_chart(
    no_matplotlib: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from bot.cli import main

    assert main(["demo", "--out", str(tmp_path)], now=lambda: AS_OF, sleep=no_wait) == 0
    capsys.readouterr()
    html = (tmp_path / "weekly-email.html").read_text()
    assert len(bars(html)) == 14 and "data:image/png" not in html


def test_renderer_can_be_told_not_to_draw_pngs() -> None:
    msg = Renderer(png_charts=False).weekly_email(weekly_report())
    assert msg.inline_images == {} and len(bars(msg.html)) == 13
    assert Renderer(png_charts=True).weekly_email(weekly_report()).inline_images["chart"]


def test_the_same_chart_asked_for_again_is_drawn_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """A digest to several e-mail addresses is rendered once per address: one drawing."""
    from matplotlib.figure import Figure

    drawn = []
    savefig = Figure.savefig

    def counted(self: Figure, *args: Any, **kwargs: Any) -> Any:
        drawn.append(self)
        return savefig(self, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", counted)
    _drawn.cache_clear()
    first = chart_png(FOURTEEN, title="t", highlight_from=dt.date(2026, 11, 18))
    assert chart_png(FOURTEEN, title="t", highlight_from=dt.date(2026, 11, 18)) is first
    assert len(drawn) == 1
    other = chart_png(FOURTEEN, title="t", highlight_from=dt.date(2026, 11, 19))  # other week
    assert other != first and len(drawn) == 2


def patch_bars(ax: Any, values: Any, colours: Any) -> None:
    """The bars as `Axes.bar` draws them: a patch per bar."""
    ax.bar(range(len(values)), values, color=colours, width=chart.BAR_WIDTH, zorder=2)


@pytest.mark.parametrize("days", [0, 28, 92])
def test_bars_drawn_as_one_collection_give_the_same_pixels_as_a_patch_per_bar(
        days: int, monkeypatch: pytest.MonkeyPatch) -> None:
    start = dt.date(2026, 8, 1)
    dates = tuple(start + dt.timedelta(days=i) for i in range(days))
    values = tuple((i * 37 % 50) * 1.25 + (i % 3) * 0.01 for i in range(days))
    highlight = dates[days // 2] if dates else None
    drawn = chart._drawn.__wrapped__(dates, values, "Spend", highlight)
    monkeypatch.setattr(chart, "_bars", patch_bars)
    assert chart._drawn.__wrapped__(dates, values, "Spend", highlight) == drawn
