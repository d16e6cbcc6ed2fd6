"""Token lifecycle: hashes only, every lookup a read transaction in the store (so revocation
holds at once on every replica), no store access for malformed tokens."""

from __future__ import annotations

import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest

from chorus.server.domain.tokens import Tokens
from chorus.server.model.roles import Principal, Role
from chorus.server.root import ADMIN_TOKEN_FILE, Chorus
from chorus.server.store import Database, Tx
from chorus.v1 import admin_pb2, admin_pb2_grpc
from tests._policy import suite_config
from tests._secrets import register

from .conftest import NOON, SecureServer, bearer

T = TypeVar("T")


class CountingDatabase:
    """A Database that counts transactions by name (reads as "read:<name>") and can run a hook
    after one."""

    def __init__(self, inner: Database) -> None:
        self.inner = inner
        self.dialect = inner.dialect
        self.runs: list[str] = []
        self.after: dict[str, Callable[[], object]] = {}

    def run(self, fn: Callable[[Tx], T], *, name: str) -> T:
        return self._counted(self.inner.run(fn, name=name), name)

    def read(self, fn: Callable[[Tx], T], *, name: str) -> T:
        return self._counted(self.inner.read(fn, name=name), f"read:{name}")

    def _counted(self, result: T, name: str) -> T:
        self.runs.append(name)
        hook = self.after.pop(name, None)
        if hook is not None:
            hook()
        return result

    @property
    def unavailable_count(self) -> int:
        return self.inner.unavailable_count

    def checkpoint(self) -> bool:
        return self.inner.checkpoint()

    def close(self) -> None:
        self.inner.close()


@pytest.fixture
def replicas(tmp_path: Path) -> Iterator[tuple[Chorus, Chorus]]:
    """Two instances over one SQLite file: two replicas."""
    first = Chorus(suite_config(), tmp_path / "data")
    second = Chorus(suite_config(), tmp_path / "data")
    yield first, second
    second.close()
    first.close()


def tokens_over(chorus: Chorus, **kwargs: Any) -> tuple[Tokens, CountingDatabase]:
    db = CountingDatabase(chorus.db)
    return Tokens(db, chorus.ledger, **kwargs), db


def test_only_the_hash_is_stored(replicas: tuple[Chorus, Chorus]) -> None:
    chorus, _ = replicas
    secret, info = chorus.tokens.create(Role.INGEST, "tool", NOON, "test")
    register(secret)
    stored = chorus.db.run(lambda tx: tx.query("SELECT * FROM tokens"), name="read")
    assert secret not in repr(stored)
    ledger = chorus.db.run(lambda tx: tx.query("SELECT payload FROM ledger"), name="read")
    assert secret not in repr(ledger) and "tool" in repr(ledger)
    assert info.role is Role.INGEST


def test_every_lookup_is_a_read_transaction(replicas: tuple[Chorus, Chorus]) -> None:
    chorus, _ = replicas
    tokens, db = tokens_over(chorus)
    secret, _ = tokens.create(Role.INGEST, "tool", NOON, "test")
    register(secret)
    db.runs.clear()
    for _ in range(3):
        assert tokens.authenticate(secret) == Principal("tool", Role.INGEST)
    assert db.runs == ["read:authenticate"] * 3


def test_malformed_and_unknown_tokens(replicas: tuple[Chorus, Chorus]) -> None:
    chorus, _ = replicas
    tokens, db = tokens_over(chorus)
    for value in ("", "garbage", "Bearer x", "chorus_" + "x" * 300, "\x00" * 10):
        assert tokens.authenticate(value) is None
    assert db.runs == []  # not our format: no hashing against the store at all
    unknown = "chorus_" + "B" * 43
    assert tokens.authenticate(unknown) is None
    assert tokens.authenticate(unknown) is None
    assert db.runs == ["read:authenticate", "read:authenticate"]


def test_revocation_is_immediate_on_the_same_replica(replicas: tuple[Chorus, Chorus]) -> None:
    chorus, _ = replicas
    tokens, _ = tokens_over(chorus)
    secret, _ = tokens.create(Role.ANALYST, "lead", NOON, "test")
    register(secret)
    assert tokens.authenticate(secret) is not None
    info = tokens.revoke("lead", NOON, "test")
    assert info.revoked is not None
    assert tokens.authenticate(secret) is None


def test_revocation_is_immediate_on_another_replica(replicas: tuple[Chorus, Chorus]) -> None:
    first, second = replicas
    secret, _ = first.tokens.create(Role.AUDITOR, "officer", NOON, "test")
    register(secret)
    assert second.tokens.authenticate(secret) == Principal("officer", Role.AUDITOR)
    first.tokens.revoke("officer", NOON, "test")
    assert second.tokens.authenticate(secret) is None


@pytest.mark.slow
def test_revoke_over_grpc_takes_effect_at_once(secure_server: SecureServer) -> None:
    assert secure_server.channel is not None
    admin = admin_pb2_grpc.AdminServiceStub(secure_server.channel)
    created = admin.CreateToken(admin_pb2.CreateTokenRequest(role=admin_pb2.ROLE_AUDITOR, name="soon-gone"),
                                metadata=secure_server.metadata(Role.ADMIN), timeout=10)
    register(created.token)
    list_policies = secure_server.channel.unary_unary("/chorus.v1.AuditService/ListPolicies")
    list_policies(b"", metadata=bearer(created.token), timeout=10)  # works
    admin.RevokeToken(admin_pb2.RevokeTokenRequest(name="soon-gone"),
                      metadata=secure_server.metadata(Role.ADMIN), timeout=10)
    with pytest.raises(grpc.RpcError) as err:
        list_policies(b"", metadata=bearer(created.token), timeout=10)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_first_start_admin_token(tmp_path: Path) -> None:
    chorus = Chorus(suite_config(), tmp_path / "data")
    try:
        path = chorus.bootstrap_admin_token()
        assert path == tmp_path / "data" / ADMIN_TOKEN_FILE
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        secret = path.read_text().strip()
        register(secret)
        assert chorus.tokens.authenticate(secret) == Principal("admin", Role.ADMIN)
        assert chorus.bootstrap_admin_token() is None  # only on a store without tokens
    finally:
        chorus.close()
