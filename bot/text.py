"""Text safety for every layer: the one redactor of secrets, the one line-cutter, and what
untrusted names lose before a terminal or a spreadsheet sees them."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable

MIN_SECRET = 6  # shorter values are too likely to occur by chance to be replaced

# secrets recognised by their shape, even when this run does not know their value
_SHAPES = (
    (re.compile(r"xox[a-z]-[A-Za-z0-9-]+"), "xox*-***"),  # Slack tokens
    (re.compile(r"xapp-[A-Za-z0-9-]+"), "xapp-***"),  # Slack app-level tokens
    (re.compile(r"hooks\.slack\.com/\S+"), "hooks.slack.com/***"),  # Slack webhook paths
    (re.compile(r"sk-or-[A-Za-z0-9-]{8,}"), "sk-or-***"),  # OpenRouter keys
)


def secret_forms(secret: str) -> list[str]:
    """The ways `secret` can appear in text: as is, without the whitespace around it,
    `repr`-escaped (as str and as bytes, which is how httpx quotes an illegal header), JSON-
    escaped and URL-encoded; longest first, so a longer form is replaced whole."""
    from urllib.parse import quote, quote_plus

    core = secret.strip()
    forms = {secret, core}
    for value in (secret, core):
        forms |= {
            repr(value)[1:-1],
            repr(value.encode("utf-8"))[2:-1],
            json.dumps(value)[1:-1],
            json.dumps(value, ensure_ascii=False)[1:-1],
            quote(value, safe=""),
            quote_plus(value, safe=""),
        }
    return sorted((f for f in forms if len(f) >= MIN_SECRET), key=len, reverse=True)


def redact(text: str, secrets: Iterable[str | None] = ()) -> str:
    """`text` with every known secret value (in any of its :func:`secret_forms`), and anything
    shaped like a Slack token, a Slack webhook path or an OpenRouter key, replaced by `***`."""
    for secret in secrets:
        if secret and len(secret.strip()) >= MIN_SECRET:
            for form in secret_forms(secret):
                text = text.replace(form, "***")
    for shape, replacement in _SHAPES:
        text = shape.sub(replacement, text)
    return text


# What moves a terminal's cursor, recolours or rewrites it (C0 but tab and newline, DEL, C1),
# or reorders text (bidirectional overrides): never passed on from untrusted text.
_CONTROLS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")
# A spreadsheet runs a cell starting with one of these as a formula (the OWASP list).
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def strip_controls(text: str) -> str:
    """`text` without control characters (tab and newline kept) and bidirectional overrides:
    an API name such as "\x1b[2J" can no longer clear a terminal or rewrite a line."""
    return _CONTROLS.sub("", text)


def one_line(text: str, limit: int = 300) -> str:
    """`text` on one line (whitespace runs become one space, control characters go), cut to
    `limit` characters."""
    line = " ".join(strip_controls(text).split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def json_controls_escaped(document: str) -> str:
    """A JSON document with the control characters json.dumps(ensure_ascii=False) leaves raw
    (C1, bidirectional overrides) written as \\u escapes: the same data, safe on a terminal."""
    return _CONTROLS.sub(lambda m: f"\\u{ord(m.group()):04x}", document)


def csv_text(value: str) -> str:
    """An untrusted text cell for CSV: control characters removed and, when it starts like a
    formula (`=`, `+`, `-`, `@`, tab, CR), a leading `'` so a spreadsheet shows it as text.
    Numbers are written as numbers and never pass here: `-1.5` is data, not a formula."""
    text = strip_controls(value)
    return "'" + text if text.startswith(_FORMULA_START) else text
