"""Reading per-person usage rows the way only a test (or an operator with disk access) could:
by recomputing pseudonyms from an open window's key."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from chorus.server.domain.ingest import pseudonym
from chorus.server.model.policy import Policy

Query = Callable[[str, Sequence[Any]], list[tuple[Any, ...]]]


def person_totals(query: Query, window_id: str, users: Iterable[str]) -> dict[tuple[str, str], int]:
    """Non-zero totals by (user, metric) in an open window, for the given users."""
    (key,), = query("SELECT hmac_key FROM window_keys WHERE window_id = ?", (window_id,))
    (policy_json,), = query("SELECT policy FROM windows WHERE id = ?", (window_id,))
    metrics = [m.name for m in Policy.from_json(json.loads(policy_json)).metrics]
    slots = ", ".join(f"t{i}" for i in range(len(metrics)))
    by_pseudonym = {bytes(p): totals for p, *totals in
                    query(f"SELECT pseudonym, {slots} FROM usage WHERE window_id = ?", (window_id,))}
    out = {}
    for user in users:
        for metric, total in zip(metrics, by_pseudonym.get(pseudonym(bytes(key), user), ()), strict=False):
            if total:
                out[(user, metric)] = total
    return out


def person_team(query: Query, window_id: str, user: str) -> str | None:
    (key,), = query("SELECT hmac_key FROM window_keys WHERE window_id = ?", (window_id,))
    rows = query("SELECT team FROM usage WHERE window_id = ? AND pseudonym = ?",
                 (window_id, pseudonym(bytes(key), user)))
    return rows[0][0] if rows else None
