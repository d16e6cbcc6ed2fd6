"""`chorus backup`: an online copy of the SQLite database through SQLite's backup API.

The copy is one consistent snapshot taken while the server keeps running: the backup runs
in a single step, inside one read transaction, and in WAL mode a reader never blocks the
server's writers (nor they it). It is written to a 0600 sibling file and renamed into place
only once complete and checked, so a failed backup leaves no partial file.

What a backup holds is said on every run: the open windows' HMAC keys and per-person rows are
in it, and the live server's shredding at close cannot reach this copy (docs/deployment.md).
The ledger signing key is a file beside the database, deliberately not in it: back it up
separately. PostgreSQL deployments back up with PostgreSQL's own tools.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import Annotated

import typer

from chorus.server.cli._common import ExitCode, console, create_private_file, err_console, fail
from chorus.server.cli.serve import DataDirOpt
from chorus.server.domain.ledger import KEY_FILE
from chorus.server.model import config as config_module
from chorus.server.store import SQLITE_FILE
from chorus.server.store import sqlite as sqlite_store

BUSY_TIMEOUT_SECONDS = 30.0  # the server's longest write transaction (a window close) may hold the lock


def backup(
    out: Annotated[Path, typer.Option("--out", "-o", help="File to write (mode 0600; must not exist).")],
    data_dir: DataDirOpt = Path("chorus-data"),
    config: Annotated[Path | None, typer.Option("--config", "-c", envvar="CHORUS_CONFIG",
                                                help="The server's TOML config (to see its database).")] = None,
    database: Annotated[str | None, typer.Option("--database", envvar="CHORUS_DATABASE", show_default=False,
                                                 help="The server's --database, if it has one.")] = None,
) -> None:
    """Copy the SQLite database while the server runs. It holds open windows' per-person rows and keys."""
    try:
        url = database if database is not None else config_module.load(config).database
    except config_module.ConfigError as exc:
        raise fail(str(exc), ExitCode.USAGE) from None
    if url.startswith(("postgresql://", "postgres://")):
        raise fail("this server's database is PostgreSQL: back it up with pg_dump (or pgBackRest, Barman, base "
                   "backups with WAL archiving); `chorus backup` copies the SQLite file only. See "
                   "docs/deployment.md, Backups", ExitCode.USAGE)
    source = data_dir / SQLITE_FILE
    if not source.is_file():
        raise fail(f"no database at {source}: give the server's --data-dir", ExitCode.NOT_FOUND)
    if out.exists():
        raise fail(f"{out} already exists; remove it or choose another path", ExitCode.USAGE)
    partial = out.with_name(out.name + ".partial")
    os.close(create_private_file(partial, overwrite=True))  # owner-only before the first byte lands
    try:
        summary = sqlite_store.backup(source, partial, busy_timeout_s=BUSY_TIMEOUT_SECONDS)
        os.replace(partial, out)
    except sqlite3.Error as exc:
        raise fail(f"backup of {source} failed: {exc}", ExitCode.UNAVAILABLE if _busy(exc)
                   else ExitCode.ERROR) from None
    finally:
        partial.unlink(missing_ok=True)
    _report(source, out, data_dir, summary)


def _busy(exc: sqlite3.Error) -> bool:
    return isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc)


def _report(source: Path, out: Path, data_dir: Path, summary: sqlite_store.BackupSummary) -> None:
    seq, digest, open_windows, rows = (summary.ledger_seq, summary.ledger_hash, summary.open_windows,
                                       summary.usage_rows)
    console.print(f"backup of {source} written to {out} ({out.stat().st_size:,} bytes, mode 0600); ledger head "
                  f"{seq}:{digest}", highlight=False, soft_wrap=True)
    if open_windows:
        err_console.print(
            f"[yellow]note:[/] it holds the open window(s) {', '.join(open_windows)} with their keys and {rows:,} "
            "per-person row(s): closing a window shreds them on the server, not in this copy. Keep it encrypted "
            "and delete it once those windows have closed plus your retention (docs/deployment.md).",
            highlight=False)
    err_console.print(f"[yellow]note:[/] the ledger signing key is not in it: back up {data_dir / KEY_FILE} "
                      "separately, as a secret.", highlight=False)
