"""The `sync` pipeline: credits, keys (every workspace), activity (org-wide and per key, streamed
into history as it arrives)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from bot.models import ActivityRow, ApiKey, Snapshot

if TYPE_CHECKING:
    from bot.openrouter import OpenRouterClient
    from bot.store import Store, SyncStats


@dataclass
class SyncResult:
    snapshot: Snapshot
    stats: SyncStats
    key_rows: int = 0  # per-key rows fetched (they went to history as they arrived)

    def summary(self) -> str:
        s = self.stats
        snap = self.snapshot
        spaces = f" in {len(snap.workspaces)} workspaces" if snap.workspaces else ""
        return (
            f"Synced as of {snap.as_of:%Y-%m-%d %H:%M} UTC: "
            f"{len(snap.activity)} org rows and {self.key_rows} per-key rows fetched "
            f"({s.activity_new} new, {s.activity_updated} updated), "
            f"{len(snap.keys)} keys{spaces}, credits "
            f"{'recorded' if s.credits_new else 'unchanged'}."
        )


def run_sync(
    client: OpenRouterClient,
    store: Store,
    *,
    now: dt.datetime,
    progress: Callable[[int, int], None] | None = None,
) -> SyncResult:
    from bot.store import activity_window

    client.check_key()  # before anything is fetched or stored
    first, last = activity_window(now)
    batch = store.usage_batch(now)
    fetched = 0

    def keep(key: ApiKey, rows: list[ActivityRow]) -> None:
        nonlocal fetched
        fetched += len(rows)
        batch.key_activity(key.hash, rows, first, last)

    snap = client.snapshot(
        now=now, credits=True, keys=True, per_key=True, progress=progress, on_key_rows=keep
    )
    batch.flush()
    stats = store.save_snapshot(snap)
    stats.add(batch.stats)
    return SyncResult(snap, stats, fetched)
