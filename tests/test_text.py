"""The one redactor and the one line-cutter every layer uses for text that may reach a user."""

from __future__ import annotations

from bot.text import one_line, redact


def test_redact_replaces_known_secrets_and_secret_shapes() -> None:
    text = ("key sk-or-v1-abcdef0123456789 token xoxb-1-2-abc url https://hooks.slack.com/"
            "services/T/B/x password hunter2-long")
    out = redact(text, ["hunter2-long", None, ""])
    assert "abcdef0123" not in out and "xoxb-1" not in out and "services/T" not in out
    assert "hunter2-long" not in out
    assert out == ("key sk-or-*** token xox*-*** url https://hooks.slack.com/*** "
                   "password ***")


def test_redact_leaves_short_values_alone() -> None:
    # a five-character "secret" would blank out ordinary words
    assert redact("the abc12 value", ["abc12"]) == "the abc12 value"


def test_one_line_collapses_whitespace_and_cuts_with_an_ellipsis() -> None:
    assert one_line("  a\n\tb   c \r\n") == "a b c"
    cut = one_line("x" * 500, 200)
    assert len(cut) == 200 and cut.endswith("…")
    assert one_line("y" * 200, 200) == "y" * 200


def test_redact_matches_repr_json_and_url_encoded_forms() -> None:
    import json
    from urllib.parse import quote, quote_plus

    secret = "pa ss/wörd&x=\n"
    text = " | ".join([secret, repr(secret), repr(secret.encode()), json.dumps(secret),
                       quote(secret, safe=""), quote_plus(secret), secret.strip()])
    out = redact(text, [secret])
    for form in ("pa ss", "pa%20ss", "pa+ss", "w\\xc3\\xb6rd", "w\\u00f6rd", "wörd"):
        assert form not in out, form


def test_csv_text_neutralises_formula_starts_only() -> None:
    from bot.text import csv_text

    assert [csv_text(v) for v in ("=1+1", "+1", "-1", "@A1", "\tx", "\r=x", "gpt-4o", "a=b")] \
        == ["'=1+1", "'+1", "'-1", "'@A1", "'\tx", "'=x", "gpt-4o", "a=b"]


def test_strip_controls_keeps_text_newlines_and_tabs() -> None:
    from bot.text import strip_controls

    assert strip_controls("a\x1b[2Jb\x9b\u202ec\x07\td\ne\r") == "a[2Jbc\td\ne"
