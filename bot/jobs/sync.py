"""The `sync` pipeline: fetch credits, activity (org-wide and per key) and keys into history."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from bot.models import Snapshot

if TYPE_CHECKING:
    from bot.openrouter import OpenRouterClient
    from bot.store import Store, SyncStats


@dataclass
class SyncResult:
    snapshot: Snapshot
    stats: SyncStats

    def summary(self) -> str:
        s = self.stats
        return (
            f"Synced as of {self.snapshot.as_of:%Y-%m-%d %H:%M} UTC: "
            f"{len(self.snapshot.activity)} org rows and "
            f"{sum(len(r) for r in self.snapshot.key_activity.values())} per-key rows fetched "
            f"({s.activity_new} new, {s.activity_updated} updated), "
            f"{len(self.snapshot.keys)} keys, credits "
            f"{'recorded' if s.credits_new else 'unchanged'}."
        )


def run_sync(
    client: OpenRouterClient,
    store: Store,
    *,
    now: dt.datetime,
    progress: Callable[[int, int], None] | None = None,
) -> SyncResult:
    snap = client.snapshot(now=now, credits=True, keys=True, per_key=True, progress=progress)
    return SyncResult(snap, store.save_snapshot(snap))
