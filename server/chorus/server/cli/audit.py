"""Privacy-officer commands: export and verify the ledger, budgets, the privacy statement."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, TextIO

import typer
from rich.markup import escape
from rich.progress_bar import ProgressBar
from rich.table import Table

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
    err_console,
    fail,
    rpc_errors,
)
from chorus.server.cli._output import Format, FormatOpt, emit
from chorus.server.front.paging import every_page, stream_ledger
from chorus.server.front.statement import StatementFormat, render_statement
from chorus.server.model.policy import Policy
from chorus.server.privacy.epsilon import Epsilon
from chorus.server.verifier import verify
from chorus.v1 import audit_pb2, audit_pb2_grpc

audit_app = typer.Typer(help="Export and verify the signed ledger (privacy officers).", no_args_is_help=True)

#: Violations and team-windows printed in full by `verify`; the rest are counted.
SHOWN_VIOLATIONS = 50
SHOWN_TOTALS = 40
WindowOpt = Annotated[str, typer.Option("--window", "-w", help="Window id, e.g. 2026-11-25 or "
                                        "2026-W48; default: every window.")]


@audit_app.command("export")
def export(
    out: Annotated[Path | None, typer.Option("--out", "-o", help="JSON Lines file to write; default: "
                                             "standard output.")] = None,
    from_seq: Annotated[int, typer.Option("--from-seq", min=1, help="First entry to export (verifying "
                                          "needs the whole ledger, from 1).")] = 1,
    public_key_out: Annotated[Path | None, typer.Option("--public-key-out", help="Also write the "
                                                        "server's ledger public key (PEM) here.")] = None,
    server: ServerOpt = DEFAULT_SERVER, token: TokenOpt = None, token_file: TokenFileOpt = None,
    ca: CaOpt = None, client_cert: CertOpt = None, client_key: KeyOpt = None,
) -> None:
    """Download the signed ledger as JSON Lines, one entry per line, for offline verification."""
    with connect(server, token, token_file, ca, client_cert, client_key) as conn:
        stub = audit_pb2_grpc.AuditServiceStub(conn.channel)
        if public_key_out is not None:
            reply = conn.call(stub.GetPublicKey, audit_pb2.GetPublicKeyRequest())
            _write_atomically(public_key_out, lambda f: f.write(reply.public_key_pem))
        last: audit_pb2.LedgerEntry | None = None
        count = 0

        def write(f: TextIO) -> None:
            nonlocal last, count
            with rpc_errors(conn.server, conn.token_source):
                # The bodies are written exactly as received: the verifier judges them, not the export.
                for last in stream_ledger(stub, conn.metadata, from_seq):
                    f.write(verify.export_line(last) + "\n")
                    count += 1

        if out is None:
            write(sys.stdout)
            sys.stdout.flush()
        else:
            _write_atomically(out, write)
    where = str(out) if out is not None else "standard output"
    if last is None:
        err_console.print(f"no ledger entries from {from_seq} on; nothing written to {where}")
        return
    seq = _seq_of(last)
    err_console.print(f"exported {count} entries ({from_seq}..{seq}) to {where}; head {seq}:{last.hash}",
                      highlight=False, soft_wrap=True)
    if public_key_out is not None:
        err_console.print(f"public key written to {public_key_out}: compare it with your trusted copy "
                          "before relying on it", highlight=False)


def _seq_of(entry: audit_pb2.LedgerEntry) -> str:
    try:
        return str(json.loads(entry.body)["seq"])
    except (ValueError, TypeError, KeyError):
        return "?"


def _write_atomically(path: Path, write: Callable[[TextIO], object]) -> None:
    """Write through a temporary file and rename, so a failed export leaves no partial file."""
    partial = path.with_name(path.name + ".partial")
    try:
        with partial.open("w", encoding="utf-8") as f:
            write(f)
        os.replace(partial, path)
    except OSError as exc:
        raise fail(f"cannot write {path}: {exc.strerror}", 2) from None
    finally:
        partial.unlink(missing_ok=True)


@audit_app.command("verify")
def verify_ledger(
    ledger: Annotated[Path, typer.Argument(help="Exported ledger (JSON Lines).")],
    public_key: Annotated[Path, typer.Option("--public-key", "-k", help="Your trusted copy of the "
                                             "server's ledger public key (PEM).")],
    expect_head: Annotated[str | None, typer.Option("--expect-head", help="SEQ:HASH pinned from an "
                                                    "earlier verification.")] = None,
) -> None:
    """Verify an exported ledger offline: chain, signatures, epsilon, sensitivity, budgets."""
    try:
        pem = public_key.read_bytes()
        head = verify.parse_head(expect_head) if expect_head else None
        report = verify.verify_file(ledger, pem, expect_head=head)
    except OSError as exc:
        raise fail(f"cannot read {exc.filename}: {exc.strerror}", 2) from None
    except UnicodeDecodeError:
        raise fail(f"{ledger} is not UTF-8 text", 2) from None
    except verify.VerifyError as exc:
        raise fail(str(exc), 2) from None
    _print_report(ledger, report)
    if not report.ok:
        raise typer.Exit(1)


def _print_report(ledger: Path, report: verify.Report) -> None:
    # Everything taken from the file is escaped: a crafted kind or team name must not be able
    # to restyle (or hide) the rest of the report.
    console.print(escape(f"{ledger}: {report.entries} entries"), highlight=False, soft_wrap=True)
    kinds = Table("kind", "entries")
    for kind, n in sorted(report.kinds.items()):
        kinds.add_row(escape(kind), str(n))
    console.print(kinds)
    totals = sorted(report.totals.values(), key=lambda t: (t.window, t.team))
    table = Table("window", "team", "releases", "spent", "cap", "remaining",
                  title="Budget per team-window, recomputed from the ledger alone")
    for t in totals[:SHOWN_TOTALS]:
        table.add_row(escape(t.window), escape(t.team), str(t.releases), str(t.spent), str(t.cap),
                      str(t.remaining))
    if totals:
        console.print(table)
    if len(totals) > SHOWN_TOTALS:
        console.print(f"... and {len(totals) - SHOWN_TOTALS} more team-windows")
    if report.ok:
        console.print(f"[bold green]OK[/]: {report.entries} entries verified, no violation.")
        if report.head is not None:
            console.print(f"Pin this head for the next verification: --expect-head {report.head}",
                          highlight=False, soft_wrap=True)
        return
    console.print(f"[bold red]FAILED[/]: {len(report.violations)} violation(s)")
    for violation in report.violations[:SHOWN_VIOLATIONS]:
        console.print(f"  {violation}", highlight=False, markup=False, soft_wrap=True)
    if len(report.violations) > SHOWN_VIOLATIONS:
        console.print(f"  ... and {len(report.violations) - SHOWN_VIOLATIONS} more")
    console.print("Do not pin this head: the ledger did not verify.")


def budget(window: WindowOpt = "", fmt: FormatOpt = Format.TABLE, server: ServerOpt = DEFAULT_SERVER,
           token: TokenOpt = None, token_file: TokenFileOpt = None, ca: CaOpt = None,
           client_cert: CertOpt = None, client_key: KeyOpt = None) -> None:
    """Privacy budget spent and remaining per team-window (auditor token).

    json and csv keep the amounts as exact decimal strings, as the ledger has them, with their
    unit (epsilon, or rho for a discrete-Gaussian window)."""
    with connect(server, token, token_file, ca, client_cert, client_key) as conn:
        stub = audit_pb2_grpc.AuditServiceStub(conn.channel)
        budgets = every_page(lambda r: conn.call(stub.GetBudget, r), audit_pb2.GetBudgetRequest(window=window),
                             "budgets")

    def table() -> None:
        if not budgets:
            scope = f"window {window}" if window else "any window"
            console.print(f"No budgets for {scope} yet: a team-window's budget starts when its window closes.")
            return
        units = " or ".join(sorted({unit(b) for b in budgets}))
        out = Table("window", "team", "spent", "of the cap", "remaining", "cap", "releases",
                    title=f"Privacy budget ({units}) per team-window")
        for b in budgets:
            cap, spent = Epsilon.parse(b.cap), Epsilon.parse(b.spent)  # exact decimals: the bar's lengths
            bar = ProgressBar(total=max(cap.micros, 1), completed=spent.micros, width=20)
            out.add_row(escape(b.window), escape(b.team), b.spent, bar, b.remaining, b.cap, str(b.releases))
        console.print(out)

    emit(fmt, ("window", "team", "spent", "remaining", "cap", "releases", "unit"),
         [{"window": b.window, "team": b.team, "spent": b.spent, "remaining": b.remaining, "cap": b.cap,
           "releases": b.releases, "unit": unit(b)} for b in budgets], table)


def unit(budget: audit_pb2.TeamWindowBudget) -> str:
    """The unit of a budget's amounts; servers before the discrete Gaussian named none (epsilon)."""
    return budget.unit or "epsilon"



def privacy_statement(
    window: WindowOpt = "",
    fmt: Annotated[StatementFormat, typer.Option("--format", "-f", help="text or markdown.")] =
    StatementFormat.TEXT,
    server: ServerOpt = DEFAULT_SERVER, token: TokenOpt = None, token_file: TokenFileOpt = None,
    ca: CaOpt = None, client_cert: CertOpt = None, client_key: KeyOpt = None,
) -> None:
    """A plain-language privacy statement from the live policy (default: the newest window's)."""
    with connect(server, token, token_file, ca, client_cert, client_key) as conn:
        reply = conn.call(audit_pb2_grpc.AuditServiceStub(conn.channel).ListPolicies,
                          audit_pb2.ListPoliciesRequest(window=window))
    if not reply.policies:
        raise fail("the server has not opened any window yet, so no policy is in force")
    newest = reply.policies[0]
    policy = Policy.from_json(json.loads(newest.policy_json))
    print(render_statement(newest.window.id, policy, fmt), end="")
