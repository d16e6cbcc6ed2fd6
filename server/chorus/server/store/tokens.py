"""The `tokens` table: API tokens by name, role and SHA-256 of the secret (never the secret).

Invariants: a name is taken once and never reused, even after revocation (`create` is an
`INSERT ... ON CONFLICT DO NOTHING`), so the ledger's token entries stay unambiguous;
revocation sets `revoked_at` once (`revoke`, conditional), and a revoked token never
authenticates again (`active_by_hash`). Times are epoch seconds.
"""

from __future__ import annotations

from dataclasses import dataclass

from chorus.server.store._db import Tx

__all__ = ["TokenRow", "active_by_hash", "all_tokens", "count", "create", "get", "revoke"]

_COLUMNS = "name, role, created_at, revoked_at"


@dataclass(frozen=True, slots=True)
class TokenRow:
    name: str
    role: str
    created_at: int
    revoked_at: int | None


def _row(row: tuple) -> TokenRow:
    name, role, created, revoked = row
    return TokenRow(name, role, int(created), None if revoked is None else int(revoked))


def create(tx: Tx, name: str, role: str, token_hash: str, created_at: int) -> bool:
    """Store a new token; False (nothing stored) when the name exists."""
    return bool(tx.execute("INSERT INTO tokens (name, role, token_hash, created_at) VALUES (?, ?, ?, ?) "
                           "ON CONFLICT (name) DO NOTHING", (name, role, token_hash, created_at)))


def get(tx: Tx, name: str) -> TokenRow | None:
    rows = tx.query(f"SELECT {_COLUMNS} FROM tokens WHERE name = ?", (name,))
    return _row(rows[0]) if rows else None


def revoke(tx: Tx, name: str, at: int) -> bool:
    """Revoke an active token, taking its row lock; False when it was not active."""
    return bool(tx.execute("UPDATE tokens SET revoked_at = ? WHERE name = ? AND revoked_at IS NULL", (at, name)))


def all_tokens(tx: Tx) -> list[TokenRow]:
    """Every token, revoked ones included, by name."""
    return [_row(r) for r in tx.query(f"SELECT {_COLUMNS} FROM tokens ORDER BY name")]


def active_by_hash(tx: Tx, token_hash: str) -> tuple[str, str] | None:
    """(name, role) of the unrevoked token with this hash, if any."""
    rows = tx.query("SELECT name, role FROM tokens WHERE token_hash = ? AND revoked_at IS NULL", (token_hash,))
    return (rows[0][0], rows[0][1]) if rows else None


def count(tx: Tx) -> int:
    """How many tokens exist, revoked ones included."""
    return int(tx.query("SELECT COUNT(*) FROM tokens")[0][0])
