"""Every ledger entry of a test's store, in order (what an export streams, without gRPC)."""

from __future__ import annotations

from collections.abc import Iterator

from chorus.server.domain import audit
from chorus.server.model.ledger_format import Entry
from chorus.server.store import Database


def ledger_entries(db: Database, page: int = audit.LEDGER_PAGE) -> Iterator[Entry]:
    """Entries from the first up to the head as of the first read, one short transaction per page."""
    for entries in audit.ledger_pages(db, 1, page):
        yield from entries
