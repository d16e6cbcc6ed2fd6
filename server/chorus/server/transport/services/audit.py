"""AuditService: frozen policies, budgets per team-window, the signed ledger, its public key."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import grpc

from chorus.server.domain import audit
from chorus.server.domain import windows as window_store
from chorus.server.transport.rpc_errors import abort, invalid_argument
from chorus.server.transport.services._convert import parsed_window, window_message
from chorus.v1 import audit_pb2, audit_pb2_grpc


def _page_size(context: grpc.ServicerContext, requested: int) -> int:
    try:
        return audit.page_size(requested)
    except ValueError as exc:
        invalid_argument(context, str(exc), "page_size")


def _ledger_position(context: grpc.ServicerContext, token: str) -> int:
    """StreamLedger's documented page token: the decimal seq of the first entry; "" is 1."""
    if not token:
        return 1
    if not (token.isascii() and token.isdigit() and len(token) <= 19 and 1 <= int(token) < 2**63):
        invalid_argument(context, f"page_token {token[:40]!r} must be the decimal sequence number "
                                  "(>= 1) of the first entry to send, as next_page_token gives it", "page_token")
    return int(token)


class AuditServicer(audit_pb2_grpc.AuditServiceServicer):
    def __init__(self, trail: audit.AuditTrail, public_key_pem: Callable[[], str], *,
                 ledger_page: int = audit.LEDGER_PAGE) -> None:
        self._trail = trail
        self._public_key_pem = public_key_pem
        self._ledger_page = ledger_page

    def ListPolicies(self, request: audit_pb2.ListPoliciesRequest,
                     context: grpc.ServicerContext) -> audit_pb2.ListPoliciesResponse:
        window = parsed_window(context, request.window, empty_means_all=True)
        try:
            records = self._trail.policies(window)
        except window_store.WindowNotFound as exc:
            abort(context, grpc.StatusCode.NOT_FOUND, str(exc.args[0]), reason="NOT_FOUND")
        return audit_pb2.ListPoliciesResponse(policies=[
            audit_pb2.WindowPolicy(window=window_message(r), policy_json=r.policy_json) for r in records])

    def GetBudget(self, request: audit_pb2.GetBudgetRequest,
                  context: grpc.ServicerContext) -> audit_pb2.GetBudgetResponse:
        window = parsed_window(context, request.window, empty_means_all=True)
        size = _page_size(context, request.page_size)
        try:
            rows, token = self._trail.budgets(window, size, request.page_token)
        except window_store.WindowNotFound as exc:
            abort(context, grpc.StatusCode.NOT_FOUND, str(exc.args[0]), reason="NOT_FOUND")
        except audit.PageTokenError as exc:
            invalid_argument(context, str(exc), "page_token")
        return audit_pb2.GetBudgetResponse(next_page_token=token, budgets=[
            audit_pb2.TeamWindowBudget(window=b.window, team=b.team, cap=str(b.cap), spent=str(b.spent),
                                       remaining=str(b.remaining), releases=b.releases, unit=b.cap.UNIT)
            for b in rows])

    def StreamLedger(self, request: audit_pb2.StreamLedgerRequest,
                     context: grpc.ServicerContext) -> Iterator[audit_pb2.StreamLedgerResponse]:
        size = _page_size(context, request.page_size)
        from_seq = _ledger_position(context, request.page_token)
        for page in self._trail.ledger_pages(from_seq, min(size, self._ledger_page)):
            yield audit_pb2.StreamLedgerResponse(
                entries=[audit_pb2.LedgerEntry(body=e.body, hash=e.hash, signature=e.signature) for e in page],
                next_page_token=str(page[-1].seq + 1))

    def GetPublicKey(self, request: audit_pb2.GetPublicKeyRequest,
                     context: grpc.ServicerContext) -> audit_pb2.GetPublicKeyResponse:
        return audit_pb2.GetPublicKeyResponse(public_key_pem=self._public_key_pem())
