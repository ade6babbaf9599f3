"""Pure rules for acknowledged and snoozed alerts: which notifications people silenced.

An acknowledgement holds back the repeats of one firing episode (the alert's ``since``) until it
resolves; a new episode notifies again. A snooze holds back every new alert and repeat of that
rule and subject until it ends. Neither ever holds back a resolution.
"""

from __future__ import annotations

import datetime as dt
from typing import Literal

from bot.models import Silence

Held = Literal["snoozed", "acknowledged"]


def snoozed(silence: Silence | None, now: dt.datetime) -> bool:
    return bool(silence and silence.snoozed_until and now < silence.snoozed_until)


def acknowledged(silence: Silence | None, since: dt.datetime | None) -> bool:
    """Whether the episode that started at `since` was acknowledged."""
    return bool(silence and since is not None and silence.acked_since == since)


def held(
    silence: Silence | None, action: str, since: dt.datetime | None, now: dt.datetime
) -> Held | None:
    """Why the notification `action` ("fire", "repeat", "resolve") of the alert whose current
    episode started at `since` is held back, or None when it goes out."""
    if action == "resolve":
        return None
    if snoozed(silence, now):
        return "snoozed"
    if action == "repeat" and acknowledged(silence, since):
        return "acknowledged"
    return None
