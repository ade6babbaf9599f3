"""Rendering of the daily digest, weekly report and generic messages to Slack and e-mail."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import re
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from bot.compute.digest import DailyDigest, WeeklyReport, build_daily, build_weekly
from bot.errors import ConfigError
from bot.models import ActivityRow, ApiKey, Credits
from bot.render.messages import (
    MAX_BLOCKS,
    Renderer,
    fit_slack_limits,
    mrkdwn_escape,
)
from bot.render.text import CSV_FIELDS
from tests.rows import row

DAY = dt.date(2026, 11, 24)  # a Tuesday
AS_OF = dt.datetime(2026, 11, 25, 9, 30, tzinfo=dt.UTC)
CREDITS = Credits(Decimal(100), Decimal(40))
CSV_HEADER = (",".join(CSV_FIELDS) + "\n").encode()
EVIL = [
    "<!channel>",
    "<@U1>",
    "<https://evil.example|click>",
    "<script>alert(1)</script>",
    '"quotes"',
    "back\\slash",
    "new\nline",
]


def sample_rows() -> tuple[list[ActivityRow], dict[str, list[ActivityRow]]]:
    """D: gpt-4o $10 (key k1) + claude $2 + $0.35 BYOK (key k2); D-1: gpt-4o $10; D-7: $4."""
    key_rows = {
        "k1": [
            row("2026-11-17", usage="4.00", key="k1"),
            row("2026-11-23", usage="10.00", key="k1"),
            row("2026-11-24", usage="10.00", key="k1"),
        ],
        "k2": [
            row(
                "2026-11-24",
                model="anthropic/claude-sonnet-4",
                provider="Anthropic",
                usage="2.00",
                byok="0.35",
                key="k2",
            )
        ],
    }
    rows = [r for rs in key_rows.values() for r in rs]
    return rows, key_rows


KEYS = [
    ApiKey("k1", "production", usage_daily=Decimal("1.5")),
    ApiKey("k2", "byok-anthropic", usage_daily=Decimal("0.25")),
]


def daily(previous_total_credits: Decimal | None = Decimal(50), **kw: Any) -> DailyDigest:
    rows, key_rows = sample_rows()
    args: dict[str, Any] = dict(
        as_of=AS_OF,
        rows=rows,
        key_rows=key_rows,
        key_names={"k1": "production", "k2": "byok-anthropic"},
        keys=KEYS,
        credits=CREDITS,
        previous_total_credits=previous_total_credits,
    )
    args.update(kw)
    return build_daily(DAY, **args)


def weekly(**kw: Any) -> WeeklyReport:
    rows, key_rows = sample_rows()
    args: dict[str, Any] = dict(
        as_of=AS_OF,
        rows=rows,
        key_rows=key_rows,
        key_names={"k1": "production", "k2": "byok-anthropic"},
        credits=CREDITS,
        previous_total_credits=Decimal(100),
    )
    args.update(kw)
    return build_weekly(DAY, **args)


def texts(blocks: list[dict[str, Any]]) -> list[str]:
    """Every text string in the blocks."""
    out: list[str] = []
    for b in blocks:
        if isinstance(b.get("text"), dict):
            out.append(b["text"]["text"])
        for f in b.get("fields", []):
            out.append(f["text"])
        for e in b.get("elements", []):
            if "text" in e:
                out.append(e["text"])
    return out


def alltext(blocks: list[dict[str, Any]]) -> str:
    return "\n".join(texts(blocks))


@pytest.fixture(scope="module")
def renderer() -> Renderer:
    return Renderer()


# --- daily Slack ------------------------------------------------------------------------------


def test_daily_slack_shows_spend_changes_today_so_far_and_credits(renderer: Renderer) -> None:
    msg = renderer.daily_slack(daily())
    assert msg.text == "OpenRouter spend Tue 2026-11-24 (UTC): $12.35 (+23.5% vs previous day)"
    assert msg.chart_png is None
    header = msg.blocks[0]
    assert header["type"] == "header"
    assert header["text"]["text"] == "OpenRouter spend · Tue 2026-11-24 (UTC)"
    lead = msg.blocks[1]["text"]["text"]
    # The number comes first; BYOK beside it; changes vs D-1 ($10) and vs the 7-day average ($2).
    assert lead.startswith("*$12.35* spent on Tue 2026-11-24 (incl. $0.35 BYOK)")
    assert "*+23.5%* vs previous day ($10.00)" in lead
    assert "*+517.5%* vs 7-day average ($2.00)" in lead
    text = alltext(msg.blocks)
    assert "*Today so far* (UTC, in progress)\n$1.75" in text
    assert "*Credits remaining*\n$60.00" in text
    # runway: $60 / ($22 of usage in 7 days / 7) = 19.09 days
    assert "*Runway*\n19.1 days at $3.14/day" in text
    assert "Credits added since the last digest: *$50.00*" in text
    assert "• openai/gpt-4o: *$10.00* · 0.0%" in text
    assert "• anthropic/claude-sonnet-4: *$2.35* (BYOK $0.35) · new" in text
    assert "• production: *$10.00* · 0.0%" in text
    assert "• byok-anthropic: *$2.35* (BYOK $0.35) · new" in text
    assert "*New models* (not used in the 7 days before)\nanthropic/claude-sonnet-4" in text
    assert "Tue 11-24  $12.35  ████████████████" in text
    assert "Tue 11-17   $4.00  █████" in text
    assert "```" in text
    assert msg.blocks[-1]["type"] == "context"
    assert msg.blocks[-1]["elements"][0]["text"].startswith(
        "Data as of 2026-11-25 09:30 UTC · days are UTC days · BYOK ="
    )


def test_daily_slack_without_byok_or_top_up(renderer: Renderer) -> None:
    rows = [row("2026-11-23", usage="1.00"), row("2026-11-24", usage="2.00")]
    d = build_daily(DAY, as_of=AS_OF, rows=rows, key_rows={}, key_names={}, keys=[], credits=None)
    msg = renderer.daily_slack(d)
    text = alltext(msg.blocks)
    assert "BYOK" not in text
    assert "Credits added" not in text
    assert "Credits remaining" not in text
    assert "Top API keys" not in text
    assert msg.text.endswith("$2.00 (+100.0% vs previous day)")


def test_no_credits_added_note_without_previous_snapshot(renderer: Renderer) -> None:
    msg = renderer.daily_slack(daily(previous_total_credits=None))
    assert "Credits added" not in alltext(msg.blocks)


def test_daily_slack_for_a_day_without_spend_says_no_spend(renderer: Renderer) -> None:
    d = daily(rows=[row("2026-11-23", usage="3.00")], key_rows={})
    assert d.empty
    msg = renderer.daily_slack(d)
    assert msg.text == "OpenRouter spend Tue 2026-11-24 (UTC): no spend"
    text = alltext(msg.blocks)
    assert "*No spend* on Tue 2026-11-24 (UTC). The day before: $3.00." in text
    assert "*Credits remaining*\n$60.00" in text
    assert "Top models" not in text
    assert msg.blocks[-1]["elements"][0]["text"].startswith("Data as of 2026-11-25 09:30 UTC")


def test_daily_slack_chart_when_asked(renderer: Renderer) -> None:
    msg = renderer.daily_slack(daily(), charts=True)
    assert msg.chart_png is not None and msg.chart_png.startswith(b"\x89PNG")
    assert "2026-11-24" in msg.chart_title


def test_ranking_ends_with_and_n_more(renderer: Renderer) -> None:
    rows = [row("2026-11-24", model=f"m/{i}", usage=str(i + 1)) for i in range(8)]
    d = daily(rows=rows, key_rows={}, top=3)
    text = alltext(renderer.daily_slack(d).blocks)
    assert "• m/7: *$8.00* · new\n• m/6: *$7.00* · new\n• m/5: *$6.00* · new\n_and 5 more_" in text


# --- weekly Slack -----------------------------------------------------------------------------


def test_weekly_slack_shows_the_week_the_month_projection_and_movers(renderer: Renderer) -> None:
    msg = renderer.weekly_slack(weekly(), charts=True)
    assert msg.text == (
        "OpenRouter spend 2026-11-18 to 2026-11-24 (UTC): $22.35 (+458.8% vs previous 7 days)"
    )
    assert msg.blocks[0]["text"]["text"] == "OpenRouter weekly · 2026-11-18 to 2026-11-24 (UTC)"
    text = alltext(msg.blocks)
    assert "*$22.35* spent in the 7 days (incl. $0.35 BYOK)" in text
    assert "*+458.8%* vs previous 7 days ($4.00)" in text
    # month to date: 4 + 10 + 12.35 = 26.35 over 24 days -> 26.35 / 24 * 30 = 32.94
    assert "*Month to date* (November 2026, 24 days)\n$26.35" in text
    assert "*Projected month end*\n$32.94" in text
    assert "• openai/gpt-4o: *$20.00* · +400.0%" in text
    assert "*Top movers (largest increases)*\n• openai/gpt-4o: *+$16.00* ($4.00 → $20.00" in text
    assert "Tue 11-17   $4.00  ░" in text
    assert "Tue 11-24  $12.35  █" in text
    assert "Credits added" not in text
    assert msg.chart_png is not None and msg.chart_png.startswith(b"\x89PNG")


def test_weekly_without_spend_says_no_spend_and_keeps_chart_and_csv(renderer: Renderer) -> None:
    w = weekly(rows=[], key_rows={}, credits=None)
    msg = renderer.weekly_slack(w, charts=True)
    assert msg.text == "OpenRouter spend 2026-11-18 to 2026-11-24 (UTC): no spend"
    assert "*No spend* in the 7 days 2026-11-18 to 2026-11-24 (UTC)." in alltext(msg.blocks)
    assert msg.chart_png is not None
    mail = renderer.weekly_email(w)
    assert mail.subject == "OpenRouter weekly report 2026-11-18 to 2026-11-24: no spend"
    assert mail.attachments[0][2] == CSV_HEADER


# --- escaping ---------------------------------------------------------------------------------


def evil_inputs() -> tuple[list[ActivityRow], dict[str, list[ActivityRow]], dict[str, str]]:
    key_rows: dict[str, list[ActivityRow]] = {}
    names: dict[str, str] = {}
    for i, name in enumerate(EVIL):
        key = f"hash{i}"
        names[key] = name
        key_rows[key] = [
            row("2026-11-24", model=name, provider=name, usage=f"{i + 1}.00", key=key),
            row("2026-11-17", model="plain/model", usage="1.00", key=key),
        ]
    rows = [r for rs in key_rows.values() for r in rs]
    return rows, key_rows, names


def test_slack_escapes_untrusted_names(renderer: Renderer) -> None:
    rows, key_rows, names = evil_inputs()
    d = daily(rows=rows, key_rows=key_rows, key_names=names, top=20)
    w = weekly(rows=rows, key_rows=key_rows, key_names=names, top=20)
    for msg in (renderer.daily_slack(d), renderer.weekly_slack(w)):
        raw = json.dumps(msg.blocks, ensure_ascii=False)
        text = alltext(msg.blocks)
        assert "&lt;!channel&gt;" in text
        assert "&lt;@U1&gt;" in text
        assert "&lt;https://evil.example|click&gt;" in text
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
        assert '"quotes"' in text
        assert "back\\slash" in text
        assert "new line" in text  # a newline in a name cannot start a fake line
        for s in ("<!channel>", "<@U1>", "<https://", "<script>"):
            assert s not in raw
        assert "<" not in text + msg.text
        assert all(
            e.get("verbatim") is True
            for b in msg.blocks
            if b["type"] in ("section", "context")
            for e in ([b["text"]] if "text" in b else []) + b.get("fields", [])
        )


def test_email_escapes_untrusted_names(renderer: Renderer) -> None:
    rows, key_rows, names = evil_inputs()
    d = daily(rows=rows, key_rows=key_rows, key_names=names, top=20)
    w = weekly(rows=rows, key_rows=key_rows, key_names=names, top=20)
    for msg in (renderer.daily_email(d), renderer.weekly_email(w)):
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in msg.html
        assert "<script" not in msg.html
        assert "&lt;!channel&gt;" in msg.html
        assert "<!channel>" not in msg.html
        assert '"quotes"' in msg.html  # harmless in a text node; css_inline writes it plainly
        assert "<script>alert(1)</script>" in msg.text  # plain text stays readable
        assert "\n" not in msg.subject


def test_mrkdwn_escape_escapes_ampersands_and_angle_brackets() -> None:
    assert mrkdwn_escape("a & <!here> <@U1|x>") == "a &amp; &lt;!here&gt; &lt;@U1|x&gt;"
    assert mrkdwn_escape("&lt;") == "&amp;lt;"


# --- Block Kit limits -------------------------------------------------------------------------


def big_org() -> tuple[list[ActivityRow], dict[str, list[ActivityRow]], dict[str, str]]:
    rows = [
        row(
            d,
            model=f"vendor-{i:03d}/a-rather-long-model-name-{i:03d}",
            provider=f"Provider {i:03d}",
            usage=f"{1 + i / 100:.2f}",
            byok="0.01" if i % 2 else "0",
        )
        for i in range(300)
        for d in ("2026-11-23", "2026-11-24")
    ]
    key_rows = {
        f"h{i:03d}": [row("2026-11-24", usage=f"{1 + i / 1000:.3f}", key=f"h{i:03d}")]
        for i in range(500)
    }
    names = {f"h{i:03d}": f"team-{i:03d}-service-key-with-a-long-name" for i in range(500)}
    return rows, key_rows, names


def check_limits(blocks: list[dict[str, Any]]) -> None:
    assert len(blocks) <= MAX_BLOCKS
    for b in blocks:
        if b["type"] == "header":
            assert len(b["text"]["text"]) <= 150
        if b["type"] == "section":
            if "text" in b:
                assert 0 < len(b["text"]["text"]) <= 3000
            assert len(b.get("fields", [])) <= 10
            assert all(len(f["text"]) <= 2000 for f in b.get("fields", []))
        if b["type"] == "context":
            assert len(b["elements"]) <= 10


def test_large_org_fits_slack_limits(renderer: Renderer) -> None:
    rows, key_rows, names = big_org()
    d = daily(rows=rows, key_rows=key_rows, key_names=names, top=1000)
    w = weekly(rows=rows, key_rows=key_rows, key_names=names, top=1000)
    for msg, model_title in (
        (renderer.daily_slack(d), "*Top models*"),
        (renderer.weekly_slack(w), "*Models*"),
    ):
        check_limits(msg.blocks)
        sections = {t.split("\n", 1)[0]: t for t in texts(msg.blocks)}
        models = next(t for head, t in sections.items() if head.startswith(model_title))
        shown = models.count("\n• ")
        more = re.search(r"_and (\d+) more_$", models)
        assert more is not None and shown > 5
        assert shown + int(more.group(1)) == 300  # every model is accounted for
        keys = next(t for head, t in sections.items() if "API keys" in head)
        more_keys = re.search(r"_and (\d+) more_$", keys)
        assert more_keys is not None
        assert keys.count("\n• ") + int(more_keys.group(1)) == 500


def test_fit_slack_limits_cuts_texts_and_blocks() -> None:
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": "H" * 300}},
        {"type": "section", "text": {"type": "mrkdwn", "text": "```\n" + "x" * 5000 + "\n```"}},
        {
            "type": "section",
            "fields": [{"type": "mrkdwn", "text": "f" * 2500} for _ in range(12)],
        },
        {"type": "context", "elements": [{"type": "mrkdwn", "text": "c"} for _ in range(15)]},
    ]
    blocks += [{"type": "section", "text": {"type": "mrkdwn", "text": "line\n" * 700}}] * 60
    blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": "as of"}]})
    out = fit_slack_limits(blocks)
    check_limits(out)
    assert len(out) == MAX_BLOCKS
    assert out[0]["text"]["text"].endswith("…")
    code = out[1]["text"]["text"]
    assert code.endswith("…\n```") and code.count("```") == 2
    assert out[2]["fields"][-1]["text"] == "_and 3 more_"
    assert out[3]["elements"][-1]["text"] == "_and 6 more_"
    assert out[4]["text"]["text"].endswith("line\n…")
    assert out[-1]["elements"][0]["text"] == "as of"  # the as-of line survives
    assert out[-2]["elements"][0]["text"] == "_and 16 more parts not shown (Slack message limit)_"
    assert fit_slack_limits(blocks[:3])[2]["fields"][0]["text"].endswith("…")
    assert blocks[0]["text"]["text"] == "H" * 300  # the input is not modified


def test_fit_never_leaves_half_an_entity() -> None:
    text = "a" * 2990 + "&lt;!channel&gt;" * 3
    out = fit_slack_limits([{"type": "section", "text": {"type": "mrkdwn", "text": text}}])
    cut = out[0]["text"]["text"]
    assert len(cut) <= 3000 and cut.endswith("…")
    assert re.search(r"&[a-z]*…$", cut) is None


# --- e-mail -----------------------------------------------------------------------------------


def test_weekly_email_has_inlined_css_a_chart_month_figures_and_the_csv(renderer: Renderer) -> None:
    w = weekly()
    msg = renderer.weekly_email(w)
    assert msg.subject == "OpenRouter weekly report 2026-11-18 to 2026-11-24: $22.35 (+458.8%)"
    assert 'src="cid:chart"' in msg.html
    assert msg.inline_images["chart"].startswith(b"\x89PNG")
    assert re.search(r"<td[^>]*style=\"", msg.html)  # CSS got inlined
    assert ".kpi-label {" not in msg.html  # rules moved into style="" (only @media stays)
    assert "max-width: 640px" in msg.html
    assert "Figures are per UTC day, as of 2026-11-25 09:30 UTC." in msg.html
    assert "BYOK = inference billed by providers on your own keys." in msg.html
    assert "$26.35" in msg.html and "$32.94" in msg.html
    assert 'class="up"' in msg.html  # coloured, and the sign is in the text too
    assert "+458.8%" in msg.html
    [(name, mime, data)] = msg.attachments
    assert name == "openrouter-usage-2026-11-18-to-2026-11-24.csv"
    assert mime == "text/csv"
    parsed = list(csv.DictReader(io.StringIO(data.decode("utf-8"))))
    assert [(p["date"], p["model"], Decimal(p["cost"])) for p in parsed] == [
        (r.date.isoformat(), r.model, r.cost) for r in w.rows
    ]
    assert len(parsed) == 3
    assert "OpenRouter weekly report, Wed 2026-11-18 to Tue 2026-11-24 (UTC)" in msg.text
    assert "Projected month end: $32.94" in msg.text


def test_daily_email_has_a_chart_byok_changes_and_per_day_figures(renderer: Renderer) -> None:
    msg = renderer.daily_email(daily())
    assert msg.subject == "OpenRouter spend Tue 2026-11-24 (UTC): $12.35 (+23.5% vs previous day)"
    assert 'src="cid:chart"' in msg.html and 'alt="Daily spend chart"' in msg.html
    assert set(msg.inline_images) == {"chart"}
    assert msg.attachments == []
    assert "Credits added since the last digest" in msg.html
    assert "incl. $0.35 BYOK" in msg.html
    assert "Spend: $12.35 (incl. $0.35 BYOK)" in msg.text
    assert "+23.5% vs previous day ($10.00)" in msg.text
    # the per-day figures under the chart, for clients that block images
    assert "$12.35</td>" in msg.html and "$4.00</td>" in msg.html


def test_daily_email_for_a_day_without_spend_says_no_spend(renderer: Renderer) -> None:
    msg = renderer.daily_email(daily(rows=[], key_rows={}))
    assert msg.subject == "OpenRouter spend Tue 2026-11-24 (UTC): no spend"
    assert "No spend" in msg.html and "No spend on Tue 2026-11-24." in msg.text


# --- user templates and the generic entry points ----------------------------------------------


def test_user_template_overrides_bundled(tmp_path: Path) -> None:
    (tmp_path / "slack").mkdir()
    (tmp_path / "slack" / "daily.txt.j2").write_text("custom {{ d.spend.cost | money }}\n")
    msg = Renderer(tmp_path).daily_slack(daily())
    assert msg.text == "custom $12.35"
    assert msg.blocks[0]["type"] == "header"  # the JSON still comes from the bundled template


def test_user_templates_render_escaped_slack_and_email_messages(tmp_path: Path) -> None:
    (tmp_path / "slack").mkdir()
    (tmp_path / "email").mkdir()
    (tmp_path / "slack" / "ping.json.j2").write_text(
        '{"blocks": [{"type": "section", "text": {"type": "mrkdwn", '
        '"text": {{ ("*" ~ (name | mrkdwn) ~ "* " ~ (amount | money)) | tojson }}}}]}'
    )
    (tmp_path / "slack" / "ping.txt.j2").write_text("ping {{ name | mrkdwn }}\n")
    (tmp_path / "email" / "ping.html.j2").write_text(
        '{% extends "email/_base.html.j2" %}'
        "{% block subject %}Ping {{ name }}{% endblock %}"
        '{% block content %}<tr><td class="pad">{{ name }}</td></tr>{% endblock %}'
    )
    (tmp_path / "email" / "ping.txt.j2").write_text("Ping {{ name }}\n")
    (tmp_path / "email" / "plain.html.j2").write_text("<p>{{ name }}</p>")
    (tmp_path / "email" / "plain.txt.j2").write_text("{{ name }}")
    r = Renderer(tmp_path)
    msg = r.slack("ping", name="<!here> & co", amount=Decimal("0.004"))
    assert msg.blocks[0]["text"]["text"] == "*&lt;!here&gt; &amp; co* <$0.01"
    assert msg.text == "ping &lt;!here&gt; &amp; co"
    mail = r.email("ping", name='A & "B" <x>', as_of=AS_OF)
    assert mail.subject == 'Ping A & "B" <x>'  # the <title>, unescaped to plain text
    assert 'A &amp; "B" &lt;x&gt;' in mail.html
    assert "Data as of 2026-11-25 09:30 UTC." in mail.html
    assert mail.text == 'Ping A & "B" <x>\n'
    plain = r.email("plain", name="x", subject="Line one\nline two")
    assert plain.subject == "Line one line two"
    with pytest.raises(ConfigError, match="plain.html.j2: sets no <title> and no subject"):
        r.email("plain", name="x")


def test_invalid_json_template_is_a_config_error_naming_the_file(tmp_path: Path) -> None:
    (tmp_path / "slack").mkdir()
    (tmp_path / "slack" / "bad.json.j2").write_text('{"blocks": [{{ name }}]}')
    (tmp_path / "slack" / "bad.txt.j2").write_text("x")
    with pytest.raises(ConfigError, match=re.escape(
            f"template {tmp_path / 'slack' / 'bad.json.j2'}: did not render valid JSON")):
        Renderer(tmp_path).slack("bad", name="oops")


def test_undefined_variable_is_one_line_naming_the_template_and_line(tmp_path: Path) -> None:
    (tmp_path / "slack").mkdir()
    (tmp_path / "slack" / "daily.txt.j2").write_text("line one\n{{ nope }}")
    with pytest.raises(ConfigError) as err:
        Renderer(tmp_path).daily_slack(daily())
    assert str(err.value) == (
        f"template {tmp_path / 'slack' / 'daily.txt.j2'}:2: 'nope' is undefined")


def test_syntax_error_in_a_user_template_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "email").mkdir()
    (tmp_path / "email" / "daily.html.j2").write_text("<p>\n{% if d.empty %}\n</p>")
    with pytest.raises(ConfigError) as err:
        Renderer(tmp_path).daily_email(daily())
    message = str(err.value)
    assert message.startswith(f"template {tmp_path / 'email' / 'daily.html.j2'}:")
    assert "\n" not in message and "endif" in message


def test_error_in_an_imported_macro_names_the_macro_file(tmp_path: Path) -> None:
    (tmp_path / "slack").mkdir()
    (tmp_path / "slack" / "_blocks.j2").write_text(
        "{% macro header(text) %}{{ text | money }}{% endmacro %}")
    where = tmp_path / "slack" / "_blocks.j2"
    with pytest.raises(ConfigError, match=re.escape(f"template {where}:1: ")):
        Renderer(tmp_path).daily_slack(daily())


def test_missing_templates_dir_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="templates_dir: .*nowhere is not a folder"):
        Renderer(tmp_path / "nowhere")


# --- alerts: numbers from the rules, words from _alert_words.j2 --------------------------------


def alert_obs(rule: Any, remaining: str = "40", rows: Any = (), keys: Any = (),
              burn: Any = None) -> Any:
    from bot.compute.alert_rules import Inputs, evaluate

    credits = Credits(Decimal(1000), 1000 - Decimal(remaining))
    data = Inputs(as_of=AS_OF, day=DAY, credits=credits, keys=list(keys), rows=list(rows),
                  burn=burn)
    [obs] = evaluate(rule, data, Decimal("0.05"))[:1]
    return obs


def limited_key(name: str, reset: str | None = None) -> ApiKey:
    return ApiKey("hash-0123456789abcdef", name, limit=Decimal(100),
                  limit_remaining=Decimal(5), limit_reset=reset)


def alert_cases() -> list[tuple[Any, tuple[str, ...]]]:
    from bot.config import AlertRule

    D = Decimal
    week = [row(f"2026-11-{d:02d}", usage="10") for d in range(17, 24)]
    return [
        (alert_obs(AlertRule(kind="low_credits", index=0, below_usd=D("50.5"),
                             below_percent=D(10))),
         ("Low credits", "credits", "$40.00 (4.0%)",
          "$50.50 or 10% of $1,000.00 purchased", "OpenRouter credits are low: $40.00 left",
          "Add credits at https://openrouter.ai/settings/credits before requests start failing.",
          "https://openrouter.ai/settings/credits")),
        (alert_obs(AlertRule(kind="runway", index=0, below_days=D("7.5")), remaining="60",
                   rows=[row(f"2026-11-{d:02d}", usage="10") for d in range(18, 25)]),
         ("Credits runway", "runway", "6.0 days", "7.5 days",
          "Credits run out in 6.0 days at the last 7 days' pace",
          "Add credits at https://openrouter.ai/settings/credits or cut spend; see "
          "https://openrouter.ai/activity.", "https://openrouter.ai/settings/credits")),
        (alert_obs(AlertRule(kind="daily_spend", index=0, above_usd=D(100)),
                   keys=[ApiKey("h", "k", usage_daily=D(101))]),
         ("Daily spend", "today's spend", "$101.00", "$100.00",
          "Spend today (UTC) is $101.00, above $100.00",
          "See which keys and models are spending at https://openrouter.ai/activity.",
          "https://openrouter.ai/activity")),
        (alert_obs(AlertRule(kind="spike", index=0, factor=D(2), min_usd=D(20), baseline="7d"),
                   rows=week + [row("2026-11-24", usage="25")]),
         ("Spend spike", "spend on 2026-11-24", "$25.00",
          "2x the 7-day average ($10.00) and $20.00",
          "Spend spiked on 2026-11-24 (UTC): $25.00, +150.0% against the 7-day average",
          "Run `openrouter-usage report --date 2026-11-24 --by-key` to see which keys and "
          "models caused it.", "https://openrouter.ai/activity")),
        (alert_obs(AlertRule(kind="key_limit", index=0, below_percent=D(10)),
                   keys=[limited_key("prod", reset="monthly")]),
         ("Key limit: prod", "prod", "$5.00 of $100.00 (5.0%)", "10%",
          "API key prod has 5.0% of its limit left",
          "Raise the key's limit at https://openrouter.ai/settings/keys or expect its requests "
          "to fail (limit resets monthly).", "https://openrouter.ai/settings/keys")),
        (alert_obs(AlertRule(kind="model_spend", index=0, above_usd=D(50)),
                   rows=[row("2026-11-24", model="vendor/model", usage="60")]),
         ("Model spend: vendor/model", "vendor/model", "$60.00", "$50.00",
          "vendor/model cost $60.00 on 2026-11-24 (UTC)",
          "Check which keys use vendor/model: `openrouter-usage report --date 2026-11-24 "
          "--by-key`.", "https://openrouter.ai/activity")),
        (alert_obs(AlertRule(kind="budget", index=0, amount_usd=D(1000), notify_at=(D(50),)),
                   rows=[row(f"2026-11-{d:02d}", usage="25") for d in range(1, 25)],
                   keys=[ApiKey("h", "k", usage_daily=D(20))]),
         ("Budget: the account, November 2026 (UTC)", "the account", "$620.00 of $1,000.00 "
          "(62.0%)", "50% of $1,000.00", "The account has spent 62.0% of its $1,000.00 monthly "
          "budget: $620.00 in November 2026 (UTC)", "See what drives it with `openrouter-usage "
          "report --from 2026-11-01 --by-key`; slow the spend or raise the budget.",
          "https://openrouter.ai/activity")),
        (alert_obs(AlertRule(kind="burn_rate", index=0, above_usd_per_hour=D(50)),
                   keys=[ApiKey("h", "k", usage_daily=D(30))], burn=burning()),
         ("Burn rate", "the account", "$60.00 an hour", "$50.00 an hour",
          "The account is spending $60.00 an hour: $15.00 in the 15 min to 2026-11-25 09:30 UTC",
          "See which keys and models are spending at https://openrouter.ai/activity; a runaway "
          "key can be disabled at https://openrouter.ai/settings/keys.",
          "https://openrouter.ai/activity")),
    ]


def burning() -> Any:
    from bot.compute.burn import BurnState, Sample

    state = BurnState()
    for minutes, spent in ((30, "0"), (15, "15"), (0, "30")):
        state.advance(Sample(AS_OF - dt.timedelta(minutes=minutes), {"h": Decimal(spent)}),
                      keep=dt.timedelta(minutes=15))
    return state


def test_alert_words_of_every_kind(renderer: Renderer) -> None:
    from bot.compute.alert_rules import RULES

    cases = alert_cases()
    assert {obs.rule.kind for obs, _ in cases} == set(RULES)
    for obs, expected in cases:
        w = renderer.alert_words(obs)
        assert (w.title, w.subject, w.value, w.threshold, w.summary, w.advice, w.link) == expected
        assert w.note == ""


def test_alert_words_when_the_subject_went_away(renderer: Renderer) -> None:
    from bot.compute.alert_rules import gone
    from bot.config import AlertRule

    key_rule = AlertRule(kind="key_limit", index=0, below_percent=Decimal(10))
    w = renderer.alert_words(gone(key_rule, "0123456789abcdef0123", ""))
    assert (w.title, w.value, w.threshold, w.advice, w.link) == (
        "Key limit: 0123456789ab", "no longer observed", "", "Nothing to do.", "")
    assert w.note == "the key is disabled, deleted or no longer has a limit"
    model_rule = AlertRule(kind="model_spend", index=0, above_usd=Decimal(1))
    w = renderer.alert_words(gone(model_rule, "vendor/a-long-model-name", ""))
    assert w.title == "Model spend: vendor/a-long-model-name"
    assert w.note == "the model was not used on the latest day"


def alert_event(action: str = "fire", name: str = "<!channel> & <b>co</b>") -> Any:
    from bot.config import AlertRule
    from bot.jobs.alerts import Event
    from bot.models import AlertState

    obs = alert_obs(AlertRule(kind="key_limit", index=0, below_percent=Decimal(10)),
                    keys=[limited_key(name)])
    state = AlertState("key_limit#0", obs.subject, "firing", "5", AS_OF, AS_OF, {})
    return Event(action, obs, state)


def test_alert_in_slack_and_email_escapes_key_names(renderer: Renderer) -> None:
    from bot.jobs.alerts import render
    from bot.models import Destination

    ops, mail_to = Destination.parse("slack:#ops"), Destination.parse("email:ops@example.com")

    for action in ("fire", "repeat", "resolve"):
        slack = render(renderer, alert_event(action), ops, dt.timedelta(hours=24))
        raw = json.dumps(slack.blocks, ensure_ascii=False) + slack.text
        assert "&lt;!channel&gt; &amp; &lt;b&gt;co&lt;/b&gt;" in raw
        assert "<!channel>" not in raw and "<b>" not in raw
        mail = render(renderer, alert_event(action), mail_to,
                      dt.timedelta(hours=24))
        assert "&lt;!channel&gt; &amp; &lt;b&gt;co&lt;/b&gt;" in mail.html
        assert "<b>co" not in mail.html and "<!channel>" not in mail.html
        assert "<!channel> & <b>co</b>" in mail.text  # plain text stays readable
    fired = render(renderer, alert_event("fire"), ops, dt.timedelta(hours=24))
    assert fired.blocks[0]["text"]["text"] == ":rotating_light: Alert: Key limit"
    assert fired.text == "Alert: API key &lt;!channel&gt; &amp; &lt;b&gt;co&lt;/b&gt; has 5.0% " \
        "of its limit left"
    mail = render(renderer, alert_event("fire", name="prod"), mail_to,
                  dt.timedelta(hours=24))
    assert mail.subject == "Alert: API key prod has 5.0% of its limit left"
    assert "Threshold:    10%" in mail.text
    assert "https://openrouter.ai/settings/keys" in mail.html


def test_user_template_can_reword_an_alert(tmp_path: Path) -> None:
    from bot.jobs.alerts import render
    from bot.models import Destination

    (tmp_path / "_alert_words.j2").write_text(
        (Path(__file__).parent.parent / "templates" / "_alert_words.j2").read_text()
        .replace("Key limit", "Schlüssellimit"))
    msg = render(Renderer(tmp_path), alert_event(name="prod"), Destination.parse("slack:#ops"),
                 dt.timedelta(hours=24))
    assert msg.blocks[0]["text"]["text"] == ":rotating_light: Alert: Schlüssellimit"
