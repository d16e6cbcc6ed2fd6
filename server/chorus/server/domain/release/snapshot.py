"""What a release reads of a closed window: its record (with the frozen policy), tree and team totals."""

from __future__ import annotations

from datetime import datetime

from chorus.server import store
from chorus.server.domain import windows as window_store
from chorus.server.domain.release.errors import InvalidRequest, NotFound
from chorus.server.model import hierarchy
from chorus.server.model.calendar import parse_window_id
from chorus.server.store import Tx


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


