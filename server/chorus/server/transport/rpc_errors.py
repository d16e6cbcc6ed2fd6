"""Domain errors -> gRPC status with rich details (google.rpc, AIP-193), in one place, below
both the gate (chorus.server.transport.gate) and the servicers (chorus.server.transport.services), which both use it.

Every error carries a `google.rpc.ErrorInfo` first: domain `chorus.dev`, a stable
UPPER_SNAKE `reason` (listed in docs/api.md; clients branch on it, never on the message) and
metadata whose numbers are decimal strings. Then the specific detail: `BadRequest` with one
field violation for every INVALID_ARGUMENT, `QuotaFailure` with one violation per team-window
for the privacy budget, `RetryInfo` wherever the same request can succeed later.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import NoReturn
from urllib.parse import quote

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.protobuf.message import Message
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

DOMAIN = "chorus.dev"
#: QuotaFailure.Violation.quota_metric and quota_id of the privacy budget.
BUDGET_METRIC = "chorus.dev/privacy_budget"
BUDGET_QUOTA_ID = "EpsilonPerTeamWindow"


def abort(context: grpc.ServicerContext, code: grpc.StatusCode, message: str,
          details: Iterable[Message] = (), *, reason: str | None = None,
          metadata: Mapping[str, str] | None = None) -> NoReturn:
    """Abort the RPC with `message`, an ErrorInfo (`reason`, `metadata`) and `details`.

    Without a `reason` the status code's name is the reason (UNAUTHENTICATED, INTERNAL, ...), so
    no error lacks an ErrorInfo. An INVALID_ARGUMENT without a BadRequest gets one naming the
    request as a whole (field "").
    """
    info = error_details_pb2.ErrorInfo(reason=reason or code.name,
                                       domain=DOMAIN, metadata=dict(metadata or {}))
    extra = list(details)
    if code == grpc.StatusCode.INVALID_ARGUMENT and not any(
            isinstance(d, error_details_pb2.BadRequest) for d in extra):
        extra.append(_bad_request("", message))
    packed = []
    for detail in (info, *extra):
        any_msg = any_pb2.Any()
        any_msg.Pack(detail)
        packed.append(any_msg)
    status = status_pb2.Status(code=getattr(code_pb2, code.name), message=message, details=packed)
    context.abort_with_status(rpc_status.to_status(status))
    raise AssertionError("unreachable")  # abort_with_status raises


def _bad_request(field: str, description: str) -> error_details_pb2.BadRequest:
    return error_details_pb2.BadRequest(field_violations=[
        error_details_pb2.BadRequest.FieldViolation(field=field, description=description)])


def invalid_argument(context: grpc.ServicerContext, message: str, field: str,
                     reason: str = "INVALID_ARGUMENT") -> NoReturn:
    """INVALID_ARGUMENT with a BadRequest naming `field` (a path such as `contributions[3].user`)."""
    abort(context, grpc.StatusCode.INVALID_ARGUMENT, message, [_bad_request(field, message)],
          reason=reason, metadata={"field": field} if field else None)


def retry_later(context: grpc.ServicerContext, code: grpc.StatusCode, message: str,
                delay_seconds: float, *, reason: str | None = None,
                metadata: Mapping[str, str] | None = None,
                details: Iterable[Message] = ()) -> NoReturn:
    """An error the same request can pass later, with a RetryInfo the SDK honours."""
    delay = duration_pb2.Duration()
    delay.FromNanoseconds(int(delay_seconds * 1e9))
    abort(context, code, message, [error_details_pb2.RetryInfo(retry_delay=delay), *details],
          reason=reason, metadata=metadata)


#: RetryInfo delay sent when the store cannot serve (see store_unavailable).
STORE_RETRY_SECONDS = 1.0


def store_unavailable(context: grpc.ServicerContext) -> NoReturn:
    """UNAVAILABLE with RetryInfo for chorus.server.store.StoreUnavailable: a store that is busy,
    unreachable, out of space, read-only or failing I/O. An operator can fix each of these, so
    clients keep the request and retry it (the SDK with the same batch id); never INTERNAL,
    which reads as a bug. The store's own message (paths, SQL state) stays in the server log."""
    retry_later(context, grpc.StatusCode.UNAVAILABLE,
                "the store cannot serve now (busy, unreachable, out of space or read-only); retry later",
                STORE_RETRY_SECONDS)


def budget_subject(window: str, team: str) -> str:
    """The QuotaFailure subject of a team-window: `teams/<team>/windows/<window>`, the team
    percent-encoded as in a URI path segment (RFC 3986), so a `/` in a team name is `%2F`."""
    return f"teams/{quote(team, safe='')}/windows/{window}"


def budget_exceeded(context: grpc.ServicerContext, message: str,
                    overspends: Iterable[tuple[str, str, str, str, str]]) -> NoReturn:
    """RESOURCE_EXHAUSTED for privacy budget: one QuotaFailure violation per team-window.

    Each overspend is (window, team, requested, remaining, cap), amounts as exact decimal
    strings. A violation's `quota_dimensions` hold `window`, `team`, `requested_epsilon`,
    `remaining_epsilon` and `cap_epsilon` (the int64 `quota_value` cannot carry an exact
    decimal); the ErrorInfo metadata repeats those of the first team-window and counts them
    in `team_windows`. No RetryInfo: a spent budget never comes back.
    """
    rows = list(overspends)
    violations = [error_details_pb2.QuotaFailure.Violation(
        subject=budget_subject(window, team),
        description=f"requested epsilon {requested}, remaining {remaining} of {cap}",
        quota_metric=BUDGET_METRIC, quota_id=BUDGET_QUOTA_ID,
        quota_dimensions=_amounts(window, team, requested, remaining, cap))
        for window, team, requested, remaining, cap in rows]
    abort(context, grpc.StatusCode.RESOURCE_EXHAUSTED, message,
          [error_details_pb2.QuotaFailure(violations=violations)], reason="PRIVACY_BUDGET_EXCEEDED",
          metadata={**_amounts(*rows[0]), "team_windows": str(len(rows))})


def _amounts(window: str, team: str, requested: str, remaining: str, cap: str) -> dict[str, str]:
    return {"window": window, "team": team, "requested_epsilon": requested,
            "remaining_epsilon": remaining, "cap_epsilon": cap}
