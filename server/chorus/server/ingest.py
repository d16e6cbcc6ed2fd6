"""Ingest rules: validate a batch, then apply it exactly once in one transaction.

Per contribution, in order: value non-negative, not more than five minutes in the future,
window not past end plus grace (nor closed), metric in the window's frozen policy, user on
the roster. Accepted values are clamped to the metric's bound, summed per person, and the
person's running total is clamped to [0, max_per_user] in the same upsert. The raw user id
is only ever an HMAC input; it is never stored or logged.

Exactly once: the batch_id is stored with a digest of the batch's contents in the batch's own
transaction. A known id with the same digest is a duplicate (acknowledged, nothing counted); with
another digest it raises BatchIdReused and the transaction stores nothing, so a client that
reuses an id for new data is told, never silently acknowledged.
"""

from __future__ import annotations

import enum
import functools
import hashlib
import hmac
import threading
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import NamedTuple

from chorus.server import lifecycle
from chorus.server.clock import Clock
from chorus.server.config import Limits, Policy
from chorus.server.ledger import Ledger
from chorus.server.roster import RosterCache
from chorus.server.store._db import Database, Tx

FUTURE_TOLERANCE = lifecycle.FUTURE_TOLERANCE
#: A client reports drops since its previous batch; more than this is not a real count, and
#: summing unbounded client values would overflow the uint64 counters of GetStats.
MAX_REPORTED_DROPS = 2**40


class Reason(enum.Enum):
    UNKNOWN_USER = 1
    UNKNOWN_METRIC = 2
    NEGATIVE_VALUE = 3
    LATE = 4
    FUTURE = 5


class Contribution(NamedTuple):  # a tuple: cheap to build by the thousand per batch
    user: str
    metric: str
    value: int
    event_time: datetime


@dataclass(frozen=True, slots=True)
class Batch:
    batch_id: str
    source: str
    source_version: str
    dropped: int
    contributions: list[Contribution]
    #: SHA-256 of the batch's contents as sent (services.ingest.content_digest); stored with
    #: the batch_id so that a reused id with other contents is refused, not acknowledged.
    #: Empty for in-process callers that never reuse an id.
    digest: bytes = b""


@dataclass(frozen=True, slots=True)
class Rejection:
    index: int
    reason: Reason
    message: str


@dataclass(frozen=True, slots=True)
class Outcome:
    accepted: int
    duplicate: bool
    rejections: list[Rejection] = field(default_factory=list)
    clamped: int = 0


class InvalidBatch(ValueError):
    """The batch as a whole is malformed; nothing of it is stored. `field` is the offending
    request field as a path, e.g. `contributions[3].user`."""

    def __init__(self, message: str, field: str) -> None:
        super().__init__(message)
        self.field = field


class BatchIdReused(Exception):
    """A batch_id already stored with other contents: refused, nothing stored."""


def validate(batch: Batch, limits: Limits) -> None:
    """Reject malformed batches; messages name the field and the limit, never the value."""
    if not batch.batch_id:
        raise InvalidBatch("batch_id is required (a random id of at least 128 bits, reused on every "
                           "retry)", "batch_id")
    _check_length("batch_id", batch.batch_id, limits.max_string_length)
    _check_length("source", batch.source, limits.max_string_length, required=False)
    _check_length("source_version", batch.source_version, limits.max_string_length, required=False)
    if batch.dropped > MAX_REPORTED_DROPS:
        raise InvalidBatch(f"dropped is {batch.dropped}; the limit per batch is {MAX_REPORTED_DROPS}",
                           "dropped")
    if not batch.contributions:
        raise InvalidBatch("contributions is empty: a batch needs at least one contribution",
                           "contributions")
    if len(batch.contributions) > limits.max_batch_contributions:
        raise InvalidBatch(f"batch has {len(batch.contributions)} contributions; the limit is "
                           f"{limits.max_batch_contributions}", "contributions")
    limit = limits.max_string_length
    for i, c in enumerate(batch.contributions):
        if not (0 < len(c.user) <= limit and 0 < len(c.metric) <= limit and c.user.isprintable()
                and c.metric.isprintable()):
            _check_length(f"contributions[{i}].user", c.user, limit)
            _check_length(f"contributions[{i}].metric", c.metric, limit)


def _check_length(name: str, value: str, limit: int, *, required: bool = True) -> None:
    if required and not value:
        raise InvalidBatch(f"{name} is empty", name)
    if len(value) > limit:
        raise InvalidBatch(f"{name} is {len(value)} characters; the limit is {limit}", name)
    if not value.isprintable():
        raise InvalidBatch(f"{name} contains control characters; use printable text", name)


class IngestStats:
    """Operational counters since start; aggregate only, nothing per person."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.counts: Counter[str] = Counter()
        self.rejected: Counter[str] = Counter()

    def record(self, outcome: Outcome, dropped: int) -> None:
        with self._lock:
            self.counts["batches"] += 1
            self.counts["duplicate_batches"] += outcome.duplicate
            self.counts["contributions_accepted"] += outcome.accepted
            self.counts["contributions_clamped"] += outcome.clamped
            if not outcome.duplicate:
                self.counts["client_dropped"] += dropped
            self.rejected.update(r.reason.name for r in outcome.rejections)

    def record_invalid(self) -> None:
        with self._lock:
            self.counts["invalid_batches"] += 1

    def snapshot(self) -> tuple[dict[str, int], dict[str, int]]:
        with self._lock:
            return dict(self.counts), dict(self.rejected)


class _Person(NamedTuple):
    """One person's row in one window, as a batch builds it."""

    pseudonym: bytes
    team: str
    policy: Policy
    totals: list[int]  # per metric slot, each already clamped to its bound


@functools.cache
def _upsert_usage(metrics: int) -> str:
    """Add a batch's per-person sums to the first `metrics` slots, each total clamped to its bound.

    The team is written by the person's first contribution in the window and never updated.
    """
    slots = [f"t{i}" for i in range(metrics)]
    clamp = ", ".join(f"{t} = CASE WHEN usage.{t} + excluded.{t} > ? THEN ? ELSE usage.{t} + excluded.{t} END"
                      for t in slots)
    return (f"INSERT INTO usage (window_id, pseudonym, team, {', '.join(slots)}) "
            f"VALUES (?, ?, ?{', ?' * metrics}) ON CONFLICT (window_id, pseudonym) DO UPDATE SET {clamp}")


def pseudonym(key: bytes, user: str) -> bytes:
    """HMAC-SHA256(window key, user id): stable within a window, unlinkable once the key is gone."""
    return hmac.digest(key, user.encode(), hashlib.sha256)


class Ingestor:
    """Applies validated batches to the store."""

    def __init__(self, db: Database, policy: Policy, ledger: Ledger, clock: Clock,
                 roster: RosterCache | None = None, stats: IngestStats | None = None) -> None:
        self._db = db
        self._policy = policy
        self._ledger = ledger
        self._clock = clock
        self._roster = roster or RosterCache()
        self.stats = stats or IngestStats()

    def report(self, batch: Batch) -> Outcome:
        now = self._clock.now()
        outcome = self._db.run(lambda tx: self._apply(tx, batch, now), name="ingest")
        self.stats.record(outcome, batch.dropped)
        return outcome

    def _apply(self, tx: Tx, batch: Batch, now: datetime) -> Outcome:
        if not tx.execute("INSERT INTO batches (batch_id, received_at, digest) VALUES (?, ?, ?) "
                          "ON CONFLICT (batch_id) DO NOTHING",
                          (batch.batch_id, int(now.timestamp()), batch.digest)):
            (stored,), = tx.query("SELECT digest FROM batches WHERE batch_id = ?", (batch.batch_id,))
            if stored and batch.digest and bytes(stored) != batch.digest:
                raise BatchIdReused(f"batch_id {batch.batch_id!r} was used before for a batch with other "
                                    "contents; nothing was stored. Use a new random id (at least 128 "
                                    "bits) for every batch, and the same id only to resend it unchanged")
            return Outcome(accepted=0, duplicate=True)
        return self.count(tx, batch.contributions, now)

    def count(self, tx: Tx, contributions: list[Contribution], now: datetime,
              windows: dict[str, lifecycle.OpenWindow | Rejection] | None = None) -> Outcome:
        """Apply the ingest rules to `contributions` in `tx` (a batch, or an OTLP export's points)."""
        team_of = self._roster.current(tx).get
        windows = {} if windows is None else windows
        by_time: dict[datetime, lifecycle.OpenWindow | Rejection] = {}  # batches carry few distinct times
        people: dict[tuple[str, str], _Person] = {}  # by (window, user)
        rejections: list[Rejection] = []
        clamped = 0

        for index, c in enumerate(contributions):
            value = c.value
            if value < 0:
                rejections.append(Rejection(index, Reason.NEGATIVE_VALUE,
                                            f"value {value} is negative; counts must be >= 0"))
                continue
            window = by_time.get(c.event_time)
            if window is None:
                window = by_time[c.event_time] = self.window_for(tx, c.event_time, now, windows)
            if isinstance(window, Rejection):
                rejections.append(Rejection(index, window.reason, window.message))
                continue
            policy = window.record.policy
            metric = policy.metric(c.metric)
            if metric is None:
                rejections.append(Rejection(index, Reason.UNKNOWN_METRIC, f"metric {c.metric!r} is not in "
                                            f"the policy of window {window.record.id}"))
                continue
            team = team_of(c.user)
            if team is None:
                rejections.append(Rejection(index, Reason.UNKNOWN_USER, "user is not on the roster"))
                continue
            pkey = (window.record.id, c.user)
            person = people.get(pkey)
            if person is None:
                person = people[pkey] = _Person(pseudonym(window.key, c.user), team, policy,
                                                [0] * len(policy.metrics))
            bound = metric.max_per_user
            if value > bound:
                clamped += 1
            totals = person.totals
            slot = policy.slot(c.metric)
            totals[slot] = min(bound, totals[slot] + value)

        if people:
            self._write(tx, people)
        accepted = len(contributions) - len(rejections)
        return Outcome(accepted=accepted, duplicate=False, rejections=rejections, clamped=clamped)

    @staticmethod
    def _write(tx: Tx, people: dict[tuple[str, str], _Person]) -> None:
        """Upsert one row per person, in (window, pseudonym) order: every concurrent batch takes
        row locks in the same order, so none deadlock (PostgreSQL)."""
        by_bounds: dict[tuple[int, ...], list[tuple]] = {}  # windows of one policy share a statement
        for (window_id, _), (pseud, team, policy, totals) in people.items():
            bounds = tuple(m.max_per_user for m in policy.metrics)
            by_bounds.setdefault(bounds, []).append((window_id, pseud, team, *totals))
        for bounds, group in by_bounds.items():
            params = [b for bound in bounds for b in (bound, bound)]
            tx.executemany(_upsert_usage(len(bounds)), [(*row, *params) for row in sorted(group)])

    def window_for(self, tx: Tx, when: datetime, now: datetime,
                    windows: dict[str, lifecycle.OpenWindow | Rejection]) -> lifecycle.OpenWindow | Rejection:
        """The open window taking events at `when`, or why none does (index filled in by the caller).

        An existing window decides by its own frozen close time; the current grace period only
        decides whether a missing window may still be opened.
        """
        if when > now + FUTURE_TOLERANCE:
            return Rejection(-1, Reason.FUTURE, f"event_time {when.isoformat()} is more than "
                                                f"{FUTURE_TOLERANCE.seconds // 60} minutes ahead of the server "
                                                f"clock {now.isoformat()}")
        span = lifecycle.span_at(tx, when, self._policy.window_length)
        if span.id not in windows:
            may_open = span.end + timedelta(seconds=self._policy.grace_seconds) > now
            opened = lifecycle.open_for_ingest(tx, span, self._policy, self._ledger, now, create=may_open)
            windows[span.id] = opened if isinstance(opened, lifecycle.OpenWindow) and opened.record.closes_at > now \
                else _late(span.id, opened)
        return windows[span.id]


def _late(window_id: str, record: lifecycle.OpenWindow | lifecycle.WindowRecord | None) -> Rejection:
    if record is None:
        why = "it ended more than the grace period ago"
    elif isinstance(record, lifecycle.OpenWindow):
        why = f"it stopped taking contributions at {record.record.closes_at.isoformat()}"
    else:
        why = "it is closed: its usage was folded into team statistics"
    return Rejection(-1, Reason.LATE, f"window {window_id} takes no more contributions: {why}")
