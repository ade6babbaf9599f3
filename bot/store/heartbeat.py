"""Keeps a run's leases and delivery claims alive from a background thread while it works.

A lease or a claim that is not renewed goes stale (its holder is taken to have died) and
another run may take over. A run that is merely slow (a long Retry-After, a slow SMTP
server) renews them every `every` seconds from a helper thread, on a connection of its own,
so staleness counts from the last heartbeat and not from when the work began. After
`max_hold` the heartbeat stops renewing: a wedged run lets go in the end.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Callable, Mapping

from bot.errors import BotError
from bot.store import Store, connect

log = logging.getLogger(__name__)

MAX_HOLD = dt.timedelta(minutes=30)


class Heartbeat:
    """Renews `holder`'s `leases` (name -> ttl) and its claims on 'sending' deliveries."""

    def __init__(
        self,
        store: Store,
        holder: str,
        clock: Callable[[], dt.datetime],
        *,
        every: float = 30.0,
        leases: Mapping[str, dt.timedelta] | None = None,
        max_hold: dt.timedelta = MAX_HOLD,
    ) -> None:
        self.store = store
        self.holder = holder
        self.clock = clock
        self.every = every
        self.leases = dict(leases or {})
        self.max_hold = max_hold
        self.beats = 0
        self._started = clock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._gave_up = False

    def beat(self, store: Store | None = None) -> bool:
        """Renew everything once (on `store`, default the run's own); False once `max_hold`
        has passed and nothing is renewed any more."""
        now = self.clock()
        if now - self._started > self.max_hold:
            if not self._gave_up:
                self._gave_up = True
                log.error("%s has held its leases and claims for over %s: no longer renewing "
                          "them, so another run can take over", self.holder, self.max_hold)
            return False
        target = store or self.store
        for name, ttl in self.leases.items():
            if not target.lease_renew(name, self.holder, now, ttl):
                log.warning("lease %s is no longer held by %s", name, self.holder)
        target.outbox_heartbeat(self.holder, now)
        self.beats += 1
        return True

    def _run(self, location: str) -> None:
        store: Store | None = None
        try:
            while not self._stop.wait(self.every):
                try:
                    if store is None:  # connect only once the work outlasts one interval
                        store = Store(connect(location))
                    if not self.beat(store):
                        return
                except BotError as exc:  # a busy database: the next beat tries again
                    log.warning("heartbeat of %s failed: %s", self.holder, exc)
        finally:
            if store is not None:
                store.conn.close()

    def __enter__(self) -> Heartbeat:
        location = self.store.location()
        if location is not None:  # an in-memory database is seen by this run alone
            self._thread = threading.Thread(
                target=self._run, args=(location,), name="heartbeat", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
