"""What one release transaction reads of a closed window, once (`Snapshot`): its record (with
the frozen policy), the organisation tree frozen at close, the team-window budgets and every
stored release. A request's steps (`steps`) are functions of it; only the step that claims and
charges releases changes what is stored and spent, and `after_claims` reads those two again.
A window's whole release plan is released over one snapshot, in one transaction.

Budgets are read before the releases. Each read has its own snapshot on PostgreSQL (READ
COMMITTED), and a concurrent request commits its releases and its charge together: read in
this order, one that commits in between shows its releases (so they are not missing here)
without its charge, never its charge without its releases, which would refuse the loser of a
race for the very statistics it is about to get as cached. The conditional UPDATE of the charge
step, not a check over this snapshot, is what enforces the cap.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime

from chorus.server import store
from chorus.server.domain import windows as window_store
from chorus.server.domain.release.errors import InvalidRequest, NotFound
from chorus.server.domain.release.postprocess import Key, Replay, Stored, WindowReleases, replay_of
from chorus.server.model import hierarchy
from chorus.server.model.calendar import parse_window_id
from chorus.server.model.policy import Policy
from chorus.server.privacy.budget import Budget
from chorus.server.store import Tx


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A window as one release transaction reads it. Never mutated: a step that changes the
    store returns a new one (`after_claims`)."""

    record: window_store.WindowRecord
    tree: hierarchy.Hierarchy
    #: team -> its budget in this window (none while the window is open).
    budgets: Mapping[str, Budget]
    #: Every release of the window, keyed (team or node, metric, statistic), charged nothing.
    stored: Mapping[Key, Stored]

    @property
    def window(self) -> str:
        return self.record.id

    @property
    def policy(self) -> Policy:
        return self.record.policy

    @property
    def replay(self) -> Replay:
        """The parse and answer caches of windows frozen like this one."""
        return replay_of(self.record.policy)


def read(tx: Tx, window: str, known: WindowReleases | None = None) -> Snapshot:
    """The window's snapshot; raises InvalidRequest or NotFound for a malformed or unknown id.
    `known`: the stored releases read before by this database's read transactions (only in a
    read transaction: `WindowReleases`)."""
    record = window_of(tx, window)
    budgets = read_budgets(tx, record)  # before the releases: see the module docstring
    return Snapshot(record, tree_of(tx, window), budgets, read_stored(tx, record, known))


def after_claims(tx: Tx, snapshot: Snapshot) -> Snapshot:
    """`snapshot` with its budgets and stored releases read again, after this transaction
    claimed and charged some (the window and its tree do not change)."""
    budgets = read_budgets(tx, snapshot.record)
    return replace(snapshot, budgets=budgets, stored=read_stored(tx, snapshot.record, None))


def read_budgets(tx: Tx, record: window_store.WindowRecord) -> dict[str, Budget]:
    """team -> its budget in the window, in the window's unit."""
    return store.budgets.of_window(tx, record.id, record.policy.unit)


def read_stored(tx: Tx, record: window_store.WindowRecord, known: WindowReleases | None) -> dict[Key, Stored]:
    """Every release of the window, in one query (or none, when `known` holds them already)."""
    replay = replay_of(record.policy)
    if known is not None:
        return known.read(tx, record.id, replay)
    return replay.stored(store.releases.of_window(tx, record.id))


def window_of(tx: Tx, window: str) -> window_store.WindowRecord:
    try:
        parse_window_id(window)
    except ValueError as exc:
        raise InvalidRequest(str(exc), "window") from None
    try:
        return window_store.get(tx, window)
    except window_store.WindowNotFound:
        raise NotFound(f"window {window!r} not found") from None


def tree_of(tx: Tx, window: str) -> hierarchy.Hierarchy:
    """The organisation tree frozen with the window at close."""
    return hierarchy.Hierarchy.of((t.team, t.org, t.roster_size) for t in store.team_stats.teams(tx, window))


def team_windows(tx: Tx, window: str) -> list[tuple[str, int, int]]:
    return [(t.team, t.roster_size, t.active) for t in store.team_stats.teams(tx, window)]


def org_or_name(name: str) -> str:
    """An org path written loosely (spaces around segments, a trailing slash) in its form."""
    try:
        return hierarchy.org_path(name.strip().rstrip("/")) or name
    except hierarchy.HierarchyError:
        return name


def when(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M UTC")
