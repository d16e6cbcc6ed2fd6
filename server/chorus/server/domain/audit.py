"""What privacy officers read: frozen window policies, budgets per team-window, the ledger.

Everything here is read-only except `record_config`, which appends a "config" ledger entry
when a server starts with a policy that differs from the last one recorded, so the ledger
shows every policy the operator ever ran, not only those frozen into a window.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime

from chorus.server import store
from chorus.server.domain import windows as window_store
from chorus.server.domain.ledger import Ledger, read_entries
from chorus.server.model.ledger_format import Entry, policy_sha256
from chorus.server.model.policy import Policy
from chorus.server.privacy.budget import Budget
from chorus.server.privacy.epsilon import Loss
from chorus.server.store import Database, Tx

CONFIG_KIND = "config"
#: Entries per read transaction when streaming: bounds memory and lock time, whatever the ledger size.
LEDGER_PAGE = 500
#: Page sizes of the paged audit listings (AIP-158): what 0 means, and the most per page.
DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
#: A page of ledger entries stays under this many bytes of entry text, whatever page_size
#: asked for: far below gRPC's default 4 MiB message limit, even for policy-sized entries.
MAX_PAGE_BYTES = 1 << 20


class PageTokenError(ValueError):
    """A page token that this listing did not issue for this request."""


def page_size(requested: int) -> int:
    """AIP-158: 0 is the default, above the maximum is the maximum, negative is an error."""
    if requested < 0:
        raise ValueError(f"page_size {requested} must be >= 0 (0 means {DEFAULT_PAGE_SIZE}, "
                         f"at most {MAX_PAGE_SIZE} per page)")
    return min(requested or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


def record_config(db: Database, ledger: Ledger, policy: Policy, now: datetime) -> Entry | None:
    """Append a "config" entry if `policy` differs from the last recorded one; return it or None."""
    policy_json = policy.to_json()
    digest = policy_sha256(policy_json)

    def record(tx: Tx) -> Entry | None:
        # Take the ledger head's row lock before reading: replicas starting together with the
        # same new policy then record it once, not once each.
        store.ledger.lock_head(tx)
        last = store.ledger.last_payload(tx, CONFIG_KIND)
        if last is not None and json.loads(last).get("policy_sha256") == digest:
            return None
        return ledger.append(tx, CONFIG_KIND, {"policy": policy_json, "policy_sha256": digest}, now)

    return db.run(record, name="record_config")


def list_policies(tx: Tx, window_id: str = "") -> list[window_store.WindowRecord]:
    """One window (raises WindowNotFound) or, for "", every window newest first."""
    if window_id:
        return [window_store.get(tx, window_id)]
    return window_store.list_windows(tx)


@dataclass(frozen=True, slots=True)
class TeamWindowBudget:
    """The privacy budget of one team in one closed window, exact, in the window's unit (epsilon or
    rho, from its frozen policy's mechanism)."""

    window: str
    team: str
    cap: Loss
    spent: Loss
    releases: int

    @property
    def remaining(self) -> Loss:
        return Budget(self.cap, self.spent).remaining


def budgets(tx: Tx, window_id: str = "", limit: int = DEFAULT_PAGE_SIZE,
            page_token: str = "") -> tuple[list[TeamWindowBudget], str]:
    """One page of budgets of one window (raises WindowNotFound; empty while it is open) or of
    all windows, and the token of the next page ("" on the last).

    Newest window first, teams by name. Budgets exist from a window's close on. The token is
    the position of the page's last row (keyset paging), so rows added meanwhile (a window
    closing) neither repeat nor shift a page; it is bound to `window_id` (PageTokenError).
    """
    if window_id:
        window_store.get(tx, window_id)
    after = _decode_token(page_token, window_id) if page_token else None
    rows = store.budgets.page(tx, window_id, after, limit + 1)
    units = {w: window_store.get(tx, w).policy.unit for w in {r.window for r in rows[:limit]}}
    page = [TeamWindowBudget(r.window, r.team, units[r.window](r.cap_micros), units[r.window](r.spent_micros),
                             r.releases) for r in rows[:limit]]
    more = len(rows) > limit
    token = _encode_token(window_id, rows[limit - 1].start_at, page[-1].window, page[-1].team) if more else ""
    return page, token


def _encode_token(scope: str, start: int, window: str, team: str) -> str:
    text = json.dumps(["budget", scope, start, window, team], separators=(",", ":"))
    return base64.urlsafe_b64encode(text.encode()).decode()


def _decode_token(token: str, scope: str) -> tuple[int, str, str]:
    """(start, window, team) of a budget page token issued for the same window filter."""
    try:
        kind, issued_for, start, window, team = json.loads(base64.urlsafe_b64decode(token.encode()))
        if (kind != "budget" or not isinstance(start, int) or not -2**63 <= start < 2**63
                or not isinstance(window, str) or not isinstance(team, str)):
            raise ValueError
    except (ValueError, TypeError, binascii.Error):
        raise PageTokenError(f"page_token {token[:40]!r} is not a token GetBudget issued") from None
    if issued_for != scope:
        raise PageTokenError(f"page_token was issued for window {issued_for or '(every window)'!r}, "
                             f"not {scope or '(every window)'!r}: a token only continues the same request")
    return start, window, team


def ledger_head(tx: Tx) -> tuple[int, str]:
    """(seq, hash) of the newest entry; (0, 64 zeros) for an empty ledger."""
    return store.ledger.head(tx)


def ledger_pages(db: Database, from_seq: int, size: int,
                 max_bytes: int = MAX_PAGE_BYTES) -> Iterator[list[Entry]]:
    """Consecutive entries from `from_seq` up to the head as of the first read, in pages of at
    most `size` entries and (unless one entry alone is larger) `max_bytes` of entry text.

    One short read transaction per `size` entries. Stopping at the first read's head gives an
    export a well-defined end even while the server keeps appending; the next export
    continues from there.
    """
    last, _ = db.read(ledger_head, name="ledger_head")
    seq = max(from_seq, 1)
    while seq <= last:
        entries = db.read(functools.partial(read_entries, from_seq=seq, limit=min(size, last - seq + 1)),
                         name="read_ledger")
        if not entries:
            return
        page: list[Entry] = []
        used = 0
        for entry in entries:
            cost = len(entry.payload.encode()) + 400  # plus the body's envelope, hash and signature
            if page and used + cost > max_bytes:
                yield page
                page, used = [], 0
            page.append(entry)
            used += cost
        yield page
        seq = entries[-1].seq + 1


class AuditTrail:
    """What AuditService serves, each call in its own read transaction(s)."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def policies(self, window_id: str = "") -> list[window_store.WindowRecord]:
        """See `list_policies`; raises WindowNotFound."""
        return self._db.read(lambda tx: list_policies(tx, window_id), name="list_policies")

    def budgets(self, window_id: str, limit: int, page_token: str) -> tuple[list[TeamWindowBudget], str]:
        """See `budgets`; raises WindowNotFound or PageTokenError."""
        return self._db.read(lambda tx: budgets(tx, window_id, limit, page_token), name="get_budget")

    def ledger_pages(self, from_seq: int, size: int) -> Iterator[list[Entry]]:
        """See `ledger_pages`."""
        return ledger_pages(self._db, from_seq, size)
