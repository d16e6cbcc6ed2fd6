"""AuditService: frozen policies, budgets per team-window, the signed ledger, its public key."""

from __future__ import annotations

from collections.abc import Iterator

import grpc

from chorus.server import audit, lifecycle
from chorus.server.app_context import Chorus
from chorus.server.services._convert import page, window_message
from chorus.server.services._errors import abort, invalid_argument
from chorus.server.windows import parse_window_id
from chorus.v1 import audit_pb2, audit_pb2_grpc


def _window_filter(context: grpc.ServicerContext, window: str) -> str:
    """The request's window id, validated; "" means every window."""
    if window:
        try:
            parse_window_id(window)
        except ValueError as exc:
            invalid_argument(context, str(exc), "window")
    return window


class AuditServicer(audit_pb2_grpc.AuditServiceServicer):
    def __init__(self, chorus: Chorus, *, ledger_page: int = audit.LEDGER_PAGE) -> None:
        self._chorus = chorus
        self._ledger_page = ledger_page

    def ListPolicies(self, request: audit_pb2.ListPoliciesRequest,
                     context: grpc.ServicerContext) -> audit_pb2.ListPoliciesResponse:
        window = _window_filter(context, request.window)
        try:
            records = self._chorus.db.run(lambda tx: audit.list_policies(tx, window), name="list_policies")
        except lifecycle.WindowNotFound as exc:
            abort(context, grpc.StatusCode.NOT_FOUND, str(exc.args[0]), reason="NOT_FOUND")
        return audit_pb2.ListPoliciesResponse(policies=[
            audit_pb2.WindowPolicy(window=window_message(r), policy_json=r.policy_json) for r in records])

    def GetBudget(self, request: audit_pb2.GetBudgetRequest,
                  context: grpc.ServicerContext) -> audit_pb2.GetBudgetResponse:
        window = _window_filter(context, request.window)
        try:
            rows = self._chorus.db.run(lambda tx: audit.budgets(tx, window), name="get_budget")
        except lifecycle.WindowNotFound as exc:
            abort(context, grpc.StatusCode.NOT_FOUND, str(exc.args[0]), reason="NOT_FOUND")
        shown, following = page(rows, request, context)
        return audit_pb2.GetBudgetResponse(next_page_token=following, budgets=[
            audit_pb2.TeamWindowBudget(window=b.window, team=b.team, cap=str(b.cap), spent=str(b.spent),
                                       remaining=str(b.remaining), releases=b.releases) for b in shown])

    def StreamLedger(self, request: audit_pb2.StreamLedgerRequest,
                     context: grpc.ServicerContext) -> Iterator[audit_pb2.LedgerEntry]:
        for e in audit.iter_ledger(self._chorus.db, request.from_seq, self._ledger_page):
            yield audit_pb2.LedgerEntry(seq=e.seq, time=e.at, kind=e.kind, payload=e.payload,
                                        prev_hash=e.prev_hash, hash=e.hash, signature=e.signature)

    def GetPublicKey(self, request: audit_pb2.GetPublicKeyRequest,
                     context: grpc.ServicerContext) -> audit_pb2.GetPublicKeyResponse:
        return audit_pb2.GetPublicKeyResponse(public_key_pem=self._chorus.ledger.signer.public_key_pem())
