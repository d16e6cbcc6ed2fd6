"""Versioned schema migrations, applied on start; safe when several replicas start at once."""

from __future__ import annotations

import logging

from chorus.server.model.policy import MAX_METRICS
from chorus.server.store._db import Database, Tx

_log = logging.getLogger(__name__)

# Arbitrary constant key for PostgreSQL advisory locks taken by migrations.
_MIGRATION_LOCK = 0x63686F72  # "chor"

# Each migration is a list of statements; `{blob}` becomes the engine's byte-string type,
# `{slots}` the per-metric total columns t0, t1, ... of a person's usage row, and
# `{without_rowid}` SQLite's clustered-primary-key clause (one B-tree per row, not two).
MIGRATIONS: list[tuple[int, str, list[str]]] = [
    (1, "initial schema", [
        # Roster: the company directory (user -> team). Not usage data.
        """CREATE TABLE roster (
            user_id TEXT PRIMARY KEY,
            team TEXT NOT NULL)""",
        """CREATE TABLE roster_version (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            version BIGINT NOT NULL,
            roster_hash TEXT NOT NULL)""",
        # Windows with their frozen policy (canonical JSON).
        """CREATE TABLE windows (
            id TEXT PRIMARY KEY,
            start_at BIGINT NOT NULL,
            end_at BIGINT NOT NULL,
            closes_at BIGINT NOT NULL,
            state TEXT NOT NULL CHECK (state IN ('open', 'closed')),
            policy TEXT NOT NULL,
            opened_at BIGINT NOT NULL,
            closed_at BIGINT,
            rows_folded BIGINT)""",
        # Random per-window HMAC key; deleted at close (crypto-shredding).
        """CREATE TABLE window_keys (
            window_id TEXT PRIMARY KEY REFERENCES windows(id),
            hmac_key {blob} NOT NULL)""",
        # Per-person rows, keyed by pseudonym, only while the window is open: the team the
        # person counts for (set by their first contribution, never updated) and one running
        # total per metric slot (the metric's position in the window's frozen policy).
        """CREATE TABLE usage (
            window_id TEXT NOT NULL,
            pseudonym {blob} NOT NULL,
            team TEXT NOT NULL,
            {slots},
            PRIMARY KEY (window_id, pseudonym))""",
        # Batch ids seen, for exactly-once ingest.
        """CREATE TABLE batches (
            batch_id TEXT PRIMARY KEY,
            received_at BIGINT NOT NULL)""",
        "CREATE INDEX batches_received ON batches (received_at)",
        # Per-team sufficient statistics, written at close.
        """CREATE TABLE team_windows (
            window_id TEXT NOT NULL REFERENCES windows(id),
            team TEXT NOT NULL,
            roster_size BIGINT NOT NULL,
            active BIGINT NOT NULL,
            PRIMARY KEY (window_id, team))""",
        """CREATE TABLE team_metrics (
            window_id TEXT NOT NULL,
            team TEXT NOT NULL,
            metric TEXT NOT NULL,
            total BIGINT NOT NULL,
            people BIGINT NOT NULL,
            histogram TEXT NOT NULL,
            PRIMARY KEY (window_id, team, metric))""",
        # Privacy budget per team-window, in micro-epsilon.
        """CREATE TABLE budgets (
            window_id TEXT NOT NULL,
            team TEXT NOT NULL,
            cap_micros BIGINT NOT NULL,
            spent_micros BIGINT NOT NULL DEFAULT 0 CHECK (spent_micros <= cap_micros),
            releases BIGINT NOT NULL DEFAULT 0,
            PRIMARY KEY (window_id, team))""",
        # Each (window, team, metric, statistic) is released at most once.
        """CREATE TABLE releases (
            release_id TEXT PRIMARY KEY,
            window_id TEXT NOT NULL,
            team TEXT NOT NULL,
            metric TEXT NOT NULL,
            statistic TEXT NOT NULL,
            result TEXT NOT NULL,
            epsilon_micros BIGINT NOT NULL,
            released_at BIGINT NOT NULL,
            ledger_seq BIGINT NOT NULL,
            UNIQUE (window_id, team, metric, statistic))""",
        # The append-only, hash-chained, signed ledger and its head (serialises appends).
        """CREATE TABLE ledger (
            seq BIGINT PRIMARY KEY,
            at TEXT NOT NULL,
            kind TEXT NOT NULL,
            payload TEXT NOT NULL,
            prev_hash TEXT NOT NULL,
            hash TEXT NOT NULL,
            signature TEXT NOT NULL)""",
        """CREATE TABLE ledger_head (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            seq BIGINT NOT NULL,
            hash TEXT NOT NULL)""",
        # Bearer tokens: only the SHA-256 of the secret is stored.
        """CREATE TABLE tokens (
            name TEXT PRIMARY KEY,
            role TEXT NOT NULL,
            token_hash TEXT NOT NULL UNIQUE,
            created_at BIGINT NOT NULL,
            revoked_at BIGINT)""",
        "INSERT INTO roster_version (id, version, roster_hash) VALUES (1, 0, '')",
        f"INSERT INTO ledger_head (id, seq, hash) VALUES (1, 0, '{'0' * 64}')",
    ]),
    (2, "purge exact team statistics after retention", [
        "ALTER TABLE windows ADD COLUMN purged_at BIGINT",
    ]),
    (3, "batch content digest: a reused batch_id with other contents is refused", [
        # SHA-256 of the batch's contents; NULL for batches stored before this migration.
        "ALTER TABLE batches ADD COLUMN digest {blob}",
    ]),
    # Per-person OTLP state of open windows, deleted at close with the window key
    # (chorus.server.domain.otlp.series): exactly-once keys of delta points, and the latest point of
    # each cumulative series. Keys are HMACs under the window key; no attribute value is stored.
    (4, "OTLP exactly-once keys and cumulative series state", [
        """CREATE TABLE otlp_points (
            window_id TEXT NOT NULL,
            point_key {blob} NOT NULL,
            PRIMARY KEY (window_id, point_key)){without_rowid}""",
        """CREATE TABLE otlp_series (
            window_id TEXT NOT NULL,
            series_key {blob} NOT NULL,
            start_ns BIGINT NOT NULL,
            time_ns BIGINT NOT NULL,
            value DOUBLE PRECISION NOT NULL,
            sealed {blob} NOT NULL,
            PRIMARY KEY (window_id, series_key)){without_rowid}""",
    ]),
    (5, "pending shreds and the store write probe", [
        # Deletions of secrets (a window's key and pseudonyms, removed roster ids) committed but
        # possibly still readable in the engine's files; see chorus.server.domain.shred. `version`
        # counts re-records of the subject, so clearing one never clears a later one.
        """CREATE TABLE pending_shreds (
            subject TEXT PRIMARY KEY,
            since BIGINT NOT NULL,
            version BIGINT NOT NULL DEFAULT 1)""",
        # Always empty: the health probe inserts and deletes a row in one transaction, a real
        # write (pages, WAL) that fails while the store cannot write, and leaves no state.
        "CREATE TABLE store_probe (id INTEGER PRIMARY KEY)",
    ]),
    # The exact number of people in each window, kept forever (past retention): not stored.
    (6, "drop windows.rows_folded", [
        "ALTER TABLE windows DROP COLUMN rows_folded",
    ]),
    # When the closer finished releasing the window's frozen release plan (chorus.server.domain.release);
    # NULL while it is pending. Until then only the plan may spend the window's budget.
    (7, "release plan completion", [
        "ALTER TABLE windows ADD COLUMN plan_released_at BIGINT",
    ]),
    # The organisation tree (chorus.server.model.hierarchy): each team's org path, replaced with the
    # roster, and frozen per window at close next to the roster sizes. Empty: under the company.
    (8, "org paths of teams", [
        """CREATE TABLE roster_orgs (
            team TEXT PRIMARY KEY,
            org TEXT NOT NULL)""",
        "ALTER TABLE team_windows ADD COLUMN org TEXT NOT NULL DEFAULT ''",
    ]),
]

_BLOB = {"sqlite": "BLOB", "postgresql": "BYTEA"}
_WITHOUT_ROWID = {"sqlite": " WITHOUT ROWID", "postgresql": ""}
_SLOTS = ",\n            ".join(f"t{i} BIGINT NOT NULL DEFAULT 0 CHECK (t{i} >= 0)" for i in range(MAX_METRICS))


def migrate(db: Database) -> int:
    """Apply pending migrations in one transaction; return the schema version."""

    def apply(tx: Tx) -> int:
        if tx.dialect == "postgresql":
            tx.execute("SELECT pg_advisory_xact_lock(?)", (_MIGRATION_LOCK,))
        tx.execute("""CREATE TABLE IF NOT EXISTS schema_migrations (
                          version INTEGER PRIMARY KEY, description TEXT NOT NULL)""")
        applied = {row[0] for row in tx.query("SELECT version FROM schema_migrations")}
        version = max(applied, default=0)
        for number, description, statements in MIGRATIONS:
            if number in applied:
                continue
            for statement in statements:
                tx.execute(statement.replace("{blob}", _BLOB[tx.dialect]).replace("{slots}", _SLOTS)
                           .replace("{without_rowid}", _WITHOUT_ROWID[tx.dialect]))
            tx.execute("INSERT INTO schema_migrations (version, description) VALUES (?, ?)",
                       (number, description))
            _log.info("applied schema migration %d (%s)", number, description)
            version = number
        return version

    return db.run(apply, name="migrate")
