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
