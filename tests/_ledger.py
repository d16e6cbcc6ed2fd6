"""Ledgers in tests: every entry of a store in order (what an export streams, without gRPC), and
export lines decoded for editing and re-signed, for the tampering tests."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from chorus.server.domain import audit
from chorus.server.domain.ledger import Signer
from chorus.server.model.ledger_format import GENESIS_HASH, Entry, canonical_json, entry_body, entry_hash, parse_body
from chorus.server.store import Database


def ledger_entries(db: Database, page: int = audit.LEDGER_PAGE) -> Iterator[Entry]:
    """Entries from the first up to the head as of the first read, one short transaction per page."""
    for entries in audit.ledger_pages(db, 1, page):
        yield from entries


def line(e: dict[str, Any]) -> str:
    """An export line for a decoded entry, its body the canonical text of its current fields."""
    body = entry_body(e["seq"], e["time"], e["kind"], canonical_json(e["payload"]), e["prev_hash"])
    return json.dumps({"body": body, "hash": e["hash"], "signature": e["signature"]}, separators=(",", ":"))


def decode(text: str) -> dict[str, Any]:
    """An export line as an editable entry."""
    exported = json.loads(text)
    fields = parse_body(exported["body"])
    return {**fields, "hash": exported["hash"], "signature": exported["signature"]}


def resign(entries: list[dict[str, Any]], signer: Signer, start: int = 0) -> list[dict[str, Any]]:
    """Recompute prev_hash, hash and signature from index `start` on: a consistent forgery."""
    out = [dict(e) for e in entries]
    prev = out[start - 1]["hash"] if start > 0 else GENESIS_HASH
    for e in out[start:]:
        e["prev_hash"] = prev
        e["hash"] = entry_hash(entry_body(e["seq"], e["time"], e["kind"], canonical_json(e["payload"]), prev))
        e["signature"] = signer.sign(e["hash"])
        prev = e["hash"]
    return out
