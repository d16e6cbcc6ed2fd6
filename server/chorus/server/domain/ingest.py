"""Ingest rules: validate a batch, then apply it exactly once in one transaction.

Per contribution, in order: value non-negative, not more than five minutes in the future,
window not past end plus grace (nor closed), metric in the window's frozen policy, user on
the roster. Accepted values are clamped to the metric's bound, summed per person, and the
person's running total is clamped to [0, max_per_user] in the same upsert. The raw user id
is only ever an HMAC input; it is never stored or logged.

One pass per contribution: a batch's contributions are grouped by (event time, user) as they
are read (`Grouped`: the gRPC servicer builds it straight from the decoded message); window,
roster lookup and pseudonym are then resolved once per group, and per contribution only the
value, the metric's slot and its bound are looked at. Strings are checked once per distinct
value. Every answer (rejections in index order, the first invalid field, what is counted) is
the one a contribution-by-contribution pass gives: clamping a running total at each step equals
clamping the sum, since accepted values are non-negative.

Prepared outside the write transaction: everything that needs only the window key and the
roster (rules, pseudonyms, the rows to upsert) is resolved first in a read transaction, which
takes no writer lock, so workers do that part in parallel. The write transaction then holds only
what must be atomic: the batch claim, a recheck that the preparation still holds (the roster's
version unchanged, every window it used still open with the same key, read share-locked on
PostgreSQL so that a close waits for this commit) and the clamped upsert. When the recheck fails
(a roster import or a close committed in between), or the preparation met a window that does
not exist yet (it would have to be opened, a write), the batch is resolved again inside the
write transaction, as if never prepared: what is counted is the same as without preparing.

Exactly once: the batch_id is stored with a digest of the batch's contents in the batch's own
transaction. A known id with the same digest is a duplicate (acknowledged, nothing counted); with
another digest it raises BatchIdReused and the transaction stores nothing, so a client that
reuses an id for new data is told, never silently acknowledged.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import NamedTuple

from chorus.server import store
from chorus.server.domain import windows as window_store
from chorus.server.domain.ledger import Ledger
from chorus.server.domain.roster import RosterCache
from chorus.server.model import user_ids
from chorus.server.model.clock import Clock
from chorus.server.model.config import Limits
from chorus.server.model.policy import Policy
from chorus.server.store import Database, Tx

FUTURE_TOLERANCE = window_store.FUTURE_TOLERANCE
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


#: (event time, user) -> [(index, metric, value), ...] in index order.
Groups = dict[tuple[datetime, str], list[tuple[int, str, int]]]


@dataclass(frozen=True, slots=True)
class Grouped:
    """A batch's contributions grouped by (event time, user) in one pass, as `group` does.

    `metrics` holds every metric name used, so that strings are checked once per distinct value.
    """

    size: int
    groups: Groups
    metrics: set[str]

    def __len__(self) -> int:
        return self.size

    def ordered(self) -> list[tuple[int, str, str]]:
        """(index, user, metric) of every contribution, in index order (for the rare error path)."""
        return sorted((index, user, metric) for (_, user), entries in self.groups.items()
                      for index, metric, _ in entries)


def group(contributions: Sequence[Contribution]) -> Grouped:
    """Group by (event time, normalised user id): `Report` and OTLP name a person the same way
    the roster does (`chorus.server.model.user_ids`)."""
    groups: Groups = {}
    metrics = set()
    normalise = user_ids.normalise
    for index, (raw, metric, value, when) in enumerate(contributions):
        user = normalise(raw)
        metrics.add(metric)
        entries = groups.get((when, user))
        if entries is None:
            groups[(when, user)] = [(index, metric, value)]
        else:
            entries.append((index, metric, value))
    return Grouped(len(contributions), groups, metrics)


@dataclass(frozen=True, slots=True)
class Batch:
    batch_id: str
    source: str
    source_version: str
    dropped: int
    #: In-process callers give a list; the gRPC servicer gives them already `Grouped`.
    contributions: Sequence[Contribution] | Grouped
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
    grouped = batch.contributions if isinstance(batch.contributions, Grouped) else group(batch.contributions)
    if all(0 < len(s) <= limit and s.isprintable() for s in grouped.metrics) and \
            all(0 < len(user) <= limit and user.isprintable() for _, user in grouped.groups):
        return
    for i, user, metric in grouped.ordered():  # the first offending contribution, as named before
        _check_length(f"contributions[{i}].user", user, limit)
        _check_length(f"contributions[{i}].metric", metric, limit)


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


@dataclass(frozen=True, slots=True)
class _Resolved:
    """A batch with the rules applied: the rows to upsert and what the answer says."""

    people: dict[tuple[str, str], _Person]  # by (window, user)
    outcome: Outcome


@dataclass(frozen=True, slots=True)
class _Prepared:
    """A batch resolved in a read transaction, and what it depended on."""

    roster_version: int
    #: The open windows it used, by id: rechecked in the write transaction.
    windows: dict[str, window_store.OpenWindow]
    resolved: _Resolved


class _Unprepared(Exception):
    """The batch needs a window that does not exist yet: resolve it in the write transaction."""


def pseudonym(key: bytes, user: str) -> bytes:
    """HMAC-SHA256(window key, user id): stable within a window, unlinkable once the key is gone."""
    return hmac.digest(key, user.encode(), hashlib.sha256)


class Ingestor:
    """Applies validated batches to the store."""

    def __init__(self, db: Database, policy: Policy, ledger: Ledger, clock: Clock,
                 roster: RosterCache | None = None, stats: IngestStats | None = None,
                 witness: Callable[[datetime], None] | None = None) -> None:
        """`witness` receives one event time of each applied batch (the window closer's
        ClockGuard: what the clients' clocks say)."""
        self._db = db
        self._witness = witness
        self._policy = policy
        self._ledger = ledger
        self._clock = clock
        self._roster = roster or RosterCache()
        self.stats = stats or IngestStats()

    def report(self, batch: Batch) -> Outcome:
        now = self._clock.now()
        grouped = batch.contributions if isinstance(batch.contributions, Grouped) else group(batch.contributions)
        prepared = self._db.read(lambda tx: self._prepare(tx, grouped, now), name="ingest_prepare")
        outcome = self._db.run(lambda tx: self._apply(tx, batch, grouped, now, prepared), name="ingest")
        self.stats.record(outcome, batch.dropped)
        if self._witness is not None and grouped.groups:
            self._witness(next(iter(grouped.groups))[0])  # one sample a batch: O(1)
        return outcome

    def _prepare(self, tx: Tx, grouped: Grouped, now: datetime) -> _Prepared | None:
        """The batch resolved in a read transaction, or None when it needs a window opened."""
        version, teams = self._roster.snapshot(tx)
        windows: dict[str, window_store.OpenWindow | Rejection] = {}
        try:
            resolved = self._resolve(grouped, teams.get,
                                     lambda when: self.window_for(tx, when, now, windows, peek=True))
        except _Unprepared:
            return None
        return _Prepared(version, {w.record.id: w for w in windows.values()
                                   if isinstance(w, window_store.OpenWindow)}, resolved)

    def _still_holds(self, tx: Tx, prepared: _Prepared) -> bool:
        """Whether nothing the preparation read changed: the roster, and each window's key."""
        return store.roster.version(tx) == prepared.roster_version and \
            all(window_store.still_open(tx, window) for window in prepared.windows.values())

    def _apply(self, tx: Tx, batch: Batch, grouped: Grouped, now: datetime,
               prepared: _Prepared | None = None) -> Outcome:
        stored = store.batches.claim(tx, batch.batch_id, int(now.timestamp()), batch.digest)
        if stored is not None:
            if stored and batch.digest and stored != batch.digest:
                raise BatchIdReused(f"batch_id {batch.batch_id!r} was used before for a batch with other "
                                    "contents; nothing was stored. Use a new random id (at least 128 "
                                    "bits) for every batch, and the same id only to resend it unchanged")
            return Outcome(accepted=0, duplicate=True)
        if prepared is not None and self._still_holds(tx, prepared):
            return self._commit(tx, prepared.resolved)
        return self.count(tx, grouped, now)

    def count(self, tx: Tx, contributions: Sequence[Contribution] | Grouped, now: datetime,
              windows: dict[str, window_store.OpenWindow | Rejection] | None = None) -> Outcome:
        """Apply the ingest rules to `contributions` in `tx` (a batch, or an OTLP export's points).

        Window, roster lookup and pseudonym are resolved once per (event time, user) group."""
        grouped = contributions if isinstance(contributions, Grouped) else group(contributions)
        known = {} if windows is None else windows
        return self._commit(tx, self._resolve(grouped, self._roster.current(tx).get,
                                              lambda when: self.window_for(tx, when, now, known)))

    def _commit(self, tx: Tx, resolved: _Resolved) -> Outcome:
        if resolved.people:
            self._write(tx, resolved.people)
        return resolved.outcome

    @staticmethod
    def _resolve(grouped: Grouped, team_of: Callable[[str], str | None],
                 window_at: Callable[[datetime], window_store.OpenWindow | Rejection]) -> _Resolved:
        """The rules applied to a batch: pseudonyms, clamped per-person totals, rejections."""
        by_time: dict[datetime, window_store.OpenWindow | Rejection] = {}  # batches carry few distinct times
        slots: dict[str, dict[str, tuple[int, int]]] = {}  # window -> metric -> (slot, bound)
        people: dict[tuple[str, str], _Person] = {}  # by (window, user)
        rejections: list[Rejection] = []
        clamped = 0

        for (when, user), entries in grouped.groups.items():
            window: window_store.OpenWindow | None = None
            refused: Rejection | None = None  # why this group's window takes nothing
            metric_slots: dict[str, tuple[int, int]] | None = None
            totals: list[int] | None = None
            for index, metric, value in entries:
                if value < 0:
                    rejections.append(Rejection(index, Reason.NEGATIVE_VALUE,
                                                f"value {value} is negative; counts must be >= 0"))
                    continue
                if metric_slots is None:  # per group, and only once a value is non-negative
                    found = by_time.get(when)
                    if found is None:
                        found = by_time[when] = window_at(when)
                    if isinstance(found, Rejection):
                        refused, metric_slots = found, {}
                    else:
                        window = found
                        metric_slots = slots.get(window.record.id) or slots.setdefault(
                            window.record.id, {m.name: (i, m.max_per_user)
                                               for i, m in enumerate(window.record.policy.metrics)})
                if refused is not None:
                    rejections.append(Rejection(index, refused.reason, refused.message))
                    continue
                assert window is not None
                slot_bound = metric_slots.get(metric)
                if slot_bound is None:
                    rejections.append(Rejection(index, Reason.UNKNOWN_METRIC, f"metric {metric!r} is not in "
                                                f"the policy of window {window.record.id}"))
                    continue
                if totals is None:  # the person, once per group
                    team = team_of(user)
                    if team is None:
                        rejections.append(Rejection(index, Reason.UNKNOWN_USER, "user is not on the roster"))
                        continue
                    pkey = (window.record.id, user)
                    person = people.get(pkey)
                    if person is None:
                        policy = window.record.policy
                        person = people[pkey] = _Person(pseudonym(window.key, user), team, policy,
                                                        [0] * len(policy.metrics))
                    totals = person.totals
                slot, bound = slot_bound
                if value > bound:
                    clamped += 1
                total = totals[slot] + value
                totals[slot] = bound if total > bound else total

        if rejections:
            rejections.sort(key=_by_index)
        accepted = grouped.size - len(rejections)
        return _Resolved(people, Outcome(accepted=accepted, duplicate=False, rejections=rejections, clamped=clamped))

    @staticmethod
    def _write(tx: Tx, people: dict[tuple[str, str], _Person]) -> None:
        """Upsert one row per person, in (window, pseudonym) order: every concurrent batch takes
        row locks in the same order, so none deadlock (PostgreSQL)."""
        by_bounds: dict[tuple[int, ...], list[tuple]] = {}  # windows of one policy share a statement
        of_window: dict[str, list[tuple]] = {}
        for (window_id, _), (pseud, team, policy, totals) in people.items():
            rows = of_window.get(window_id)
            if rows is None:
                bounds = tuple(m.max_per_user for m in policy.metrics)
                rows = of_window[window_id] = by_bounds.setdefault(bounds, [])
            rows.append((window_id, pseud, team, *totals))
        for bounds, group in by_bounds.items():
            store.usage.add(tx, bounds, sorted(group))

    def window_for(self, tx: Tx, when: datetime, now: datetime,
                   windows: dict[str, window_store.OpenWindow | Rejection], *,
                   peek: bool = False) -> window_store.OpenWindow | Rejection:
        """The open window taking events at `when`, or why none does (index filled in by the caller).

        An existing window decides by its own frozen close time; the current grace period only
        decides whether a missing window may still be opened. With `peek` (a read transaction)
        nothing is locked or created: a missing window raises _Unprepared.
        """
        if when > now + FUTURE_TOLERANCE:
            return Rejection(-1, Reason.FUTURE, f"event_time {when.isoformat()} is more than "
                                                f"{FUTURE_TOLERANCE.seconds // 60} minutes ahead of the server "
                                                f"clock {now.isoformat()}")
        span = window_store.span_at(tx, when, self._policy.window_length)
        if span.id not in windows:
            may_open = span.end + timedelta(seconds=self._policy.grace_seconds) > now
            if peek:
                opened = window_store.peek(tx, span)
                if opened is None:
                    raise _Unprepared(span.id)
            else:
                opened = window_store.open_for_ingest(tx, span, self._policy, self._ledger, now, create=may_open)
            windows[span.id] = opened if isinstance(opened, window_store.OpenWindow) and opened.record.closes_at > now \
                else _late(span.id, opened)
        return windows[span.id]


def _by_index(rejection: Rejection) -> int:
    return rejection.index


def _late(window_id: str, record: window_store.OpenWindow | window_store.WindowRecord | None) -> Rejection:
    if record is None:
        why = "it ended more than the grace period ago"
    elif isinstance(record, window_store.OpenWindow):
        why = f"it stopped taking contributions at {record.record.closes_at.isoformat()}"
    else:
        why = "it is closed: its usage was folded into team statistics"
    return Rejection(-1, Reason.LATE, f"window {window_id} takes no more contributions: {why}")
