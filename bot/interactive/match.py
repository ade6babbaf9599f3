"""Forgiving name matching for the slash command: case-insensitive, exact before prefix before
substring, with near misses suggested. Several different names are shown, never guessed."""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")

_SPACES = re.compile(r"\s+")
_BOUNDARY = re.compile(r"[/\-_:. ]")


def norm(text: str) -> str:
    return _SPACES.sub(" ", text).strip().casefold()


def _word_prefix(name: str, query: str) -> bool:
    """`query` starts `name` or one of its parts (after `/`, `-`, `_`, `:`, `.` or a space)."""
    if name.startswith(query):
        return True
    return any(name.startswith(query, m.end()) for m in _BOUNDARY.finditer(name))


@dataclass(frozen=True)
class Match(Generic[T]):
    """Items named by the query (several only when they share that name: shown apart), or the
    different names it could mean, or suggestions when nothing matched."""

    found: list[T] = field(default_factory=list)
    ambiguous: list[str] = field(default_factory=list)
    suggestions: list[str] = field(default_factory=list)


def match(query: str, items: Sequence[T], name: Callable[[T], str]) -> Match[T]:
    q = norm(query)
    if not q:
        return Match()
    named = [(norm(name(item)), item) for item in items]
    tiers: list[Callable[[str], bool]] = [
        lambda n: n == q,
        lambda n: _word_prefix(n, q),
        lambda n: q in n,
    ]
    for test in tiers:
        hits = [(n, item) for n, item in named if test(n)]
        if not hits:
            continue
        names = sorted({n for n, _ in hits})
        if len(names) == 1:
            return Match(found=[item for _, item in hits])
        shown: dict[str, str] = {}
        for n, item in hits:
            shown.setdefault(n, name(item))
        return Match(ambiguous=[shown[n] for n in names])
    by_norm: dict[str, str] = {}
    for n, item in named:
        by_norm.setdefault(n, name(item))
    close = difflib.get_close_matches(q, list(by_norm), n=5, cutoff=0.6)
    return Match(suggestions=[by_norm[n] for n in close])
