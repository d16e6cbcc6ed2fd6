"""AdminService: roster, tokens, forced window close, operational counters."""

from __future__ import annotations

from collections.abc import Iterator

import grpc

from chorus.server import auth, lifecycle, roster
from chorus.server.app_context import Chorus
from chorus.server.services._convert import window_message, windows_response
from chorus.server.services._errors import abort, invalid_argument
from chorus.server.windows import parse_window_id
from chorus.v1 import admin_pb2, admin_pb2_grpc, release_pb2

_ROLE_TO_PROTO = {auth.Role.INGEST: admin_pb2.ROLE_INGEST, auth.Role.ANALYST: admin_pb2.ROLE_ANALYST,
                  auth.Role.AUDITOR: admin_pb2.ROLE_AUDITOR, auth.Role.ADMIN: admin_pb2.ROLE_ADMIN}
_PROTO_TO_ROLE = {v: k for k, v in _ROLE_TO_PROTO.items()}


def _token_info(info: auth.TokenInfo) -> admin_pb2.TokenInfo:
    return admin_pb2.TokenInfo(name=info.name, role=_ROLE_TO_PROTO[info.role],
                               created=info.created.isoformat(),
                               revoked=info.revoked.isoformat() if info.revoked else "")


class AdminServicer(admin_pb2_grpc.AdminServiceServicer):
    def __init__(self, chorus: Chorus) -> None:
        self._chorus = chorus

    def ImportRoster(self, requests: Iterator[admin_pb2.ImportRosterRequest],
                     context: grpc.ServicerContext) -> admin_pb2.ImportRosterResponse:
        try:
            rows = roster.validate((e.user, e.team) for chunk in requests for e in chunk.entries)
        except roster.RosterError as exc:
            invalid_argument(context, str(exc), "entries")
        result = self._chorus.import_roster(rows, auth.principal().name)
        return admin_pb2.ImportRosterResponse(
            people=result.people, roster_hash=result.roster_hash,
            min_team_size=self._chorus.config.policy.min_team_size,
            teams=[admin_pb2.TeamSize(team=t, size=n) for t, n in result.team_sizes.items()])

    def CreateToken(self, request: admin_pb2.CreateTokenRequest,
                    context: grpc.ServicerContext) -> admin_pb2.CreateTokenResponse:
        role = _PROTO_TO_ROLE.get(request.role)
        if role is None:
            invalid_argument(context, "role must be one of ingest, analyst, auditor, admin", "role")
        try:
            secret, info = self._chorus.tokens.create(role, request.name, self._chorus.clock.now(),
                                                      auth.principal().name)
        except auth.TokenError as exc:
            exists = isinstance(exc, auth.TokenExists)
            code = grpc.StatusCode.ALREADY_EXISTS if exists else grpc.StatusCode.INVALID_ARGUMENT
            abort(context, code, str(exc))
        return admin_pb2.CreateTokenResponse(token=secret, info=_token_info(info))

    def ListTokens(self, request: admin_pb2.ListTokensRequest,
                   context: grpc.ServicerContext) -> admin_pb2.ListTokensResponse:
        return admin_pb2.ListTokensResponse(tokens=[_token_info(t) for t in self._chorus.tokens.list()])

    def RevokeToken(self, request: admin_pb2.RevokeTokenRequest,
                    context: grpc.ServicerContext) -> admin_pb2.RevokeTokenResponse:
        try:
            info = self._chorus.tokens.revoke(request.name, self._chorus.clock.now(), auth.principal().name)
        except LookupError as exc:
            abort(context, grpc.StatusCode.NOT_FOUND, str(exc.args[0]))
        return admin_pb2.RevokeTokenResponse(info=_token_info(info))

    def ListWindows(self, request: release_pb2.ListWindowsRequest,
                    context: grpc.ServicerContext) -> release_pb2.ListWindowsResponse:
        return windows_response(request, context, lambda start, end: self._chorus.db.run(
            lambda tx: lifecycle.list_windows(tx, start, end), name="list_windows"))

    def CloseWindow(self, request: admin_pb2.CloseWindowRequest,
                    context: grpc.ServicerContext) -> admin_pb2.CloseWindowResponse:
        try:
            parse_window_id(request.window)
        except ValueError as exc:
            invalid_argument(context, str(exc), "window")
        try:
            result = self._chorus.close_window(request.window, auth.principal().name)
        except lifecycle.WindowNotFound as exc:
            abort(context, grpc.StatusCode.NOT_FOUND, f"{exc.args[0]}: no contribution has opened it yet")
        return admin_pb2.CloseWindowResponse(window=window_message(result.window), rows_folded=result.rows_folded,
                                             already_closed=not result.closed_now)

    def GetStats(self, request: admin_pb2.GetStatsRequest,
                 context: grpc.ServicerContext) -> admin_pb2.GetStatsResponse:
        counts, rejected = self._chorus.ingestor.stats.snapshot()
        return admin_pb2.GetStatsResponse(rejected=rejected, otlp_points=self._chorus.otlp.stats.snapshot(), **counts)
