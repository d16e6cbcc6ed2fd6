"""The composition root: one `Chorus` object builds the store, ledger, clock and every domain
service, once. The gRPC server hands each servicer only the services it uses; servicers never
open a transaction (each domain service method runs its own). Nothing here knows about gRPC.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from chorus.server.domain import audit, roster, shred
from chorus.server.domain import windows as window_store
from chorus.server.domain.closer import ClockGuard, WindowCloser
from chorus.server.domain.ingest import Ingestor
from chorus.server.domain.ledger import Ledger, Signer
from chorus.server.domain.otlp.export import OtlpIngestor
from chorus.server.domain.release import Releases
from chorus.server.domain.tokens import TokenError, Tokens
from chorus.server.model.clock import Clock, SystemClock
from chorus.server.model.config import Config
from chorus.server.model.roles import Role
from chorus.server.store import Database, open_database

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
        self.clock_guard = ClockGuard(self.clock)
        self.ingestor = Ingestor(self.db, config.policy, self.ledger, self.clock, self.roster,
                                 witness=self.clock_guard.saw)
        self.otlp = OtlpIngestor(self.db, config.policy, config.limits, self.clock, self.ingestor)
        self.tokens = Tokens(self.db, self.ledger)
        self.shredder = shred.Shredder(self.db, self.clock)
        self.releases = Releases(self.db, self.ledger, self.clock, config.policy)
        self.closer = WindowCloser(self.db, config.policy, self.ledger, self.clock, self.shredder, self.releases,
                                   self.clock_guard)
        self.windows = window_store.Windows(self.db)
        self.rosters = roster.Rosters(self.db, self.ledger, self.clock, self.shredder)
        self.audit_trail = audit.AuditTrail(self.db)
        audit.record_config(self.db, self.ledger, config.policy, self.clock.now())

    def import_roster(self, rows: list[tuple[str, str]], actor: str,
                      orgs: dict[str, str] | None = None) -> roster.ImportResult:
        """Replace the roster and its org paths (`roster.Rosters.replace`)."""
        return self.rosters.replace(rows, actor, orgs)

    def close_window(self, window_id: str, actor: str) -> window_store.CloseResult:
        """Force-close a window now and release its plan (`WindowCloser.close`)."""
        return self.closer.close(window_id, actor)

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
