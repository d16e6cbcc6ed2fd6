"""AuditService over real gRPC: policies, budgets, the ledger stream, the public key, roles."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from chorus.server.domain import audit, ledger
from chorus.server.model.ledger_format import Entry, canonical_json
from chorus.server.model.roles import Role
from chorus.server.root import Chorus
from chorus.server.transport.grpc_server import Server
from chorus.server.verifier import verify
from chorus.v1 import audit_pb2, audit_pb2_grpc, common_pb2
from tests._ledger import ledger_entries

from .conftest import TEAMS, WINDOW, open_and_close, release


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


@pytest.mark.slow
def test_policies_are_byte_identical_to_the_window_open_entries(officer: Auditor, released: Chorus) -> None:
    reply = officer("ListPolicies", audit_pb2.ListPoliciesRequest())
    assert [p.window.id for p in reply.policies] == ["2026-11-26", WINDOW]  # newest first
    assert [p.window.state for p in reply.policies] == [common_pb2.WINDOW_STATE_OPEN,
                                                        common_pb2.WINDOW_STATE_CLOSED]
    opened = {json.loads(e.payload)["window"]: canonical_json(json.loads(e.payload)["policy"])
              for e in ledger_entries(released.db) if e.kind == "window_open"}
    for policy in reply.policies:
        assert policy.policy_json == opened[policy.window.id]
    one = officer("ListPolicies", audit_pb2.ListPoliciesRequest(window=WINDOW))
    assert [p.window.id for p in one.policies] == [WINDOW]


@pytest.mark.slow
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


@pytest.mark.slow
def test_budgets_show_cap_spent_remaining_and_releases(officer: Auditor, released: Chorus) -> None:
    reply = officer("GetBudget", audit_pb2.GetBudgetRequest(window=WINDOW))
    rows = {b.team: (b.cap, b.spent, b.remaining, b.releases) for b in reply.budgets}
    assert rows == {"team-blue": ("1", "0.05", "0.95", 1), "team-red": ("1", "0.2", "0.8", 4),
                    "team-tiny": ("1", "0", "1", 0)}
    assert [b.team for b in reply.budgets] == sorted(TEAMS)
    assert {b.unit for b in reply.budgets} == {"epsilon"}  # the suite's policy is discrete Laplace
    assert officer("GetBudget", audit_pb2.GetBudgetRequest(window="2026-11-26")).budgets == []  # still open


@pytest.mark.slow
def test_the_verifier_reproduces_the_server_budgets_exactly(officer: Auditor, released: Chorus) -> None:
    release(released, "team-blue", "ai.tokens", "mean")  # a second window-team charge, post-processed
    lines = [verify.export_line(m) for page in officer("StreamLedger", audit_pb2.StreamLedgerRequest())
             for m in page.entries]
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


@pytest.mark.slow
def test_the_stream_sends_the_stored_bytes_in_pages_from_the_token(officer: Auditor, released: Chorus) -> None:
    stored = list(ledger_entries(released.db))
    pages = list(officer("StreamLedger", audit_pb2.StreamLedgerRequest(page_token="4", page_size=3)))
    assert [len(p.entries) for p in pages] == [3] * (len(stored[3:]) // 3) + (
        [len(stored[3:]) % 3] if len(stored[3:]) % 3 else [])
    assert [p.next_page_token for p in pages] == [str(4 + 3 * (n + 1)) if 3 * (n + 1) < len(stored[3:])
                                                  else str(len(stored) + 1) for n in range(len(pages))]
    streamed = [m for p in pages for m in p.entries]
    assert [(m.body, m.hash, m.signature) for m in streamed] == [(e.body, e.hash, e.signature)
                                                                  for e in stored[3:]]
    assert [json.loads(m.body)["seq"] for m in streamed] == list(range(4, len(stored) + 1))
    assert list(officer("StreamLedger", audit_pb2.StreamLedgerRequest(page_token="10000"))) == []
    # The last token continues a later stream exactly where this one ended.
    released.tokens.create(Role.ANALYST, "late-comer", released.clock.now(), actor="test")
    later = list(officer("StreamLedger", audit_pb2.StreamLedgerRequest(page_token=pages[-1].next_page_token)))
    assert [json.loads(m.body)["kind"] for p in later for m in p.entries] == ["token_create"]


@pytest.mark.slow
@pytest.mark.parametrize("request_fields, field", [
    ({"page_token": "abc"}, "page_token"), ({"page_token": "0"}, "page_token"),
    ({"page_token": "-1"}, "page_token"), ({"page_token": "9999999999999999999"}, "page_token"),
    ({"page_token": "99999999999999999999"}, "page_token"), ({"page_token": "\uff11"}, "page_token"),
    ({"page_size": -1}, "page_size")])
def test_a_malformed_stream_request_is_refused_by_field(officer: Auditor, request_fields: dict[str, Any],
                                                        field: str) -> None:
    with pytest.raises(grpc.RpcError) as refused:
        list(officer("StreamLedger", audit_pb2.StreamLedgerRequest(**request_fields)))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in refused.value.details()


def test_stream_messages_stay_under_the_byte_bound_whatever_the_page_size(released: Chorus) -> None:
    pages = list(audit.ledger_pages(released.db, 1, 1000, max_bytes=2000))
    assert len(pages) > 1 and all(pages)
    assert [e.seq for p in pages for e in p] == list(range(1, sum(map(len, pages)) + 1))
    for p in pages:
        assert len(p) == 1 or sum(len(e.payload.encode()) + 400 for e in p) <= 2000


@pytest.mark.slow
def test_budgets_are_paged_by_position_and_a_token_only_continues_its_own_request(
        officer: Auditor, released: Chorus) -> None:
    everything = officer("GetBudget", audit_pb2.GetBudgetRequest()).budgets
    seen, token, pages = [], "", 0
    while True:
        reply = officer("GetBudget", audit_pb2.GetBudgetRequest(page_size=2, page_token=token))
        seen += [(b.window, b.team) for b in reply.budgets]
        pages += 1
        token = reply.next_page_token
        if not token:
            break
    assert seen == [(b.window, b.team) for b in everything] and len(seen) == len(TEAMS)
    assert pages == 2
    first = officer("GetBudget", audit_pb2.GetBudgetRequest(page_size=2))
    for bad in (audit_pb2.GetBudgetRequest(window=WINDOW, page_token=first.next_page_token),
                audit_pb2.GetBudgetRequest(page_token="not-a-token"),
                audit_pb2.GetBudgetRequest(page_token=base64.urlsafe_b64encode(
                    json.dumps(["budget", "", 2**70, WINDOW, "team-red"]).encode()).decode()),
                audit_pb2.GetBudgetRequest(page_size=-5)):
        with pytest.raises(grpc.RpcError) as refused:
            officer("GetBudget", bad)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_the_ledger_is_read_in_bounded_pages_up_to_the_head_at_the_start(
        released: Chorus, monkeypatch: pytest.MonkeyPatch) -> None:
    limits: list[int] = []
    real = ledger.read_entries

    def counting(tx: Any, from_seq: int, limit: int) -> list[Entry]:
        limits.append(limit)
        return real(tx, from_seq, limit)

    monkeypatch.setattr(audit, "read_entries", counting)
    head, _ = released.db.run(audit.ledger_head, name="head")
    stream = ledger_entries(released.db, page=3)
    first = next(stream)
    released.tokens.create(Role.ANALYST, "late-comer", released.clock.now(), actor="test")  # after start
    seqs = [first.seq, *(e.seq for e in stream)]
    assert seqs == list(range(1, head + 1))  # the entry appended mid-stream waits for the next export
    assert max(limits) == 3 and len(limits) == -(-head // 3)


@pytest.mark.slow
def test_the_public_key_is_the_signing_key(officer: Auditor, released: Chorus) -> None:
    pem = officer("GetPublicKey", audit_pb2.GetPublicKeyRequest()).public_key_pem
    assert pem == released.ledger.signer.public_key_pem()
    assert pem.startswith("-----BEGIN PUBLIC KEY-----")


@pytest.mark.slow
@pytest.mark.parametrize("role", [Role.INGEST, Role.ANALYST])
def test_other_roles_cannot_audit(released: Chorus, channel: grpc.Channel, role: Role) -> None:
    secret, _ = released.tokens.create(role, f"not-an-officer-{role.value}", released.clock.now(), "test")
    with pytest.raises(grpc.RpcError) as denied:
        Auditor(channel, secret)("GetBudget", audit_pb2.GetBudgetRequest())
    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert secret not in denied.value.details()


@pytest.mark.slow
def test_auditing_needs_a_token(channel: grpc.Channel) -> None:
    stub = audit_pb2_grpc.AuditServiceStub(channel)
    with pytest.raises(grpc.RpcError) as denied:
        list(stub.StreamLedger(audit_pb2.StreamLedgerRequest(), timeout=30))
    assert denied.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_a_window_closing_between_pages_neither_repeats_nor_shifts_them(released: Chorus) -> None:
    def page(token: str) -> tuple[list[tuple[str, str]], str]:
        rows, following = released.db.run(lambda tx: audit.budgets(tx, "", 2, token), name="t")
        return [(b.window, b.team) for b in rows], following

    before = [(b.window, b.team) for b in released.db.run(lambda tx: audit.budgets(tx)[0], name="t")]
    first, token = page("")
    released.close_window("2026-11-26", actor="test-admin")  # its budgets sort before every page
    second, token = page(token)
    assert first + second == before and token == ""


@pytest.mark.slow
def test_get_budget_page_size_zero_is_the_default_docs_api_states(chorus: Chorus, server: Server,
                                                                  auditor_token: str) -> None:
    """docs/api.md: GetBudget's page_size 0 is 100 a page (as the proto says), 1000 at most."""
    chorus.import_roster([(f"user-many-{i}", f"team-{i:03d}") for i in range(150)], actor="test-admin")
    open_and_close(chorus)
    with grpc.insecure_channel(server.address) as ch:
        officer = Auditor(ch, auditor_token)
        default = officer("GetBudget", audit_pb2.GetBudgetRequest(page_size=0))
        assert len(default.budgets) == audit.DEFAULT_PAGE_SIZE == 100 and default.next_page_token
        assert len(officer("GetBudget", audit_pb2.GetBudgetRequest(page_size=5000)).budgets) == 150
    text = " ".join((Path(__file__).parents[2] / "docs" / "api.md").read_text(encoding="utf-8").split())
    assert "`GetBudget` and `StreamLedger` take `page_size` (0: the default, 100" in text
