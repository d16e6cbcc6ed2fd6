"""Ingest rules: validate a batch, then apply it exactly once in one transaction.

One entrance: `IngestSession` is the rules inside one transaction (which window takes an event
time, who is on the roster, the count and the upsert). A `Report`'s write transaction and an
OTLP export's transaction (chorus.server.domain.otlp.export) both count through one, and both
record into the one `IngestStats`, whose keys are enums (`Entrance`, `ReportOutcome`, `Reason`,
OTLP's `PointOutcome`): GetStats and Prometheus read the same numbers.

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
from typing import TYPE_CHECKING, NamedTuple

from chorus.server import store
from chorus.server.domain import windows as window_store
from chorus.server.domain.ledger import Ledger
from chorus.server.domain.roster import RosterCache
from chorus.server.model import user_ids
from chorus.server.model.clock import Clock
from chorus.server.model.config import Limits
from chorus.server.model.policy import Policy
from chorus.server.store import Database, Tx

if TYPE_CHECKING:  # the OTLP entrance imports this module; its outcome enum is only named here
    from chorus.server.domain.otlp.points import PointOutcome

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


class Entrance(enum.StrEnum):
    """Where contributions came in: both count through one `IngestSession` (the label of
    `chorus_ingest_contributions_*_total`)."""

    REPORT = "report"  # IngestService.Report
    OTLP = "otlp"  # an OTLP metrics export's points, summed per person, metric and time


class ReportOutcome(enum.StrEnum):
    """What became of one `Report` call that reached the ingest rules (GetStats, Prometheus)."""

    APPLIED = "applied"
    DUPLICATE = "duplicate"  # its batch_id was seen before: nothing counted
    INVALID = "invalid"  # refused whole as malformed


@dataclass(frozen=True, slots=True)
class IngestCounts:
    """A snapshot of `IngestStats`; aggregate only, nothing per person."""

    reports: dict[ReportOutcome, int]
    accepted: dict[Entrance, int]  # contributions counted
    clamped: dict[Entrance, int]  # accepted contributions whose own value was above the bound
    rejected: dict[Reason, int]  # contributions rejected inside applied batches
    client_dropped: int  # what SDK clients report having dropped (a duplicate's not twice)
    #: OTLP data points by (outcome, instrument label); the outcome is the OTLP entrance's enum.
    points: dict[tuple[PointOutcome, str], int]

    def totals(self) -> dict[str, int]:
        """The scalar counters under their GetStats names (chorus.v1.GetStatsResponse)."""
        applied, duplicate = self.reports.get(ReportOutcome.APPLIED, 0), self.reports.get(ReportOutcome.DUPLICATE, 0)
        return {"batches": applied + duplicate, "duplicate_batches": duplicate,
                "invalid_batches": self.reports.get(ReportOutcome.INVALID, 0),
                "contributions_accepted": sum(self.accepted.values()),
                "contributions_clamped": sum(self.clamped.values()), "client_dropped": self.client_dropped}


class IngestStats:
    """Operational counters since start, of every entrance, each keyed by an enum: the one
    source of GetStats and of the Prometheus ingest families. Aggregate only, nothing per person."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._reports: Counter[ReportOutcome] = Counter()
        self._accepted: Counter[Entrance] = Counter()
        self._clamped: Counter[Entrance] = Counter()
        self._rejected: Counter[Reason] = Counter()
        self._dropped = 0
        self._points: Counter[tuple[PointOutcome, str]] = Counter()

    def record(self, entrance: Entrance, outcome: Outcome, dropped: int = 0) -> None:
        """What one batch (a `Report`, or an OTLP export's contributions) counted."""
        with self._lock:
            if entrance is Entrance.REPORT:
                self._reports[ReportOutcome.DUPLICATE if outcome.duplicate else ReportOutcome.APPLIED] += 1
                if not outcome.duplicate:
                    self._dropped += dropped
            self._accepted[entrance] += outcome.accepted
            self._clamped[entrance] += outcome.clamped
            self._rejected.update(r.reason for r in outcome.rejections)

    def record_invalid(self) -> None:
        with self._lock:
            self._reports[ReportOutcome.INVALID] += 1

    def record_points(self, points: Counter[tuple[PointOutcome, str]]) -> None:
        """OTLP data points by (outcome, instrument label)."""
        with self._lock:
            self._points.update(points)

    def snapshot(self) -> IngestCounts:
        with self._lock:
            return IngestCounts(dict(self._reports), dict(self._accepted), dict(self._clamped),
                                dict(self._rejected), self._dropped, dict(self._points))


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
    return hmac.digest(key, user.encode(), "sha256")


def pseudonyms(key: bytes) -> Callable[[str], bytes]:
    """`pseudonym` under one window key, the HMAC keyed once and copied per user (a third of
    the cost of keying it per call)."""
    keyed = hmac.new(key, digestmod=hashlib.sha256)

    def of(user: str) -> bytes:
        h = keyed.copy()
        h.update(user.encode())
        return h.digest()
    return of


class Ingestor:
    """Applies validated batches to the store; every entrance counts through `session`."""

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
        self.stats.record(Entrance.REPORT, outcome, batch.dropped)
        if self._witness is not None and grouped.groups:
            self._witness(next(iter(grouped.groups))[0])  # one sample a batch: O(1)
        return outcome

    def session(self, tx: Tx, now: datetime) -> IngestSession:
        """The one entrance to the ingest rules inside write transaction `tx` (an OTLP export's)."""
        return IngestSession(tx, now, self._policy, self._ledger, self._roster.current(tx).get)

    def _prepare(self, tx: Tx, grouped: Grouped, now: datetime) -> _Prepared | None:
        """The batch resolved in a read transaction, or None when it needs a window opened."""
        version, teams = self._roster.snapshot(tx)
        session = IngestSession(tx, now, self._policy, self._ledger, teams.get, peek=True)
        try:
            resolved = session.resolve(grouped)
        except _Unprepared:
            return None
        return _Prepared(version, session.open_windows(), resolved)

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
            return _commit(tx, prepared.resolved)
        return self.session(tx, now).count(grouped)


class IngestSession:
    """The ingest rules inside one transaction: the one entrance of `Report` and of OTLP.

    It holds the transaction, the server's time, the roster as the transaction reads it and
    every window resolved so far, by event time and by window id: a window is looked up (and
    opened) at most once per transaction, and every contribution of one event time gets the
    same answer. `window_at` and `team_of` are the rules an entrance checks before it builds
    contributions (OTLP: per data point); `count` applies every rule to contributions and
    writes what they add. With `peek` (a read transaction preparing a batch) nothing is
    written, opened or locked, and a window that does not exist yet raises _Unprepared.
    """

    __slots__ = ("_by_id", "_by_time", "_ledger", "_now", "_peek", "_policy", "_tx", "team_of")

    def __init__(self, tx: Tx, now: datetime, policy: Policy, ledger: Ledger,
                 team_of: Callable[[str], str | None], *, peek: bool = False) -> None:
        self._tx = tx
        self._now = now
        self._policy = policy
        self._ledger = ledger
        self._peek = peek
        #: The team of a (normalised) user id on the roster, or None.
        self.team_of = team_of
        self._by_time: dict[datetime, window_store.OpenWindow | Rejection] = {}
        self._by_id: dict[str, window_store.OpenWindow | Rejection] = {}

    def window_at(self, when: datetime) -> window_store.OpenWindow | Rejection:
        """The open window taking events at `when`, or why none does (index -1).

        An existing window decides by its own frozen close time; the current grace period only
        decides whether a missing window may still be opened.
        """
        found = self._by_time.get(when)
        if found is not None:
            return found
        now = self._now
        if when > now + FUTURE_TOLERANCE:
            found = Rejection(-1, Reason.FUTURE, f"event_time {when.isoformat()} is more than "
                                                 f"{FUTURE_TOLERANCE.seconds // 60} minutes ahead of the server "
                                                 f"clock {now.isoformat()}")
        else:
            span = window_store.span_at(self._tx, when, self._policy.window_length)
            found = self._by_id.get(span.id)
            if found is None:
                if self._peek:
                    opened = window_store.peek(self._tx, span)
                    if opened is None:
                        raise _Unprepared(span.id)
                else:
                    may_open = span.end + timedelta(seconds=self._policy.grace_seconds) > now
                    opened = window_store.open_for_ingest(self._tx, span, self._policy, self._ledger, now,
                                                          create=may_open)
                found = self._by_id[span.id] = opened if isinstance(opened, window_store.OpenWindow) \
                    and opened.record.closes_at > now else _late(span.id, opened)
        self._by_time[when] = found
        return found

    def open_windows(self) -> dict[str, window_store.OpenWindow]:
        """The open windows resolved so far, by id (what a prepared batch depends on)."""
        return {w.record.id: w for w in self._by_id.values() if isinstance(w, window_store.OpenWindow)}

    def count(self, contributions: Sequence[Contribution] | Grouped) -> Outcome:
        """Apply the ingest rules to `contributions` and write what they add (not with `peek`)."""
        assert not self._peek, "a read transaction counts nothing"
        grouped = contributions if isinstance(contributions, Grouped) else group(contributions)
        return _commit(self._tx, self.resolve(grouped))

    def resolve(self, grouped: Grouped) -> _Resolved:
        """The rules applied to a batch: pseudonyms, clamped per-person totals, rejections.

        Window, roster lookup and pseudonym are resolved once per (event time, user) group."""
        window_at, team_of = self.window_at, self.team_of
        slots: dict[str, dict[str, tuple[int, int]]] = {}  # window -> metric -> (slot, bound)
        keyed: dict[str, Callable[[str], bytes]] = {}  # window -> its pseudonyms
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
                    found = window_at(when)
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
                        of = keyed.get(window.record.id)
                        if of is None:
                            of = keyed[window.record.id] = pseudonyms(window.key)
                        person = people[pkey] = _Person(of(user), team, policy, [0] * len(policy.metrics))
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


def _commit(tx: Tx, resolved: _Resolved) -> Outcome:
    if resolved.people:
        _write(tx, resolved.people)
    return resolved.outcome


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
