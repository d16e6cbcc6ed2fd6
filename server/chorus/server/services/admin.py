"""AdminService: roster, tokens, forced window close, operational counters."""

from __future__ import annotations

from collections.abc import Iterator

import grpc

from chorus.server import auth, lifecycle, roster
from chorus.server.app_context import Chorus
from chorus.server.services._convert import page, timestamp, window_message, windows_page
from chorus.server.services._errors import abort, invalid_argument
from chorus.server.windows import parse_window_id
from chorus.v1 import admin_pb2, admin_pb2_grpc

_ROLE_TO_PROTO = {auth.Role.INGEST: admin_pb2.ROLE_INGEST, auth.Role.ANALYST: admin_pb2.ROLE_ANALYST,
                  auth.Role.AUDITOR: admin_pb2.ROLE_AUDITOR, auth.Role.ADMIN: admin_pb2.ROLE_ADMIN}
_PROTO_TO_ROLE = {v: k for k, v in _ROLE_TO_PROTO.items()}


def _token_info(info: auth.TokenInfo) -> admin_pb2.TokenInfo:
    message = admin_pb2.TokenInfo(name=info.name, role=_ROLE_TO_PROTO[info.role],
                                  create_time=timestamp(info.created))
    if info.revoked:
        message.revoke_time.CopyFrom(timestamp(info.revoked))
    return message


class AdminServicer(admin_pb2_grpc.AdminServiceServicer):
    def __init__(self, chorus: Chorus) -> None:
        self._chorus = chorus

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
        if dry_run:
            result = self._chorus.db.run(lambda tx: roster.preview(tx, rows, team_orgs), name="roster_preview")
        else:
            result = self._chorus.import_roster(rows, auth.principal().name, team_orgs)
        return admin_pb2.ImportRosterResponse(
            people=result.people, roster_hash=result.roster_hash,
            min_team_size=self._chorus.config.policy.min_team_size,
            teams=[admin_pb2.TeamSize(team=t, size=n, org=result.team_orgs.get(t, ""))
                   for t, n in result.team_sizes.items()],
            previous_teams=[admin_pb2.TeamSize(team=t, size=n) for t, n in result.previous_sizes.items()],
            people_added=result.people_added, people_removed=result.people_removed, dry_run=dry_run)

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
            if exists:
                abort(context, grpc.StatusCode.ALREADY_EXISTS, str(exc), reason="TOKEN_NAME_TAKEN",
                      metadata={"field": "name"})
            invalid_argument(context, str(exc), "name")
        return admin_pb2.CreateTokenResponse(token=secret, info=_token_info(info))

    def ListTokens(self, request: admin_pb2.ListTokensRequest,
                   context: grpc.ServicerContext) -> admin_pb2.ListTokensResponse:
        tokens, following = page(self._chorus.tokens.list(), request, context)
        return admin_pb2.ListTokensResponse(tokens=[_token_info(t) for t in tokens], next_page_token=following)

    def RevokeToken(self, request: admin_pb2.RevokeTokenRequest,
                    context: grpc.ServicerContext) -> admin_pb2.RevokeTokenResponse:
        try:
            info = self._chorus.tokens.revoke(request.name, self._chorus.clock.now(), auth.principal().name)
        except LookupError as exc:
            abort(context, grpc.StatusCode.NOT_FOUND, str(exc.args[0]), reason="NOT_FOUND")
        return admin_pb2.RevokeTokenResponse(info=_token_info(info))

    def ListWindows(self, request: admin_pb2.AdminServiceListWindowsRequest,
                    context: grpc.ServicerContext) -> admin_pb2.AdminServiceListWindowsResponse:
        windows, following = windows_page(request, context, lambda start, end: self._chorus.db.run(
            lambda tx: lifecycle.list_windows(tx, start, end), name="list_windows"))
        return admin_pb2.AdminServiceListWindowsResponse(windows=windows, next_page_token=following)

    def CloseWindow(self, request: admin_pb2.CloseWindowRequest,
                    context: grpc.ServicerContext) -> admin_pb2.CloseWindowResponse:
        try:
            parse_window_id(request.window)
        except ValueError as exc:
            invalid_argument(context, str(exc), "window")
        try:
            result = self._chorus.close_window(request.window, auth.principal().name)
        except lifecycle.WindowNotFound as exc:
            abort(context, grpc.StatusCode.NOT_FOUND, f"{exc.args[0]}: no contribution has opened it yet",
                  reason="NOT_FOUND")
        return admin_pb2.CloseWindowResponse(window=window_message(result.window),
                                             already_closed=not result.closed_now)

    def GetStats(self, request: admin_pb2.GetStatsRequest,
                 context: grpc.ServicerContext) -> admin_pb2.GetStatsResponse:
        counts, rejected = self._chorus.ingestor.stats.snapshot()
        now = self._chorus.clock.now()
        pending = [admin_pb2.PendingShred(subject=p.subject, since=timestamp(p.since),
                                          pending_seconds=max(0, int((now - p.since).total_seconds())))
                   for p in self._chorus.shredder.pending()]
        return admin_pb2.GetStatsResponse(rejected=rejected, pending_shreds=pending,
                                          otlp_points=self._chorus.otlp.stats.snapshot(), **counts)
