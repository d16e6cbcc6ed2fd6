"""AdminService: roster, tokens, forced window close, operational counters."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import grpc

from chorus.server.domain import roster
from chorus.server.domain import windows as window_store
from chorus.server.domain.closer import WindowCloser
from chorus.server.domain.ingest import IngestStats
from chorus.server.domain.otlp.export import OtlpIngestor
from chorus.server.domain.shred import PendingShred
from chorus.server.domain.tokens import TokenError, TokenExists, TokenInfo, Tokens
from chorus.server.model.clock import Clock
from chorus.server.model.roles import ROLE_TO_PROTO, role_from_proto
from chorus.server.transport.gate import principal
from chorus.server.transport.rpc_errors import abort, invalid_argument
from chorus.server.transport.services._convert import list_windows, page, parsed_window, timestamp, window_message
from chorus.v1 import admin_pb2, admin_pb2_grpc


def _token_info(info: TokenInfo) -> admin_pb2.TokenInfo:
    message = admin_pb2.TokenInfo(name=info.name, role=ROLE_TO_PROTO[info.role],
                                  create_time=timestamp(info.created))
    if info.revoked:
        message.revoke_time.CopyFrom(timestamp(info.revoked))
    return message


class AdminServicer(admin_pb2_grpc.AdminServiceServicer):
    def __init__(self, *, tokens: Tokens, rosters: roster.Rosters, windows: window_store.Windows,
                 closer: WindowCloser, min_team_size: int, ingest_stats: IngestStats, otlp: OtlpIngestor,
                 pending_shreds: Callable[[], list[PendingShred]], clock: Clock) -> None:
        self._tokens = tokens
        self._rosters = rosters
        self._windows = windows
        self._closer = closer
        self._min_team_size = min_team_size
        self._ingest_stats = ingest_stats
        self._otlp = otlp
        self._pending_shreds = pending_shreds
        self._clock = clock

    def ImportRoster(self, requests: Iterator[admin_pb2.ImportRosterRequest],
                     context: grpc.ServicerContext) -> admin_pb2.ImportRosterResponse:
        dry_run = False
        orgs: list[str] = []

        def entries() -> Iterator[tuple[str, str]]:
            nonlocal dry_run
            for chunk in requests:
                dry_run |= chunk.dry_run
                for e in chunk.entries:
                    orgs.append(e.org)
                    yield e.user, e.team

        try:
            rows = roster.validate(entries())
            team_orgs = roster.team_orgs(rows, orgs)
        except roster.RosterError as exc:
            invalid_argument(context, str(exc), "entries")
        result = (self._rosters.preview(rows, team_orgs) if dry_run
                  else self._rosters.replace(rows, principal().name, team_orgs))
        return admin_pb2.ImportRosterResponse(
            people=result.people, roster_hash=result.roster_hash,
            min_team_size=self._min_team_size,
            teams=[admin_pb2.TeamSize(team=t, size=n, org=result.team_orgs.get(t, ""))
                   for t, n in result.team_sizes.items()],
            previous_teams=[admin_pb2.TeamSize(team=t, size=n) for t, n in result.previous_sizes.items()],
            people_added=result.people_added, people_removed=result.people_removed, dry_run=dry_run)

    def CreateToken(self, request: admin_pb2.CreateTokenRequest,
                    context: grpc.ServicerContext) -> admin_pb2.CreateTokenResponse:
        role = role_from_proto(request.role)
        if role is None:
            invalid_argument(context, "role must be one of ingest, analyst, auditor, admin", "role")
        try:
            secret, info = self._tokens.create(role, request.name, self._clock.now(), principal().name)
        except TokenError as exc:
            exists = isinstance(exc, TokenExists)
            if exists:
                abort(context, grpc.StatusCode.ALREADY_EXISTS, str(exc), reason="TOKEN_NAME_TAKEN",
                      metadata={"field": "name"})
            invalid_argument(context, str(exc), "name")
        return admin_pb2.CreateTokenResponse(token=secret, info=_token_info(info))

    def ListTokens(self, request: admin_pb2.ListTokensRequest,
                   context: grpc.ServicerContext) -> admin_pb2.ListTokensResponse:
        tokens, following = page(self._tokens.list(), request, context)
        return admin_pb2.ListTokensResponse(tokens=[_token_info(t) for t in tokens], next_page_token=following)

    def RevokeToken(self, request: admin_pb2.RevokeTokenRequest,
                    context: grpc.ServicerContext) -> admin_pb2.RevokeTokenResponse:
        try:
            info = self._tokens.revoke(request.name, self._clock.now(), principal().name)
        except LookupError as exc:
            abort(context, grpc.StatusCode.NOT_FOUND, str(exc.args[0]), reason="NOT_FOUND")
        return admin_pb2.RevokeTokenResponse(info=_token_info(info))

    def ListWindows(self, request: admin_pb2.AdminServiceListWindowsRequest,
                    context: grpc.ServicerContext) -> admin_pb2.AdminServiceListWindowsResponse:
        windows, following = list_windows(request, context, self._windows.list)
        return admin_pb2.AdminServiceListWindowsResponse(windows=windows, next_page_token=following)

    def CloseWindow(self, request: admin_pb2.CloseWindowRequest,
                    context: grpc.ServicerContext) -> admin_pb2.CloseWindowResponse:
        window = parsed_window(context, request.window)
        try:
            result = self._closer.close(window, principal().name)
        except window_store.WindowNotFound as exc:
            abort(context, grpc.StatusCode.NOT_FOUND, f"{exc.args[0]}: no contribution has opened it yet",
                  reason="NOT_FOUND")
        return admin_pb2.CloseWindowResponse(window=window_message(result.window),
                                             already_closed=not result.closed_now)

    def GetStats(self, request: admin_pb2.GetStatsRequest,
                 context: grpc.ServicerContext) -> admin_pb2.GetStatsResponse:
        counts = self._ingest_stats.snapshot()
        now = self._clock.now()
        pending = [admin_pb2.PendingShred(subject=p.subject, since=timestamp(p.since),
                                          pending_seconds=max(0, int((now - p.since).total_seconds())))
                   for p in self._pending_shreds()]
        return admin_pb2.GetStatsResponse(rejected={r.name: n for r, n in counts.rejected.items()},
                                          pending_shreds=pending, otlp_points=self._otlp.points(), **counts.totals())
