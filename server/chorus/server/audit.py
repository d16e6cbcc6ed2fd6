"""What privacy officers read: frozen window policies, budgets per team-window, the ledger.

Everything here is read-only except `record_config`, which appends a "config" ledger entry
when a server starts with a policy that differs from the last one recorded, so the ledger
shows every policy the operator ever ran, not only those frozen into a window.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime

from chorus.server import lifecycle
from chorus.server.config import Policy
from chorus.server.ledger import Entry, Ledger, canonical_json, read_entries
from chorus.server.privacy.epsilon import Epsilon
from chorus.server.store._db import Database, Tx

CONFIG_KIND = "config"
#: Entries per read transaction when streaming: bounds memory and lock time, whatever the ledger size.
LEDGER_PAGE = 500


def policy_sha256(policy_json: dict[str, object]) -> str:
    """SHA-256 of a policy's canonical JSON: the identity a "config" entry records."""
    return hashlib.sha256(canonical_json(policy_json).encode()).hexdigest()


def record_config(db: Database, ledger: Ledger, policy: Policy, now: datetime) -> Entry | None:
    """Append a "config" entry if `policy` differs from the last recorded one; return it or None."""
    policy_json = policy.to_json()
    digest = policy_sha256(policy_json)

    def record(tx: Tx) -> Entry | None:
        # Take the ledger head's row lock before reading: replicas starting together with the
        # same new policy then record it once, not once each.
        tx.execute("UPDATE ledger_head SET seq = seq WHERE id = 1")
        rows = tx.query("SELECT payload FROM ledger WHERE kind = ? ORDER BY seq DESC LIMIT 1",
                        (CONFIG_KIND,))
        if rows and json.loads(rows[0][0]).get("policy_sha256") == digest:
            return None
        return ledger.append(tx, CONFIG_KIND, {"policy": policy_json, "policy_sha256": digest}, now)

    return db.run(record, name="record_config")


def list_policies(tx: Tx, window_id: str = "") -> list[lifecycle.WindowRecord]:
    """One window (raises WindowNotFound) or, for "", every window newest first."""
    if window_id:
        return [lifecycle.get(tx, window_id)]
    return lifecycle.list_windows(tx)


@dataclass(frozen=True, slots=True)
class TeamWindowBudget:
    """The privacy budget of one team in one closed window, in exact epsilon."""

    window: str
    team: str
    cap: Epsilon
    spent: Epsilon
    releases: int

    @property
    def remaining(self) -> Epsilon:
        return self.cap - self.spent


def budgets(tx: Tx, window_id: str = "") -> list[TeamWindowBudget]:
    """Budgets of one window (raises WindowNotFound; empty while it is open) or of all windows.

    Newest window first, teams by name. Budgets exist from a window's close on.
    """
    sql = ("SELECT b.window_id, b.team, b.cap_micros, b.spent_micros, b.releases FROM budgets b "
           "JOIN windows w ON w.id = b.window_id")
    params: tuple[str, ...] = ()
    if window_id:
        lifecycle.get(tx, window_id)
        sql += " WHERE b.window_id = ?"
        params = (window_id,)
    rows = tx.query(sql + " ORDER BY w.start_at DESC, b.team", params)
    return [TeamWindowBudget(w, t, Epsilon(cap), Epsilon(spent), n) for w, t, cap, spent, n in rows]


def ledger_head(tx: Tx) -> tuple[int, str]:
    """(seq, hash) of the newest entry; (0, 64 zeros) for an empty ledger."""
    (seq, digest), = tx.query("SELECT seq, hash FROM ledger_head WHERE id = 1")
    return int(seq), str(digest)


def iter_ledger(db: Database, from_seq: int = 1, page: int = LEDGER_PAGE) -> Iterator[Entry]:
    """Entries from `from_seq` up to the head as of the first read, one short transaction per page.

    Stopping at that head gives an export a well-defined end even while the server keeps
    appending; the next export continues from there.
    """
    last, _ = db.run(ledger_head, name="ledger_head")
    seq = max(from_seq, 1)
    while seq <= last:
        entries = db.run(functools.partial(read_entries, from_seq=seq, limit=min(page, last - seq + 1)),
                         name="read_ledger")
        if not entries:
            return
        yield from entries
        seq = entries[-1].seq + 1
