"""The dashboard's only way to data: the Chorus gRPC API, called with the signed-in person's token.

The dashboard holds no database access and no secrets of its own, so every number it shows has
passed the same role checks, budget accounting and release-once caching as any other client.
gRPC failures become `GatewayError`, which carries an HTTP status and a message a person can act
on; the token never appears in either.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Generator, Iterator, Sequence
from pathlib import Path
from typing import TypeVar, cast

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from chorus.server.front.client_channel import channel_credentials
from chorus.server.front.paging import every_page, stream_ledger
from chorus.server.model.roles import SERVICE_ROLES, Role
from chorus.v1 import audit_pb2, audit_pb2_grpc, common_pb2, release_pb2, release_pb2_grpc

T = TypeVar("T")

#: A method no server has: its UNIMPLEMENTED answer names the caller's role (`Api.role`).
ROLE_PROBE = "/chorus.v1.ReleaseService/DashboardRoleProbe"
#: Longest token the login form accepts; real tokens are about 50 characters.
MAX_TOKEN_LENGTH = 512

_HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.FAILED_PRECONDITION: 409,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 409,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}


class GatewayError(Exception):
    """A failed call, translated for a web page."""

    def __init__(self, code: grpc.StatusCode, message: str,
                 quota: Sequence[tuple[str, str]] = ()) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        #: Budget violations from a google.rpc.QuotaFailure: (team-window in words, description).
        self.quota = tuple(quota)

    @property
    def http_status(self) -> int:
        return _HTTP_STATUS.get(self.code, 502)


class LoginRejected(ValueError):
    """The token cannot sign in to the dashboard; the message says why, without the token."""


def _translate(exc: grpc.RpcError, server: str) -> GatewayError:
    code = exc.code() if isinstance(exc, grpc.Call) else grpc.StatusCode.UNKNOWN
    details = (exc.details() if isinstance(exc, grpc.Call) else "") or code.name
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        return GatewayError(code, f"the Chorus server at {server} did not answer ({details}); "
                                  "try again shortly")
    quota: list[tuple[str, str]] = []
    status = rpc_status.from_call(exc) if isinstance(exc, grpc.Call) else None
    for detail in status.details if status else ():
        if detail.Is(error_details_pb2.QuotaFailure.DESCRIPTOR):
            failure = error_details_pb2.QuotaFailure()
            detail.Unpack(failure)
            quota.extend((f"team {v.quota_dimensions['team']}, window {v.quota_dimensions['window']}",
                          v.description) for v in failure.violations)
    return GatewayError(code, details, tuple(quota))


def _request(window: str, statistics: Sequence[int], teams: Sequence[str], metrics: Sequence[str],
             epsilon: str, read: bool, nodes: Sequence[str] = (),
             denominator: Sequence[str] = ()) -> release_pb2.ReleaseRequest:
    return release_pb2.ReleaseRequest(
        window=window, teams=list(teams), metrics=list(metrics), nodes=list(nodes), validate_only=read,
        statistics=[release_pb2.StatisticRequest(
            statistic=s, epsilon=epsilon,  # type: ignore[arg-type]
            denominator=list(denominator) if s == common_pb2.STATISTIC_RATIO else []) for s in statistics])


class Gateway:
    """One shared gRPC channel to a Chorus server; `as_user` binds a person's token to it."""

    def __init__(self, server: str, *, ca: Path | None = None, client_cert: Path | None = None,
                 client_key: Path | None = None, timeout: float = 30.0) -> None:
        # The same TLS rules as the CLI: plaintext only to a loopback address. The channel carries
        # no token of its own; each call carries the token of whoever is signed in.
        credentials = channel_credentials(server, ca, client_cert, client_key)
        self._channel = (grpc.secure_channel(server, credentials) if credentials
                         else grpc.insecure_channel(server))
        self.server = server
        self.tls = credentials is not None
        self.timeout = timeout

    def reachable(self, timeout: float) -> bool:
        """Whether the Chorus server accepts a connection within `timeout` seconds."""
        try:
            grpc.channel_ready_future(self._channel).result(timeout=timeout)
        except grpc.FutureTimeoutError:
            return False
        return True

    def as_user(self, token: str) -> Api:
        return Api(self._channel, token, self.server, self.timeout)

    def identify(self, token: str) -> Role:
        """The dashboard role of `token`: analyst or auditor, verified by calling each service.

        A token that may call both is refused whatever the server's role matrix: a browser
        session must never hold more than one role's powers.
        """
        if (not token or len(token) > MAX_TOKEN_LENGTH or not token.isascii() or not token.isprintable()
                or any(c.isspace() for c in token)):
            raise LoginRejected("that is not a Chorus token: paste the token exactly as it was issued")
        return self.role_of(token)

    def role_of(self, token: str) -> Role:
        """`identify` without the pasted token's shape check: for an access token the identity
        provider issued (a JWT of a few kilobytes)."""
        role = self.as_user(token).role()
        release_ok = role in SERVICE_ROLES["chorus.v1.ReleaseService"]
        audit_ok = role in SERVICE_ROLES["chorus.v1.AuditService"]
        if release_ok and audit_ok:
            raise LoginRejected("this token may read both releases and the audit trail; the dashboard "
                                "takes single-purpose analyst or auditor tokens only")
        if release_ok:
            return Role.ANALYST
        if audit_ok:
            return Role.AUDITOR
        raise LoginRejected("this token may not read releases or the audit trail: sign in with an "
                            "analyst or auditor token")

    def close(self) -> None:
        self._channel.close()


class Api:
    """The RPCs the dashboard uses, on behalf of one token."""

    def __init__(self, channel: grpc.Channel, token: str, server: str, timeout: float) -> None:
        self._channel = channel
        self._release = release_pb2_grpc.ReleaseServiceStub(channel)
        self._audit = audit_pb2_grpc.AuditServiceStub(channel)
        self._metadata = (("authorization", f"Bearer {token}"),)
        self._server = server
        self._timeout = timeout

    def _call(self, method: Callable[..., T], request: object) -> T:
        try:
            return method(request, metadata=self._metadata, timeout=self._timeout)
        except grpc.RpcError as exc:
            raise _translate(exc, self._server) from None

    def role(self) -> Role:
        """The token's role, without a denial in the server's log: a method that does not exist
        answers any valid token UNIMPLEMENTED with its role in the ErrorInfo (docs/api.md).
        An unknown or revoked token raises LoginRejected."""
        try:
            self._channel.unary_unary(ROLE_PROBE)(b"", metadata=self._metadata, timeout=self._timeout)
        except grpc.RpcError as exc:
            code = exc.code() if isinstance(exc, grpc.Call) else grpc.StatusCode.UNKNOWN
            if code == grpc.StatusCode.UNAUTHENTICATED:  # the server says why (its own words)
                raise LoginRejected(_translate(exc, self._server).message) from None
            status = rpc_status.from_call(exc) if code == grpc.StatusCode.UNIMPLEMENTED else None
            for detail in status.details if status else ():
                info = error_details_pb2.ErrorInfo()
                if detail.Unpack(info) and info.metadata.get("role") in {r.value for r in Role}:
                    return Role(info.metadata["role"])
            raise _translate(exc, self._server) from None
        raise GatewayError(grpc.StatusCode.UNKNOWN, f"the server at {self._server} answered {ROLE_PROBE}")

    # ReleaseService (analyst)

    def list_windows(self) -> list[common_pb2.Window]:
        """Every window, newest first."""
        return every_page(lambda r: self._call(self._release.ListWindows, r), release_pb2.ListWindowsRequest(),
                          "windows")

    def list_metrics(self, window: str) -> list[release_pb2.Metric]:
        request = release_pb2.ListMetricsRequest(window=window)
        return list(self._call(self._release.ListMetrics, request).metrics)

    def list_teams(self, window: str) -> release_pb2.ListTeamsResponse:
        return self._call(self._release.ListTeams, release_pb2.ListTeamsRequest(window=window))

    def read(self, window: str, statistics: Sequence[int], *, teams: Sequence[str] = (),
             metrics: Sequence[str] = (), nodes: Sequence[str] = (), epsilon: str = "",
             denominator: Sequence[str] = ()) -> release_pb2.ReleaseResponse:
        """What is released of `statistics` for teams and at `nodes` (a ratio's over the sums of
        `denominator`), and what the rest would cost: never spends (validate_only)."""
        return self._call(self._release.Release, _request(window, statistics, teams, metrics, epsilon, True,
                                                          nodes, denominator))

    def release(self, window: str, statistics: Sequence[int], *, teams: Sequence[str] = (),
                metrics: Sequence[str] = (), nodes: Sequence[str] = (),
                epsilon: str = "") -> release_pb2.ReleaseResponse:
        """Release `statistics` (at `epsilon`, or the window's default) for teams and at `nodes`,
        spending budget (a repeat is answered from storage): called only from the confirmed form
        of the release page."""
        return self._call(self._release.Release, _request(window, statistics, teams, metrics, epsilon, False,
                                                          nodes))

    # AuditService (auditor)

    def list_policies(self, window: str = "") -> list[audit_pb2.WindowPolicy]:
        request = audit_pb2.ListPoliciesRequest(window=window)
        return list(self._call(self._audit.ListPolicies, request).policies)

    def get_budget(self, window: str = "") -> list[audit_pb2.TeamWindowBudget]:
        return every_page(lambda r: self._call(self._audit.GetBudget, r), audit_pb2.GetBudgetRequest(window=window),
                          "budgets")

    def public_key(self) -> str:
        return self._call(self._audit.GetPublicKey, audit_pb2.GetPublicKeyRequest()).public_key_pem

    def ledger(self, from_seq: int = 1, limit: int | None = None) -> Iterator[audit_pb2.LedgerEntry]:
        """Ledger entries from `from_seq` on, at most `limit`.

        Read as `chorus audit export` reads them, resuming where the server ended a long stream
        at its time limit; stopping early closes the stream, which cancels the call.
        """
        # The officer CLI's reader, so the dashboard and `chorus audit export` read the ledger alike.
        entries = cast(Generator[audit_pb2.LedgerEntry, None, None],
                       stream_ledger(self._audit, self._metadata, max(1, from_seq)))
        try:
            yield from itertools.islice(entries, limit)
        except grpc.RpcError as exc:
            raise _translate(exc, self._server) from None
        finally:
            entries.close()
