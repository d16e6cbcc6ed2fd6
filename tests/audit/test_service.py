"""AuditService over real gRPC: policies, budgets, the ledger stream, the public key, roles."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from chorus.server import audit, ledger, verify
from chorus.server.app import Server
from chorus.server.app_context import Chorus
from chorus.server.auth import Role
from chorus.server.ledger import canonical_json
from chorus.v1 import audit_pb2, audit_pb2_grpc, common_pb2

from .conftest import TEAMS, WINDOW, release


class Auditor:
    """An AuditService stub that sends a bearer token."""

    def __init__(self, channel: grpc.Channel, token: str) -> None:
        self.stub = audit_pb2_grpc.AuditServiceStub(channel)
        self.metadata = (("authorization", f"Bearer {token}"),)

    def __call__(self, method: str, request: Any) -> Any:
        return getattr(self.stub, method)(request, metadata=self.metadata, timeout=30)


@pytest.fixture
def channel(server: Server) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(server.address) as ch:
        yield ch


@pytest.fixture
def officer(released: Chorus, channel: grpc.Channel, auditor_token: str) -> Auditor:
    return Auditor(channel, auditor_token)


def test_policies_are_byte_identical_to_the_window_open_entries(officer: Auditor, released: Chorus) -> None:
    reply = officer("ListPolicies", audit_pb2.ListPoliciesRequest())
    assert [p.window.id for p in reply.policies] == ["2026-11-26", WINDOW]  # newest first
    assert [p.window.state for p in reply.policies] == [common_pb2.WINDOW_STATE_OPEN,
                                                        common_pb2.WINDOW_STATE_CLOSED]
    opened = {json.loads(e.payload)["window"]: canonical_json(json.loads(e.payload)["policy"])
              for e in audit.iter_ledger(released.db) if e.kind == "window_open"}
    for policy in reply.policies:
        assert policy.policy_json == opened[policy.window.id]
    one = officer("ListPolicies", audit_pb2.ListPoliciesRequest(window=WINDOW))
    assert [p.window.id for p in one.policies] == [WINDOW]


@pytest.mark.parametrize("method", ["ListPolicies", "GetBudget"])
def test_unknown_and_malformed_windows_are_refused_by_name(officer: Auditor, method: str) -> None:
    request = getattr(audit_pb2, f"{method}Request")
    with pytest.raises(grpc.RpcError) as unknown:
        officer(method, request(window="2020-01-01"))
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
    assert "2020-01-01" in unknown.value.details()
    with pytest.raises(grpc.RpcError) as malformed:
        officer(method, request(window="yesterday"))
    assert malformed.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "yesterday" in malformed.value.details()


def test_budgets_show_cap_spent_remaining_and_releases(officer: Auditor, released: Chorus) -> None:
    reply = officer("GetBudget", audit_pb2.GetBudgetRequest(window=WINDOW))
    rows = {b.team: (b.cap, b.spent, b.remaining, b.releases) for b in reply.budgets}
    assert rows == {"team-blue": ("1", "0.05", "0.95", 1), "team-red": ("1", "0.2", "0.8", 4),
                    "team-tiny": ("1", "0", "1", 0)}
    assert [b.team for b in reply.budgets] == sorted(TEAMS)
    assert officer("GetBudget", audit_pb2.GetBudgetRequest(window="2026-11-26")).budgets == []  # still open


def test_the_verifier_reproduces_the_server_budgets_exactly(officer: Auditor, released: Chorus) -> None:
    release(released, "team-blue", "ai.tokens", "mean")  # a second window-team charge, post-processed
    lines = [verify.export_line(ledger.Entry(m.seq, m.time, m.kind, m.payload, m.prev_hash, m.hash,
                                             m.signature))
             for m in officer("StreamLedger", audit_pb2.StreamLedgerRequest())]
    pem = officer("GetPublicKey", audit_pb2.GetPublicKeyRequest()).public_key_pem
    key = verify.load_public_key(pem.encode())
    report = verify.verify_lines(lines, key)
    assert report.ok, report.violations
    server = {(b.window, b.team): (b.cap, b.spent, b.remaining, b.releases)
              for b in officer("GetBudget", audit_pb2.GetBudgetRequest()).budgets}
    recomputed = {k: (str(t.cap), str(t.spent), str(t.remaining), t.releases)
                  for k, t in report.totals.items()}
    assert recomputed == server
    assert server[(WINDOW, "team-blue")][3] == 3


def test_the_stream_starts_at_from_seq_and_matches_the_store(officer: Auditor, released: Chorus) -> None:
    stored = list(audit.iter_ledger(released.db))
    streamed = list(officer("StreamLedger", audit_pb2.StreamLedgerRequest(from_seq=4)))
    assert [m.seq for m in streamed] == [e.seq for e in stored[3:]]
    assert [(m.hash, m.signature, m.payload) for m in streamed] == [(e.hash, e.signature, e.payload)
                                                                     for e in stored[3:]]
    assert list(officer("StreamLedger", audit_pb2.StreamLedgerRequest(from_seq=10_000))) == []


def test_the_ledger_is_read_in_bounded_pages_up_to_the_head_at_the_start(
        released: Chorus, monkeypatch: pytest.MonkeyPatch) -> None:
    limits: list[int] = []
    real = ledger.read_entries

    def counting(tx: Any, from_seq: int, limit: int) -> list[ledger.Entry]:
        limits.append(limit)
        return real(tx, from_seq, limit)

    monkeypatch.setattr(audit, "read_entries", counting)
    head, _ = released.db.run(audit.ledger_head, name="head")
    stream = audit.iter_ledger(released.db, page=3)
    first = next(stream)
    released.tokens.create(Role.ANALYST, "late-comer", released.clock.now(), actor="test")  # after start
    seqs = [first.seq, *(e.seq for e in stream)]
    assert seqs == list(range(1, head + 1))  # the entry appended mid-stream waits for the next export
    assert max(limits) == 3 and len(limits) == -(-head // 3)


def test_the_public_key_is_the_signing_key(officer: Auditor, released: Chorus) -> None:
    pem = officer("GetPublicKey", audit_pb2.GetPublicKeyRequest()).public_key_pem
    assert pem == released.ledger.signer.public_key_pem()
    assert pem.startswith("-----BEGIN PUBLIC KEY-----")


@pytest.mark.parametrize("role", [Role.INGEST, Role.ANALYST])
def test_other_roles_cannot_audit(released: Chorus, channel: grpc.Channel, role: Role) -> None:
    secret, _ = released.tokens.create(role, f"not-an-officer-{role.value}", released.clock.now(), "test")
    with pytest.raises(grpc.RpcError) as denied:
        Auditor(channel, secret)("GetBudget", audit_pb2.GetBudgetRequest())
    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert secret not in denied.value.details()


def test_auditing_needs_a_token(channel: grpc.Channel) -> None:
    stub = audit_pb2_grpc.AuditServiceStub(channel)
    with pytest.raises(grpc.RpcError) as denied:
        list(stub.StreamLedger(audit_pb2.StreamLedgerRequest(), timeout=30))
    assert denied.value.code() == grpc.StatusCode.UNAUTHENTICATED
