"""The periodic window task: open the current window, close the ones past end plus grace,
release each closed window's release plan, purge exact statistics past retention, and retry
pending shreds (chorus.server.domain.shred).

The plan is released after the close has committed, from the windows whose plan is not marked
complete: a crash between the two is completed by the next tick, on any replica."""

from __future__ import annotations

import logging
import threading
from datetime import datetime
from functools import partial

from chorus.server.domain import windows as window_store
from chorus.server.domain.ledger import Ledger
from chorus.server.domain.release import Releases
from chorus.server.domain.shred import Shredder
from chorus.server.model.clock import Clock
from chorus.server.model.policy import Policy
from chorus.server.store import Database, Tx

_log = logging.getLogger(__name__)
ACTOR = "closer"


class WindowCloser:
    """Runs `tick` every interval on a daemon thread; at most one replica closes at a time."""

    def __init__(self, db: Database, policy: Policy, ledger: Ledger, clock: Clock,
                 shredder: Shredder, releases: Releases) -> None:
        self._db = db
        self._releases = releases
        self._shredder = shredder
        self._policy = policy
        self._ledger = ledger
        self._clock = clock
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._current: str | None = None  # the open window this closer last compared

    def tick(self) -> list[window_store.CloseResult]:
        """One pass; returns the windows this replica closed."""
        now = self._clock.now()
        current = self._db.run(lambda tx: window_store.ensure_current(tx, self._policy, self._ledger, now),
                               name="open_current")
        if current is not None and current.id != self._current:
            self._current = current.id
            self._log_policy_change(current)
        closed = []
        for window_id in self._db.run(lambda tx: window_store.due(tx, now), name="due_windows"):
            result = self._db.run(partial(self._close, window_id=window_id, now=now), name="close_window")
            if result is not None and result.closed_now:
                # Not how many people it held: that exact count must not leave the server.
                _log.info("closed window %s: per-person rows folded and deleted, key destroyed", window_id)
                closed.append(result)
        for window_id in self._releases.pending_plans():
            self._releases.release_plan(window_id)
        purged = self._db.run(lambda tx: window_store.purge_expired(tx, self._ledger, now, ACTOR), name="purge")
        if purged:
            _log.info("purged the exact team statistics of %d window(s) past retention", len(purged))
        if closed or purged:
            self._shredder.attempt()  # at once: these deletions have just been committed
        else:
            self._shredder.tick()  # a retry, when one is pending and its backoff has passed
        return closed

    def _log_policy_change(self, current: window_store.WindowRecord) -> None:
        """At start and when a window opens: say when the configuration's policy is not the one
        the open window froze (a mapping or a bound changed while it was open), so an operator
        who switched OTLP mappings on mid-window knows why points are ignored until the next."""
        changed = window_store.policy_differences(current.policy, self._policy)
        if changed:
            _log.warning("window %s counts with the policy frozen when it opened; this server's configuration "
                         "differs in %s, which apply from the next window (from %s)", current.id,
                         ", ".join(changed), current.end.isoformat())

    def _close(self, tx: Tx, *, window_id: str, now: datetime) -> window_store.CloseResult | None:
        if not tx.lock_closer():
            return None  # another replica is closing right now
        return window_store.close(tx, window_id, self._ledger, now, ACTOR)

    def start(self, interval: float) -> None:
        self._thread = threading.Thread(target=self._run, args=(interval,), name="chorus-closer",
                                        daemon=True)
        self._thread.start()
        # `chorus serve --workers N` runs exactly one closer; tests count this line.
        _log.info("window closer started (every %s s)", interval)

    def _run(self, interval: float) -> None:
        while True:
            try:
                self.tick()
            except Exception:
                _log.exception("window closer pass failed; retrying in %.0f s", interval)
            if self._stop.wait(interval):
                return

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
