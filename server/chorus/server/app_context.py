"""The composition root: one `Chorus` object owns the store, ledger, clock and domain services.

Servicers and the CLI talk to it; nothing here knows about gRPC.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from chorus.server import audit, lifecycle, roster, shred
from chorus.server.auth import Role, TokenError, Tokens
from chorus.server.clock import Clock, SystemClock
from chorus.server.closer import WindowCloser
from chorus.server.config import Config
from chorus.server.ingest import Ingestor
from chorus.server.ledger import Ledger, Signer
from chorus.server.otlp.export import OtlpIngestor
from chorus.server.store import Database, Tx, open_database

_log = logging.getLogger(__name__)
ADMIN_TOKEN_FILE = "admin.token"


class Chorus:
    """A running Chorus instance over one data directory and one database."""

    def __init__(self, config: Config, data_dir: Path, *, clock: Clock | None = None,
                 database: str | None = None) -> None:
        self.config = config
        self.data_dir = data_dir
        self.clock = clock or SystemClock()
        data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.db: Database = open_database(config.database if database is None else database, data_dir,
                                          sqlite_synchronous=config.sqlite_synchronous)
        self.ledger = Ledger(Signer.load_or_create(data_dir))
        self.roster = roster.RosterCache()
        self.ingestor = Ingestor(self.db, config.policy, self.ledger, self.clock, self.roster)
        self.otlp = OtlpIngestor(self.db, config.policy, config.limits, self.clock, self.roster, self.ingestor)
        self.tokens = Tokens(self.db, self.ledger)
        self.shredder = shred.Shredder(self.db, self.clock)
        self.closer = WindowCloser(self.db, config.policy, self.ledger, self.clock, self.shredder)
        audit.record_config(self.db, self.ledger, config.policy, self.clock.now())

    def import_roster(self, rows: list[tuple[str, str]], actor: str,
                      orgs: dict[str, str] | None = None) -> roster.ImportResult:
        now = self.clock.now()

        def replace(tx: Tx) -> roster.ImportResult:
            shred.record(tx, shred.ROSTER, now)  # the raw ids of people it removes
            return roster.replace(tx, rows, self.ledger, now, actor, orgs)

        result = self.db.run(replace, name="roster_import")
        self.shredder.attempt()
        return result

    def close_window(self, window_id: str, actor: str) -> lifecycle.CloseResult:
        """Force-close a window now (fold and shred), whatever its scheduled close time."""
        now = self.clock.now()
        result = self.db.run(lambda tx: lifecycle.close(tx, window_id, self.ledger, now, actor),
                             name="close_window")
        if result.closed_now:
            self.shredder.attempt()
        return result

    def bootstrap_admin_token(self) -> Path | None:
        """On a data directory without tokens, create an admin token in a 0600 file; return its path."""
        if self.tokens.count():
            return None
        try:
            secret, _ = self.tokens.create(Role.ADMIN, "admin", self.clock.now(), actor="bootstrap")
        except TokenError:
            return None  # another replica bootstrapped first
        path = self.data_dir / ADMIN_TOKEN_FILE
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fchmod(fd, 0o600)  # a pre-existing file keeps its mode through O_CREAT: tighten it
        with os.fdopen(fd, "w") as f:
            f.write(secret + "\n")
        return path

    def close(self) -> None:
        self.closer.stop()
        try:
            self.shredder.attempt()  # a last chance before the process goes away
        except Exception:
            _log.warning("final checkpoint of pending shreds failed; the next start retries", exc_info=True)
        self.db.close()
