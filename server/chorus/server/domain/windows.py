"""Window lifecycle: open with a frozen policy and a fresh key; close by folding and shredding.

Closing folds the per-person rows of a window into per-team sufficient statistics and,
in the same transaction, deletes those rows and the window's HMAC key, and records the shred
as pending (chorus.server.domain.shred): the deleted bytes leave the database files only when the
checkpoint that follows succeeds. After that nobody, the operator included, can tell
individuals apart for that window.

Nothing here reports how many people a window held: not the close result, the
`window_close` ledger entry (auditors export it) nor the windows table. That number is
exact and uncharged; it would undo the noise of the released `active` counts.
"""

from __future__ import annotations

import bisect
import json
import secrets
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from chorus.server import store
from chorus.server.domain import shred
from chorus.server.domain.ledger import Ledger
from chorus.server.domain.otlp import series as otlp_series
from chorus.server.domain.roster import current_orgs, team_sizes
from chorus.server.model.calendar import WindowLength, WindowSpan, window_of
from chorus.server.model.ledger_format import canonical_json
from chorus.server.model.policy import Policy
from chorus.server.store import Database, Tx

OPEN = "open"
CLOSED = "closed"
# Events may be at most this far ahead of the server clock. So a batch received before
# (oldest open window's start - tolerance) holds only events of closed windows: a retry of
# it would be rejected as late, and its id can be pruned.
FUTURE_TOLERANCE = timedelta(minutes=5)


@dataclass(frozen=True, slots=True)
class WindowRecord:
    id: str
    start: datetime
    end: datetime
    closes_at: datetime
    state: str
    policy: Policy
    policy_json: str
    closed_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class OpenWindow:
    record: WindowRecord
    key: bytes


@dataclass(frozen=True, slots=True)
class CloseResult:
    window: WindowRecord
    closed_now: bool


class WindowNotFound(LookupError):
    pass


_policy_cache: dict[str, Policy] = {}


def _record_policy(policy_json: str) -> Policy:
    policy = _policy_cache.get(policy_json)
    if policy is None:
        policy = _policy_cache.setdefault(policy_json, Policy.from_json(json.loads(policy_json)))
    return policy


def _record(row: store.windows.WindowRow) -> WindowRecord:
    return WindowRecord(row.id, _at(row.start_at), _at(row.end_at), _at(row.closes_at), row.state,
                        _record_policy(row.policy_json), row.policy_json,
                        None if row.closed_at is None else _at(row.closed_at))


def _at(seconds: int) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def _seconds(when: datetime) -> int:
    return int(when.timestamp())


def get(tx: Tx, window_id: str) -> WindowRecord:
    row = store.windows.get(tx, window_id)
    if row is None:
        raise WindowNotFound(f"window {window_id!r} not found")
    return _record(row)


def list_windows(tx: Tx, start: datetime | None = None, end: datetime | None = None) -> list[WindowRecord]:
    """Windows overlapping [start, end), newest first."""
    return [_record(r) for r in store.windows.overlapping(tx, _seconds(start) if start else -(2**62),
                                                    _seconds(end) if end else 2**62)]


def span_at(tx: Tx, when: datetime, length: WindowLength) -> WindowSpan:
    """The window an event at `when` belongs to.

    An existing window containing `when` wins, whatever the current policy says (its policy is
    frozen). Otherwise a window of `length`, unless that would overlap an existing window of a
    previous length: then windows keep the newest existing window's length until the change
    can start on a boundary without overlap.
    """
    t = _seconds(when)
    existing = store.windows.containing(tx, t)
    if existing is not None:
        ident, start, end = existing
        return WindowSpan(ident, _at(start), _at(end))
    span = window_of(when, length)
    overlapping = store.windows.newest_policy_overlapping(tx, _seconds(span.start), _seconds(span.end))
    if overlapping is not None:
        return window_of(when, _record_policy(overlapping).window_length)
    return span


def open_for_ingest(tx: Tx, span: WindowSpan, policy: Policy, ledger: Ledger,
                    now: datetime, *, create: bool = True) -> OpenWindow | WindowRecord | None:
    """The open window with its key; a closed record if closed; if missing, created with `policy`
    frozen (or None when `create` is false)."""
    # PostgreSQL: the share lock holds a concurrent close (UPDATE windows) until this ingest
    # commits, so the close folds our rows; an ingest arriving after the close's UPDATE waits,
    # then reads 'closed'.
    found = store.windows.with_key(tx, span.id)
    if found is not None:
        record = _record(found[0])
        if record.state == OPEN:
            assert found[1] is not None  # an open window has its key
            return OpenWindow(record, found[1])
        return record
    return _create(tx, span, policy, ledger, now) if create else None


def peek(tx: Tx, span: WindowSpan) -> OpenWindow | WindowRecord | None:
    """What `open_for_ingest(create=False)` returns, read without a lock (for a read transaction,
    ingest's preparation: `still_open` rechecks it in the write transaction)."""
    found = store.windows.with_key(tx, span.id, share=False)
    if found is None:
        return None
    record = _record(found[0])
    if record.state == OPEN:
        assert found[1] is not None  # an open window has its key
        return OpenWindow(record, found[1])
    return record


def still_open(tx: Tx, window: OpenWindow) -> bool:
    """Whether `window` is still open with the same key, share-locked as in `open_for_ingest`."""
    found = store.windows.with_key(tx, window.record.id)
    return found is not None and found[0].state == OPEN and found[1] == window.key


def _create(tx: Tx, span: WindowSpan, policy: Policy, ledger: Ledger, now: datetime) -> OpenWindow:
    policy_json = canonical_json(policy.to_json())
    closes_at = span.end + timedelta(seconds=policy.grace_seconds)
    key = secrets.token_bytes(32)
    if not store.windows.create(tx, span.id, _seconds(span.start), _seconds(span.end), _seconds(closes_at),
                          policy_json, _seconds(now), key):  # another replica created it since our read
        opened = open_for_ingest(tx, span, policy, ledger, now, create=False)
        assert isinstance(opened, OpenWindow)
        return opened
    ledger.append(tx, "window_open", {
        "window": span.id, "start": span.start.isoformat(), "end": span.end.isoformat(),
        "closes_at": closes_at.isoformat(), "policy": policy.to_json()}, now)
    record = WindowRecord(span.id, span.start, span.end, closes_at, OPEN, policy, policy_json)
    return OpenWindow(record, key)


def ensure_current(tx: Tx, policy: Policy, ledger: Ledger, now: datetime) -> WindowRecord | None:
    """Open the window containing `now` so its policy is frozen before data arrives; its record."""
    found = open_for_ingest(tx, span_at(tx, now, policy.window_length), policy, ledger, now)
    return found.record if isinstance(found, OpenWindow) else found


def policy_differences(frozen: Policy, configured: Policy) -> list[str]:
    """The top-level parts (`metrics`, `otlp`, `release_plan`, ...) in which two policies differ."""
    a, b = frozen.to_json(), configured.to_json()
    return sorted(key for key in set(a) | set(b) if a.get(key) != b.get(key))


def due(tx: Tx, now: datetime) -> list[str]:
    """Open windows whose end plus grace has passed, oldest first."""
    return store.windows.due(tx, _seconds(now))


def close(tx: Tx, window_id: str, ledger: Ledger, now: datetime, actor: str) -> CloseResult:
    """Fold, shred and mark closed; a no-op returning the record when already closed."""
    record = get(tx, window_id)
    # The conditional update takes the row lock: two closers cannot both fold.
    if not store.windows.mark_closed(tx, window_id, _seconds(now)):
        closed = get(tx, window_id)  # re-read: another closer may have finished since our first read
        return CloseResult(closed, closed_now=False)

    policy = record.policy
    sums: dict[tuple[str, str], int] = defaultdict(int)
    people: dict[tuple[str, str], int] = defaultdict(int)
    buckets: dict[tuple[str, str], list[int]] = {}
    active: dict[str, int] = defaultdict(int)
    for team, *totals in store.usage.totals(tx, window_id, len(policy.metrics)):
        if any(totals):
            active[team] += 1
        for metric, total in zip(policy.metrics, totals, strict=True):
            if total <= 0:
                continue
            key = (team, metric.name)
            sums[key] += total
            people[key] += 1
            hist = buckets.setdefault(key, [0] * (len(metric.histogram_edges) + 1))
            hist[bisect.bisect_right(metric.histogram_edges, total)] += 1

    sizes = team_sizes(tx)
    teams = sorted(set(sizes) | {team for team, _ in sums})
    # The organisation tree is frozen with the sizes; a team no longer on the roster sits
    # under the company.
    orgs = {t: o for t, o in current_orgs(tx).items() if t in sizes}
    store.team_stats.write(
        tx, window_id,
        [store.team_stats.TeamWindow(t, sizes.get(t, 0), active.get(t, 0), orgs.get(t, "")) for t in teams],
        [store.team_stats.TeamMetric(t, m.name, sums.get((t, m.name), 0), people.get((t, m.name), 0),
                               json.dumps(buckets.get((t, m.name), [0] * (len(m.histogram_edges) + 1))))
         for t in teams for m in policy.metrics])
    store.budgets.open_window(tx, window_id, teams, policy.budget_per_window)
    store.usage.delete_window(tx, window_id)
    otlp_series.close_window(tx, window_id)  # nothing carried: the next window counts from a baseline
    store.windows.delete_key(tx, window_id)
    shred.record(tx, shred.window_subject(window_id), now)
    oldest_open = store.windows.oldest_open_start(tx)
    horizon = min(_at(oldest_open), now) if oldest_open is not None else now
    store.batches.prune(tx, _seconds(horizon - FUTURE_TOLERANCE - timedelta(minutes=1)))
    # team_sizes are roster sizes (public), never how many of those people contributed.
    body: dict[str, Any] = {"window": window_id, "key_destroyed": True, "by": actor,
                            "team_sizes": {t: sizes.get(t, 0) for t in teams}}
    if orgs:  # a flat roster's entry keeps its earlier form
        body["team_orgs"] = dict(sorted(orgs.items()))
    ledger.append(tx, "window_close", body, now)
    return CloseResult(get(tx, window_id), closed_now=True)


def purge_expired(tx: Tx, ledger: Ledger, now: datetime, actor: str) -> list[str]:
    """Delete the exact team statistics of closed windows past retention; return their ids.

    They can no longer be released, and for a small team they are close to its members' own
    totals, so they are not kept. Releases, budgets and the ledger stay for audit.
    """
    purged = []
    for record in map(_record, store.windows.closed_unpurged(tx)):
        if record.policy.retention_end(record.end) > now:
            continue
        # Conditional, so two closers racing on different replicas purge (and record) once.
        if not store.windows.mark_purged(tx, record.id, _seconds(now)):
            continue
        store.team_stats.delete_window(tx, record.id)
        shred.record(tx, f"exact team statistics of window {record.id}", now)
        ledger.append(tx, "window_purge", {"window": record.id, "by": actor,
                                           "retention_end": record.policy.retention_end(record.end).isoformat()}, now)
        purged.append(record.id)
    return purged


class Windows:
    """Windows as a service for the front ends: listing, in a read transaction. (Closing, periodic
    or forced, is chorus.server.domain.closer's: a close is followed by its plan there.)"""

    def __init__(self, db: Database) -> None:
        self._db = db

    def list(self, start: datetime | None = None, end: datetime | None = None) -> list[WindowRecord]:
        """Windows overlapping [start, end), newest first."""
        return self._db.read(lambda tx: list_windows(tx, start, end), name="list_windows")
