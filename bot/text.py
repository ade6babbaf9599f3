"""Text safety for every layer: the one redactor of secrets and the one line-cutter."""

from __future__ import annotations

import re
from collections.abc import Iterable

MIN_SECRET = 6  # shorter values are too likely to occur by chance to be replaced

# secrets recognised by their shape, even when this run does not know their value
_SHAPES = (
    (re.compile(r"xox[a-z]-[A-Za-z0-9-]+"), "xox*-***"),  # Slack tokens
    (re.compile(r"hooks\.slack\.com/\S+"), "hooks.slack.com/***"),  # Slack webhook paths
    (re.compile(r"sk-or-[A-Za-z0-9-]{8,}"), "sk-or-***"),  # OpenRouter keys
)


def redact(text: str, secrets: Iterable[str | None] = ()) -> str:
    """`text` with every known secret value, and anything shaped like a Slack token, a Slack
    webhook path or an OpenRouter key, replaced by `***`."""
    for secret in secrets:
        if secret and len(secret) >= MIN_SECRET:
            text = text.replace(secret, "***")
    for shape, replacement in _SHAPES:
        text = shape.sub(replacement, text)
    return text


def one_line(text: str, limit: int = 300) -> str:
    """`text` on one line (whitespace runs become one space), cut to `limit` characters."""
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"
