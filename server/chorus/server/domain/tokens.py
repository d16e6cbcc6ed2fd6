"""Bearer tokens with one role each, stored as SHA-256 hashes: issue, authenticate, revoke,
list. The gRPC gate that uses them is `chorus.server.transport.gate`.

A token's secret never reaches the store, the ledger or a log: only its SHA-256 hash is kept,
and the ledger records the name and role of each created or revoked token.

Revocation is at once everywhere: every call looks its token up in the store, in a read
transaction (`Database.read`), which takes no writer lock and costs one indexed SELECT. A
per-process cache would let the other workers of a server, and other replicas, accept a
revoked token until it expired; with lock-free reads it would save almost nothing.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime

from chorus.server import store
from chorus.server.domain.ledger import Ledger
from chorus.server.model.roles import Principal, Role
from chorus.server.store import Database, Tx

TOKEN_PREFIX = "chorus_"
MAX_TOKEN_NAME = 64
#: Longer bearer values are rejected before hashing; real tokens are 50 characters.
MAX_TOKEN_LENGTH = 256


@dataclass(frozen=True, slots=True)
class TokenInfo:
    name: str
    role: Role
    created: datetime
    revoked: datetime | None


class TokenError(ValueError):
    pass


class TokenExists(TokenError):
    """A token of that name exists (or existed: names are never reused)."""


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _stamp(when: datetime) -> int:
    return int(when.timestamp())


def _info(row: store.tokens.TokenRow) -> TokenInfo:
    return TokenInfo(row.name, Role(row.role), datetime.fromtimestamp(row.created_at, UTC),
                     datetime.fromtimestamp(row.revoked_at, UTC) if row.revoked_at is not None else None)


class Tokens:
    """Token lifecycle; every change is recorded in the ledger (name and role, never the secret)."""

    def __init__(self, db: Database, ledger: Ledger) -> None:
        self._db = db
        self._ledger = ledger

    def create(self, role: Role, name: str, now: datetime, actor: str) -> tuple[str, TokenInfo]:
        if not name or len(name) > MAX_TOKEN_NAME or not name.isprintable():
            raise TokenError(f"token name must be 1..{MAX_TOKEN_NAME} printable characters")
        secret = TOKEN_PREFIX + secrets.token_urlsafe(32)

        def create(tx: Tx) -> TokenInfo:
            if not store.tokens.create(tx, name, role.value, hash_token(secret), _stamp(now)):
                raise TokenExists(f"a token named {name!r} already exists (names are never reused, even after "
                                 "revocation, so the ledger stays unambiguous); pick another name")
            self._ledger.append(tx, "token_create", {"name": name, "role": role.value, "by": actor}, now)
            return TokenInfo(name, role, now.replace(microsecond=0), None)

        return secret, self._db.run(create, name="token_create")

    def revoke(self, name: str, now: datetime, actor: str) -> TokenInfo:
        """Revoke by name; every call that starts after this returns is refused, on every worker
        and replica of the store."""
        def revoke(tx: Tx) -> TokenInfo:
            if store.tokens.get(tx, name) is None:
                raise LookupError(f"no token named {name!r}")
            # Conditional: of two concurrent revocations only one changes the row and records it.
            if store.tokens.revoke(tx, name, _stamp(now)):
                self._ledger.append(tx, "token_revoke", {"name": name, "by": actor}, now)
            row = store.tokens.get(tx, name)
            assert row is not None
            return _info(row)

        return self._db.run(revoke, name="token_revoke")

    def list(self) -> list[TokenInfo]:
        return self._db.read(lambda tx: [_info(r) for r in store.tokens.all_tokens(tx)], name="token_list")

    def authenticate(self, token: str) -> Principal | None:
        """The active token's principal, or None for a malformed, unknown or revoked token."""
        if not token.startswith(TOKEN_PREFIX) or len(token) > MAX_TOKEN_LENGTH:
            return None  # not one of ours: no hashing, no store
        # Looking up by SHA-256 leaks nothing through timing: an attacker learns at most
        # about hashes of their own guesses, never about a stored token.
        digest = hash_token(token)
        found = self._db.read(lambda tx: store.tokens.active_by_hash(tx, digest), name="authenticate")
        return None if found is None else Principal(found[0], Role(found[1]))

    def count(self) -> int:
        return self._db.read(store.tokens.count, name="token_count")
