"""Text safety for every layer: the one redactor of secrets and the one line-cutter."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable

MIN_SECRET = 6  # shorter values are too likely to occur by chance to be replaced

# secrets recognised by their shape, even when this run does not know their value
_SHAPES = (
    (re.compile(r"xox[a-z]-[A-Za-z0-9-]+"), "xox*-***"),  # Slack tokens
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


def one_line(text: str, limit: int = 300) -> str:
    """`text` on one line (whitespace runs become one space), cut to `limit` characters."""
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"
