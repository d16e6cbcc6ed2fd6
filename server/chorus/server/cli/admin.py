"""Operator commands over gRPC: roster import, tokens, forced window close, counters."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer
from google.protobuf.timestamp_pb2 import Timestamp
from rich.table import Table

from chorus.server import roster
from chorus.server.cli._common import (
    DEFAULT_SERVER,
    CaOpt,
    CertOpt,
    KeyOpt,
    ServerOpt,
    TokenFileOpt,
    TokenOpt,
    connect,
    console,
    create_private_file,
    fail,
)
from chorus.server.windows import parse_window_id
from chorus.v1 import admin_pb2, admin_pb2_grpc, common_pb2, release_pb2

roster_app = typer.Typer(help="Manage the roster (user,team).", no_args_is_help=True)
token_app = typer.Typer(help="Create, list and revoke bearer tokens.", no_args_is_help=True)
window_app = typer.Typer(help="Window lifecycle.", no_args_is_help=True)
ROLES = {"ingest": admin_pb2.ROLE_INGEST, "analyst": admin_pb2.ROLE_ANALYST,
         "auditor": admin_pb2.ROLE_AUDITOR, "admin": admin_pb2.ROLE_ADMIN}
ROLE_NAMES = {v: k for k, v in ROLES.items()}
ROSTER_CHUNK = 10_000  # entries per streamed message, well under the message size limit


@roster_app.command("import")
def roster_import(csv_file: Annotated[Path, typer.Argument(help="CSV with header user,team.")],
                  server: ServerOpt = DEFAULT_SERVER, token: TokenOpt = None,
                  token_file: TokenFileOpt = None, ca: CaOpt = None, client_cert: CertOpt = None,
                  client_key: KeyOpt = None) -> None:
    """Replace the whole roster with a CSV file (header user,team; one row per person).

    People not in the file are no longer on the roster: their contributions are rejected from
    now on. A person already counted in an open window keeps that window's team."""
    try:
        rows = roster.parse_csv(csv_file.read_text(encoding="utf-8-sig"))  # -sig: spreadsheets add a BOM
    except OSError as exc:
        raise fail(f"cannot read {csv_file}: {exc.strerror}") from None
    except roster.RosterError as exc:
        raise fail(f"{csv_file}: {exc}") from None
    chunks = [admin_pb2.ImportRosterRequest(entries=[admin_pb2.RosterEntry(user=u, team=t)
                                                     for u, t in rows[i:i + ROSTER_CHUNK]])
              for i in range(0, len(rows), ROSTER_CHUNK)]
    with connect(server, token, token_file, ca, client_cert, client_key) as conn:
        reply = conn.call(admin_pb2_grpc.AdminServiceStub(conn.channel).ImportRoster, iter(chunks))
    table = Table("team", "people", "released on its own?",
                  title=f"Roster replaced: {reply.people} people in {len(reply.teams)} teams")
    for team in reply.teams:
        alone = "yes" if team.size >= reply.min_team_size else f"no: below k = {reply.min_team_size}"
        table.add_row(team.team, str(team.size), alone)
    console.print(table)
    console.print(f"roster sha256 {reply.roster_hash} (recorded in the ledger)")


@token_app.command("create")
def token_create(role: Annotated[str, typer.Option("--role", help="ingest, analyst, auditor or admin.")],
                 name: Annotated[str, typer.Option("--name", help="Unique label, e.g. cursor-prod.")],
                 out: Annotated[Path | None, typer.Option("--out", help="Write the token to this file "
                                                          "(mode 0600) instead of printing it.")] = None,
                 server: ServerOpt = DEFAULT_SERVER, token: TokenOpt = None,
                 token_file: TokenFileOpt = None, ca: CaOpt = None, client_cert: CertOpt = None,
                 client_key: KeyOpt = None) -> None:
    """Create a token; it is shown once and only its SHA-256 is stored."""
    if role not in ROLES:
        raise fail(f"--role {role!r}: must be one of {', '.join(ROLES)}", 2)
    # Claim the file first: a token whose secret cannot be stored would be lost for good.
    fd = create_private_file(out) if out is not None else None
    try:
        with connect(server, token, token_file, ca, client_cert, client_key) as conn:
            reply = conn.call(admin_pb2_grpc.AdminServiceStub(conn.channel).CreateToken,
                              admin_pb2.CreateTokenRequest(role=ROLES[role], name=name))
    except BaseException:
        if fd is not None and out is not None:
            os.close(fd)
            out.unlink(missing_ok=True)
        raise
    if fd is not None:
        with os.fdopen(fd, "w") as f:
            f.write(reply.token + "\n")
        console.print(f"token {name!r} ({role}) written to {out}")
    else:
        console.print(f"token {name!r} ({role}); store it now, it is not shown again:")
        print(reply.token)


@token_app.command("list")
def token_list(server: ServerOpt = DEFAULT_SERVER, token: TokenOpt = None, token_file: TokenFileOpt = None,
               ca: CaOpt = None, client_cert: CertOpt = None, client_key: KeyOpt = None) -> None:
    """List tokens (names and roles; secrets are never stored)."""
    with connect(server, token, token_file, ca, client_cert, client_key) as conn:
        reply = conn.call(admin_pb2_grpc.AdminServiceStub(conn.channel).ListTokens,
                          admin_pb2.ListTokensRequest())
    table = Table("name", "role", "created", "revoked")
    for t in reply.tokens:
        table.add_row(t.name, ROLE_NAMES.get(t.role, "?"), t.created, t.revoked or "-")
    console.print(table)


@token_app.command("revoke")
def token_revoke(name: Annotated[str, typer.Argument(help="Token name.")],
                 server: ServerOpt = DEFAULT_SERVER, token: TokenOpt = None,
                 token_file: TokenFileOpt = None,
                 ca: CaOpt = None, client_cert: CertOpt = None, client_key: KeyOpt = None) -> None:
    """Revoke a token by name; it stops working at once (within a second on other replicas)."""
    with connect(server, token, token_file, ca, client_cert, client_key) as conn:
        reply = conn.call(admin_pb2_grpc.AdminServiceStub(conn.channel).RevokeToken,
                          admin_pb2.RevokeTokenRequest(name=name))
    console.print(f"token {reply.info.name!r} is revoked (since {reply.info.revoked})")


@window_app.command("list")
def window_list(server: ServerOpt = DEFAULT_SERVER, token: TokenOpt = None, token_file: TokenFileOpt = None,
                ca: CaOpt = None, client_cert: CertOpt = None, client_key: KeyOpt = None) -> None:
    """List windows, newest first, with their state and when they close."""
    with connect(server, token, token_file, ca, client_cert, client_key) as conn:
        reply = conn.call(admin_pb2_grpc.AdminServiceStub(conn.channel).ListWindows,
                          release_pb2.ListWindowsRequest())
    table = Table("window", "state", "from (UTC)", "until (UTC)", "closes at (UTC)")
    for w in reply.windows:
        state = "open" if w.state == common_pb2.WINDOW_STATE_OPEN else "closed"
        table.add_row(w.id, state, *(_utc(t) for t in (w.start, w.end, w.closes_at)))
    console.print(table if reply.windows else "no window yet: the first contribution or the server's "
                  "window task opens the current one")


@window_app.command("close")
def window_close(window: Annotated[str, typer.Argument(help="Window id, e.g. 2026-W48 or 2026-11-25 "
                                                       "(see `chorus window list`).")],
                 yes: Annotated[bool, typer.Option("--yes", help="Close even a window that has not "
                                                   "ended yet.")] = False,
                 server: ServerOpt = DEFAULT_SERVER, token: TokenOpt = None,
                 token_file: TokenFileOpt = None,
                 ca: CaOpt = None, client_cert: CertOpt = None, client_key: KeyOpt = None) -> None:
    """Close a window now: fold per-person rows into team statistics and destroy them. Irreversible:
    contributions for the window are rejected as late from then on."""
    try:
        span = parse_window_id(window)
    except ValueError as exc:
        raise fail(str(exc), 2) from None
    if span.end > datetime.now(UTC) and not yes:
        raise fail(f"window {window} runs until {span.end:%Y-%m-%d %H:%M} UTC: closing it now rejects "
                   "every later contribution for it as late. Pass --yes to close it anyway.", 2)
    with connect(server, token, token_file, ca, client_cert, client_key) as conn:
        reply = conn.call(admin_pb2_grpc.AdminServiceStub(conn.channel).CloseWindow,
                          admin_pb2.CloseWindowRequest(window=window))
    if reply.already_closed:
        console.print(f"window {reply.window.id} was already closed; nothing changed")
    else:
        console.print(f"window {reply.window.id} closed: {reply.rows_folded} per-person rows folded "
                      "into team statistics and deleted, window key destroyed")


def _utc(ts: Timestamp) -> str:
    return f"{ts.ToDatetime():%Y-%m-%d %H:%M}"


def stats(server: ServerOpt = DEFAULT_SERVER, token: TokenOpt = None, token_file: TokenFileOpt = None,
          ca: CaOpt = None, client_cert: CertOpt = None, client_key: KeyOpt = None) -> None:
    """Operational ingest counters since the server started (nothing per person)."""
    with connect(server, token, token_file, ca, client_cert, client_key) as conn:
        reply = conn.call(admin_pb2_grpc.AdminServiceStub(conn.channel).GetStats,
                          admin_pb2.GetStatsRequest())
    table = Table("counter (since the server started, nothing per person)", "value")
    for label, value in (("batches received", reply.batches),
                         ("duplicate batches (counted once)", reply.duplicate_batches),
                         ("malformed batches refused", reply.invalid_batches),
                         ("contributions accepted", reply.contributions_accepted),
                         ("contributions above the bound on arrival", reply.contributions_clamped),
                         ("dropped by clients (memory bound)", reply.client_dropped)):
        table.add_row(label, str(value))
    for reason, n in sorted(reply.rejected.items()):
        table.add_row(f"contributions rejected: {reason}", str(n))
    for outcome, n in sorted(reply.otlp_points.items()):
        table.add_row(f"OTLP data points {outcome}", str(n))
    console.print(table)
