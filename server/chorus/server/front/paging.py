"""Client side of AIP-158 paging, for the CLI and the dashboard: every item of a paged list,
and the ledger stream resumed by page token."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import grpc

from chorus.v1 import audit_pb2, audit_pb2_grpc

__all__ = ["every_page", "stream_ledger"]


def every_page(call: Callable[[Any], Any], request: Any, field: str) -> list[Any]:
    """Call a List RPC page after page (same request, next_page_token) and collect `field`."""
    items: list[Any] = []
    while True:
        reply = call(request)
        items.extend(getattr(reply, field))
        if not reply.next_page_token:
            return items
        following = type(request)()
        following.CopyFrom(request)
        following.page_token = reply.next_page_token
        request = following


def stream_ledger(stub: audit_pb2_grpc.AuditServiceStub, metadata: tuple[tuple[str, str], ...],
                  from_seq: int) -> Iterator[audit_pb2.LedgerEntry]:
    """Entries from `from_seq` to the server's head, resuming with the last page token received
    when the server ends a long stream at its time limit (it cancels streams after a bound)."""
    resume: tuple[grpc.StatusCode, ...] = (grpc.StatusCode.CANCELLED, grpc.StatusCode.DEADLINE_EXCEEDED)
    token = str(from_seq)
    while True:
        start = token
        try:
            for page in stub.StreamLedger(audit_pb2.StreamLedgerRequest(page_token=token), metadata=metadata):
                yield from page.entries
                token = page.next_page_token
            return
        except grpc.RpcError as exc:
            if exc.code() not in resume or token == start:  # no progress: resuming would loop
                raise
