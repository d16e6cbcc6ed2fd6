"""Bearer tokens with one role each, stored as SHA-256 hashes: issue, authenticate (with a
short cache), revoke, list. The gRPC gate that uses them is `chorus.server.transport.gate`.

A token's secret never reaches the store, the ledger or a log: only its SHA-256 hash is kept,
and the ledger records the name and role of each created or revoked token.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from collections.abc import Callable
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
#: How long a replica trusts a token it looked up: revocation on another replica takes
#: effect within this time (on the revoking replica, at once).
TOKEN_CACHE_SECONDS = 1.0
_TOKEN_CACHE_MAX = 4096


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
    """Token lifecycle; every change is recorded in the ledger (name and role, never the secret).

    Successful lookups are cached per token hash for `cache_seconds`, so a busy ingest path
    does not run a store transaction per RPC. Unknown tokens are never cached: a flood of
    guessed tokens cannot fill the cache, and a new token works at once.
    """

    def __init__(self, db: Database, ledger: Ledger, *, cache_seconds: float = TOKEN_CACHE_SECONDS,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self._db = db
        self._ledger = ledger
        self._cache_seconds = cache_seconds
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[Principal, float]] = {}
        # Bumped by every revocation: a lookup that raced with it must not cache its answer.
        self._generation = 0

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
        """Revoke by name; it stops working on this replica at once, elsewhere within the cache time."""
        def revoke(tx: Tx) -> TokenInfo:
            if store.tokens.get(tx, name) is None:
                raise LookupError(f"no token named {name!r}")
            # Conditional: of two concurrent revocations only one changes the row and records it.
            if store.tokens.revoke(tx, name, _stamp(now)):
                self._ledger.append(tx, "token_revoke", {"name": name, "by": actor}, now)
            row = store.tokens.get(tx, name)
            assert row is not None
            return _info(row)

        info = self._db.run(revoke, name="token_revoke")
        with self._lock:
            self._generation += 1
            self._cache = {k: v for k, v in self._cache.items() if v[0].name != name}
        return info

    def list(self) -> list[TokenInfo]:
        return self._db.run(lambda tx: [_info(r) for r in store.tokens.all_tokens(tx)], name="token_list")

    def authenticate(self, token: str) -> Principal | None:
        """The active token's principal, or None for a malformed, unknown or revoked token."""
        if not token.startswith(TOKEN_PREFIX) or len(token) > MAX_TOKEN_LENGTH:
            return None  # not one of ours: no hashing, no store
        # Looking up by SHA-256 leaks nothing through timing: an attacker learns at most
        # about hashes of their own guesses, never about a stored token.
        digest = hash_token(token)
        now = self._monotonic()
        with self._lock:
            cached = self._cache.get(digest)
            if cached is not None and cached[1] > now:
                return cached[0]
            generation = self._generation
        found = self._db.run(lambda tx: store.tokens.active_by_hash(tx, digest), name="authenticate")
        if found is None:
            return None
        who = Principal(found[0], Role(found[1]))
        with self._lock:
            if generation == self._generation:
                if len(self._cache) >= _TOKEN_CACHE_MAX:
                    self._cache = {k: v for k, v in self._cache.items() if v[1] > now}
                if len(self._cache) < _TOKEN_CACHE_MAX:
                    self._cache[digest] = (who, now + self._cache_seconds)
        return who

    def count(self) -> int:
        return self._db.run(store.tokens.count, name="token_count")
