"""Pending shreds: secrets whose deletion is committed but may still be readable on disk.

A window's close deletes its HMAC key and per-person rows (pseudonyms with totals); a roster
import deletes the raw ids of the people it removes. The transaction doing so records the
subject here (`record`, in the same transaction, so a crash right after the commit still
knows). The bytes are gone only once the engine's checkpoint succeeds: on SQLite the WAL
keeps the old page versions until it is truncated, and another connection's read
transaction (a `sqlite3` shell, a backup tool) prevents that. Until then the shred is
*pending*: `Shredder.attempt` runs the checkpoint right after the deletion and the closer
retries on its ticks with exponential backoff; a subject is cleared only by a checkpoint
that started after it was recorded (its `version` guards against a re-record meanwhile).

On PostgreSQL the checkpoint is a no-op that succeeds: Chorus cannot make deleted tuples,
WAL segments or backups go away, so pending shreds clear at once and docs/privacy.md says
what the operator configures instead.

The pending list is public operational state (a subject names a window or "roster import",
never a person): `chorus stats` shows it, and `Shredder.pending()` is what metrics read.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from chorus.server import store
from chorus.server.model.clock import Clock
from chorus.server.store import Database, StoreUnavailable, Tx

_log = logging.getLogger(__name__)

#: The subject recorded by a roster import (removed people's raw ids).
ROSTER = "roster import"
#: Retry backoff after a failed checkpoint: doubles from the first delay up to the cap. The
#: closer ticks every 30 s, so retries happen on the first tick past each delay.
FIRST_RETRY = timedelta(seconds=30)
MAX_RETRY = timedelta(minutes=5)


def window_subject(window_id: str) -> str:
    return f"window {window_id}"


@dataclass(frozen=True, slots=True)
class PendingShred:
    subject: str
    since: datetime
    version: int


def record(tx: Tx, subject: str, now: datetime) -> None:
    """In the transaction that deletes the secret: note that its bytes may still be on disk."""
    store.shreds.record(tx, subject, int(now.timestamp()))


def pending_in(tx: Tx) -> list[PendingShred]:
    """The shreds not yet final on disk, oldest first, read in the caller's transaction."""
    return [PendingShred(subject, datetime.fromtimestamp(since, UTC), version)
            for subject, since, version in store.shreds.pending(tx)]


class Shredder:
    """Runs the checkpoint that completes pending shreds, retrying with backoff until it works."""

    def __init__(self, db: Database, clock: Clock) -> None:
        self._db = db
        self._clock = clock
        self._lock = threading.Lock()
        self._failures = 0
        self._next_attempt: datetime | None = None
        self._warned: set[str] = set()

    def pending(self) -> list[PendingShred]:
        """The shreds not yet final on disk, oldest first."""
        return self._db.read(pending_in, name="pending_shreds")

    def attempt(self) -> bool:
        """Checkpoint now; True when nothing is pending afterwards. Never raises for a store
        failure (it runs after the deleting transaction committed): that is one more retry."""
        with self._lock:
            now = self._clock.now()
            pending: list[PendingShred] = []
            try:
                pending = self.pending()
                if not pending:
                    self._failures, self._next_attempt = 0, None
                    return True
                done = self._db.checkpoint()
                reason = "another connection holds a read transaction on the database"
                if done:
                    self._db.run(lambda tx: store.shreds.clear(tx, [(p.subject, p.version) for p in pending]),
                                 name="clear_pending_shreds")
            except StoreUnavailable as exc:
                done, reason = False, str(exc)
            if done:
                for p in pending:
                    if p.subject in self._warned:
                        _log.info("shred of %s complete after %.0f s pending", p.subject,
                                  (now - p.since).total_seconds())
                    self._warned.discard(p.subject)
                self._failures, self._next_attempt = 0, None
                return True
            delay = self._retry_later(now)
            for p in pending:
                if p.subject not in self._warned:
                    self._warned.add(p.subject)
                    _log.warning("shred of %s pending for %.0f s: deleted secrets are still in the "
                                 "database files because %s; retrying with backoff (next in %.0f s)",
                                 p.subject, (now - p.since).total_seconds(), reason, delay.total_seconds())
            return False

    def _retry_later(self, now: datetime) -> timedelta:
        self._failures += 1
        delay = min(MAX_RETRY, FIRST_RETRY * 2 ** min(self._failures - 1, 16))
        self._next_attempt = now + delay
        return delay

    def tick(self) -> None:
        """On each closer tick: retry when something is pending and the backoff has passed."""
        if self._next_attempt is not None and self._clock.now() < self._next_attempt:
            return
        self.attempt()
