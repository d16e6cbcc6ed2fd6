"""Operator commands over gRPC: roster import, tokens, forced window close, counters."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer
from google.protobuf.timestamp_pb2 import Timestamp
from rich.table import Table

from chorus.server.cli._common import (
    DEFAULT_SERVER,
    CaOpt,
    CertOpt,
    ExitCode,
    KeyOpt,
    ServerOpt,
    TokenFileOpt,
    TokenOpt,
    connect,
    console,
    create_private_file,
    err_console,
    fail,
)
from chorus.server.cli._output import Format, FormatOpt, emit, moment
from chorus.server.domain import roster
from chorus.server.front.paging import every_page
from chorus.server.model.calendar import parse_window_id
from chorus.server.model.roles import ROLE_TO_PROTO, role_from_proto
from chorus.v1 import admin_pb2, admin_pb2_grpc, common_pb2

roster_app = typer.Typer(help="Manage the roster (user,team).", no_args_is_help=True)
token_app = typer.Typer(help="Create, list and revoke bearer tokens.", no_args_is_help=True)
window_app = typer.Typer(help="Window lifecycle.", no_args_is_help=True)
ROLES = {role.value: proto for role, proto in ROLE_TO_PROTO.items()}
ROSTER_CHUNK = 10_000  # entries per streamed message, well under the message size limit


@roster_app.command("import")
def roster_import(csv_file: Annotated[Path, typer.Argument(help="CSV with a header row naming its columns.")],
                  encoding: Annotated[str, typer.Option("--encoding", help="The file's text encoding, e.g. "
                                                        "latin-1 or cp1252.")] = "utf-8",
                  user_column: Annotated[str, typer.Option("--user-column", help="Header of the column holding "
                                                           "the user id (as the AI tools send it).")] = "user",
                  team_column: Annotated[str, typer.Option("--team-column",
                                                           help="Header of the team column.")] = "team",
                  org_column: Annotated[str, typer.Option("--org-column", help="Header of the optional column "
                                                          "giving each team's org path, e.g. "
                                                          "engineering/platform.")] = "org",
                  delimiter: Annotated[str | None, typer.Option(
                      "--delimiter", show_default=False, help="The column delimiter, e.g. ';'. Default: "
                      "detected from the header line (',', ';', tab or '|').")] = None,
                  dry_run: Annotated[bool, typer.Option("--dry-run", help="Show what would change (teams added, "
                                                        "removed, resized; people added and removed) and change "
                                                        "nothing.")] = False,
                  server: ServerOpt = DEFAULT_SERVER, token: TokenOpt = None,
                  token_file: TokenFileOpt = None, ca: CaOpt = None, client_cert: CertOpt = None,
                  client_key: KeyOpt = None) -> None:
    """Replace the whole roster with a CSV file (one row per person; other columns are ignored).

    An optional org column places each team in the organisation tree (engineering/platform: the
    team is in org platform inside org engineering); every row of a team names the same org.

    People not in the file are no longer on the roster: their contributions are rejected from
    now on. A person already counted in an open window keeps that window's team."""
    try:
        text = roster.decode(csv_file.read_bytes(), encoding)
        found = delimiter if delimiter is not None else roster.detect_delimiter(text, user_column, team_column)
        rows, orgs = roster.parse_csv(text, user_column, team_column, org_column, found)
        if delimiter is None and found != ",":
            err_console.print(f"columns separated by {roster.DELIMITERS[found]} (detected; --delimiter sets it)",
                              markup=False, highlight=False)
    except OSError as exc:
        raise fail(f"cannot read {csv_file}: {exc.strerror}", ExitCode.USAGE) from None
    except roster.RosterError as exc:
        raise fail(f"{csv_file}: {exc}", ExitCode.USAGE) from None
    chunks = [admin_pb2.ImportRosterRequest(entries=[admin_pb2.RosterEntry(user=u, team=t, org=orgs.get(t, ""))
                                                     for u, t in rows[i:i + ROSTER_CHUNK]], dry_run=dry_run)
              for i in range(0, len(rows), ROSTER_CHUNK)]
    with connect(server, token, token_file, ca, client_cert, client_key) as conn:
        reply = conn.call(admin_pb2_grpc.AdminServiceStub(conn.channel).ImportRoster, iter(chunks))
    before = {t.team: t.size for t in reply.previous_teams}
    title = (f"Dry run, nothing changed: the roster would have {reply.people} people in {len(reply.teams)} teams"
             if reply.dry_run else f"Roster replaced: {reply.people} people in {len(reply.teams)} teams")
    with_orgs = any(t.org for t in reply.teams)
    table = Table("team", *(["org"] if with_orgs else []), "people", "change", "released on its own?", title=title)
    for team in reply.teams:
        alone = "yes" if team.size >= reply.min_team_size else f"no: below k = {reply.min_team_size}"
        was = before.get(team.team)
        change = "new team" if was is None else "-" if was == team.size else f"{team.size - was:+d} (was {was})"
        if team.size < reply.min_team_size and team.org:
            alone += f" (counted in {team.org})"
        table.add_row(team.team, *([team.org or "-"] if with_orgs else []), str(team.size), change, alone)
    gone = sorted(set(before) - {t.team for t in reply.teams})
    for name in gone:
        table.add_row(name, *(["-"] if with_orgs else []), "0", f"removed (was {before[name]})", "-")
    console.print(table)
    added = sum(1 for t in reply.teams if t.team not in before)
    resized = sum(1 for t in reply.teams if t.team in before and before[t.team] != t.size)
    console.print(f"{'would change' if reply.dry_run else 'changed'}: {added} team(s) added, {len(gone)} removed, "
                  f"{resized} resized; {reply.people_added} people added, {reply.people_removed} removed",
                  highlight=False)
    if reply.dry_run:
        console.print("run again without --dry-run to replace the roster", highlight=False)
    else:
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
        raise fail(f"--role {role!r}: must be one of {', '.join(ROLES)}", ExitCode.USAGE)
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
        console.print(f"token {name!r} ({role}) written to {out}", markup=False)
    else:  # the token alone on stdout, so that $(chorus token create ...) captures just the secret
        err_console.print(f"token {name!r} ({role}); store it now, it is not shown again:", markup=False)
        print(reply.token, flush=True)


@token_app.command("list")
def token_list(fmt: FormatOpt = Format.TABLE, server: ServerOpt = DEFAULT_SERVER, token: TokenOpt = None,
               token_file: TokenFileOpt = None, ca: CaOpt = None, client_cert: CertOpt = None,
               client_key: KeyOpt = None) -> None:
    """List tokens (names and roles; secrets are never stored)."""
    with connect(server, token, token_file, ca, client_cert, client_key) as conn:
        stub = admin_pb2_grpc.AdminServiceStub(conn.channel)
        tokens = every_page(lambda r: conn.call(stub.ListTokens, r), admin_pb2.ListTokensRequest(), "tokens")
    records = [{"name": t.name, "role": _role_name(t.role), "created": moment(t.create_time),
                "revoked": moment(t.revoke_time) if t.HasField("revoke_time") else None,
                "active": not t.HasField("revoke_time")} for t in tokens]

    def table() -> None:
        out = Table("name", "role", "created (UTC)", "revoked (UTC)")
        for r in records:
            out.add_row(r["name"], r["role"] or "?", r["created"], r["revoked"] or "-")
        console.print(out)

    emit(fmt, ("name", "role", "created", "revoked", "active"), records, table)


@token_app.command("revoke")
def token_revoke(name: Annotated[str, typer.Argument(help="Token name.")],
                 server: ServerOpt = DEFAULT_SERVER, token: TokenOpt = None,
                 token_file: TokenFileOpt = None,
                 ca: CaOpt = None, client_cert: CertOpt = None, client_key: KeyOpt = None) -> None:
    """Revoke a token by name; it stops working at once (within a second on other replicas)."""
    with connect(server, token, token_file, ca, client_cert, client_key) as conn:
        reply = conn.call(admin_pb2_grpc.AdminServiceStub(conn.channel).RevokeToken,
                          admin_pb2.RevokeTokenRequest(name=name))
    console.print(f"token {reply.info.name!r} is revoked (since {_utc(reply.info.revoke_time)} UTC)",
                  markup=False)


@window_app.command("list")
def window_list(fmt: FormatOpt = Format.TABLE, server: ServerOpt = DEFAULT_SERVER, token: TokenOpt = None,
                token_file: TokenFileOpt = None, ca: CaOpt = None, client_cert: CertOpt = None,
                client_key: KeyOpt = None) -> None:
    """List windows, newest first, with their state and when they close (or closed)."""
    with connect(server, token, token_file, ca, client_cert, client_key) as conn:
        stub = admin_pb2_grpc.AdminServiceStub(conn.channel)
        windows = every_page(lambda r: conn.call(stub.ListWindows, r),
                             admin_pb2.AdminServiceListWindowsRequest(), "windows")
    records = [{"window": w.id, "state": "open" if w.state == common_pb2.WINDOW_STATE_OPEN else "closed",
                "start": moment(w.start), "end": moment(w.end), "closes_at": moment(w.closes_at),
                "closed_at": moment(w.closed_at) if w.HasField("closed_at") else None} for w in windows]

    def table() -> None:
        if not windows:
            console.print("no window yet: the first contribution or the server's window task opens the "
                          "current one")
            return
        out = Table("window", "state", "from (UTC)", "until (UTC)", "closes at (UTC)")
        for w in windows:
            # Once closed, the actual time: earlier than planned after an early close.
            closes = f"closed {_utc(w.closed_at)}" if w.HasField("closed_at") else _utc(w.closes_at)
            out.add_row(w.id, "open" if w.state == common_pb2.WINDOW_STATE_OPEN else "closed",
                        _utc(w.start), _utc(w.end), closes)
        console.print(out)

    emit(fmt, ("window", "state", "start", "end", "closes_at", "closed_at"), records, table)


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
        raise fail(str(exc), ExitCode.USAGE) from None
    if span.end > datetime.now(UTC) and not yes:
        raise fail(f"window {window} runs until {span.end:%Y-%m-%d %H:%M} UTC: closing it now rejects "
                   "every later contribution for it as late. Pass --yes to close it anyway.", ExitCode.USAGE)
    with connect(server, token, token_file, ca, client_cert, client_key) as conn:
        reply = conn.call(admin_pb2_grpc.AdminServiceStub(conn.channel).CloseWindow,
                          admin_pb2.CloseWindowRequest(window=window))
    if reply.already_closed:
        console.print(f"window {reply.window.id} was already closed; nothing changed")
    else:
        console.print(f"window {reply.window.id} closed: per-person rows folded into team statistics "
                      "and deleted, window key destroyed")


def _utc(ts: Timestamp) -> str:
    return f"{ts.ToDatetime():%Y-%m-%d %H:%M}"


#: `chorus stats` rows: (counter name in json/csv, GetStatsResponse field, label in the table).
STATS = (("batches", "batches", "batches received"),
         ("duplicate_batches", "duplicate_batches", "duplicate batches (counted once)"),
         ("invalid_batches", "invalid_batches", "malformed batches refused"),
         ("contributions_accepted", "contributions_accepted", "contributions accepted"),
         ("contributions_clamped", "contributions_clamped", "contributions above the bound on arrival"),
         ("client_dropped", "client_dropped", "dropped by clients (memory bound)"))


#: The table's words for the OTLP outcome keys (json and csv keep the keys: `otlp_points:KEY`).
#: Rejections ("rejected: REASON") are words already.
OTLP_OUTCOMES = {"counted": "counted", "duplicate": "resent (counted once)",
                 "baseline": "first of a cumulative series (its baseline)",
                 "clamped": "above the bound on arrival",
                 "ignored_unmapped": "ignored: no mapping names the instrument",
                 "ignored_filtered": "ignored: the mapping's filter left them out",
                 "ignored_negative_net": "ignored: a net below zero after subtract"}


def stats(fmt: FormatOpt = Format.TABLE, server: ServerOpt = DEFAULT_SERVER, token: TokenOpt = None,
          token_file: TokenFileOpt = None, ca: CaOpt = None, client_cert: CertOpt = None,
          client_key: KeyOpt = None) -> None:
    """Operational ingest counters since the server started (nothing per person).

    json and csv: one record per counter (counter, value); rejections are counters named
    contributions_rejected:REASON."""
    with connect(server, token, token_file, ca, client_cert, client_key) as conn:
        reply = conn.call(admin_pb2_grpc.AdminServiceStub(conn.channel).GetStats,
                          admin_pb2.GetStatsRequest())
    rows = [(name, label, getattr(reply, field)) for name, field, label in STATS]
    rows += [(f"contributions_rejected:{reason}", f"contributions rejected: {reason}", n)
             for reason, n in sorted(reply.rejected.items())]
    rows += [(f"otlp_points:{outcome}", f"OTLP data points {OTLP_OUTCOMES.get(outcome, outcome)}", n)
             for outcome, n in sorted(reply.otlp_points.items())]

    def table() -> None:
        out = Table("counter (since the server started, nothing per person)", "value")
        for _, label, value in rows:
            out.add_row(label, str(value))
        console.print(out)

        if not reply.pending_shreds:
            console.print("shreds: complete (no deleted secret left in the database files)")
            return
        shreds = Table("pending shred (deleted, still in the database files)", "since", "pending")
        for shred in reply.pending_shreds:
            shreds.add_row(shred.subject, moment(shred.since), f"{shred.pending_seconds} s")
        console.print(shreds)
        console.print("a pending shred completes once no other connection holds a read transaction on the "
                      "database (a sqlite3 shell, a backup tool); see docs/privacy.md")

    rows += [(f"pending_shred:{shred.subject}", f"pending shred: {shred.subject}", shred.pending_seconds)
             for shred in reply.pending_shreds]
    emit(fmt, ("counter", "value"), [{"counter": name, "value": value} for name, _, value in rows], table)


def _role_name(proto: admin_pb2.Role) -> str | None:
    role = role_from_proto(proto)
    return role.value if role is not None else None
