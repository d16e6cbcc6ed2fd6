"""Shredding does not depend on luck: a reader that pins SQLite's WAL leaves the shred pending,
visible in stats and persisted across a restart, and the closer's ticks finish it once the
reader leaves (docs/privacy.md, "When deleted bytes are gone")."""

from __future__ import annotations

import itertools
import logging
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import pytest

from chorus.server.domain import ingest, shred
from chorus.server.model.clock import FakeClock
from chorus.server.root import Chorus
from chorus.server.store import SQLITE_FILE
from chorus.server.transport.grpc_server import admin_servicer
from chorus.v1 import admin_pb2
from tests._policy import suite_config

from .conftest import batch, roster_rows

WINDOW = "2026-11-25"
REMOVED = "user-team-red-5"  # on the first roster, not on the second
#: Ticks of the closer (30 s apart) within which a pending shred must complete once the
#: reader has left: the first retry comes 30 s after the failed attempt.
MAX_TICKS = 2


def _files(data_dir: Path) -> dict[str, bytes]:
    return {name: (data_dir / name).read_bytes() for name in
            (SQLITE_FILE, f"{SQLITE_FILE}-wal", f"{SQLITE_FILE}-shm") if (data_dir / name).exists()}


def _secrets(chorus: Chorus) -> list[bytes]:
    """The window key, every pseudonym (raw and hex) and the raw id of the person to remove."""
    (key,), = chorus.db.run(lambda tx: tx.query("SELECT hmac_key FROM window_keys WHERE window_id = ?",
                                                (WINDOW,)), name="t")
    pseudonyms = [ingest.pseudonym(bytes(key), user) for user, _ in roster_rows()]
    return [bytes(key), *pseudonyms, *(p.hex().encode() for p in pseudonyms), REMOVED.encode()]


def _left(chorus: Chorus, secrets: list[bytes]) -> dict[str, int]:
    """How many of the secrets each database file still holds."""
    return {name: sum(s in data for s in secrets) for name, data in _files(chorus.data_dir).items()}


@contextmanager
def _reader(chorus: Chorus) -> Iterator[sqlite3.Connection]:
    """Another connection holding a read transaction, as a `sqlite3` shell or a backup tool would."""
    conn = sqlite3.connect(chorus.data_dir / SQLITE_FILE, isolation_level=None)
    conn.execute("BEGIN")
    conn.execute("SELECT COUNT(*) FROM windows").fetchall()
    try:
        yield conn
    finally:
        conn.execute("ROLLBACK")
        conn.close()


def _close_with_a_reader(chorus: Chorus) -> list[bytes]:
    chorus.ingestor.report(batch(*((user, "ai.tokens", 100 + i) for i, (user, _) in enumerate(roster_rows()))))
    secrets = _secrets(chorus)
    with _reader(chorus):
        chorus.import_roster([row for row in roster_rows() if row[0] != REMOVED], actor="test")
        assert chorus.close_window(WINDOW, actor="test").closed_now
        assert not chorus.shredder.attempt()  # still pinned
    return secrets


def _stats(chorus: Chorus) -> admin_pb2.GetStatsResponse:
    return admin_servicer(chorus).GetStats(admin_pb2.GetStatsRequest(), None)  # type: ignore[arg-type]


def test_a_reader_pinning_the_wal_leaves_the_shred_pending_until_a_closer_tick_after_it_left(
        chorus: Chorus, clock: FakeClock, caplog: pytest.LogCaptureFixture) -> None:
    conn = sqlite3.connect(chorus.data_dir / SQLITE_FILE, isolation_level=None)
    chorus.ingestor.report(batch(*((user, "ai.tokens", 100 + i) for i, (user, _) in enumerate(roster_rows()))))
    secrets = _secrets(chorus)
    with caplog.at_level(logging.INFO, logger="chorus.server.domain.shred"):
        conn.execute("BEGIN")
        conn.execute("SELECT COUNT(*) FROM windows").fetchall()  # a read transaction across the close
        chorus.import_roster([row for row in roster_rows() if row[0] != REMOVED], actor="test")
        assert chorus.close_window(WINDOW, actor="test").closed_now
        clock.advance(timedelta(seconds=30))
        chorus.closer.tick()  # the reader is still there: the retry fails too

        # Pending, and shown as such: the bytes are still on disk.
        assert sum(_left(chorus, secrets).values()) > 0
        pending = {p.subject: p.pending_seconds for p in _stats(chorus).pending_shreds}
        assert pending == {f"window {WINDOW}": 30, shred.ROSTER: 30}
        conn.execute("ROLLBACK")
        conn.close()

        for _ in range(MAX_TICKS):
            clock.advance(timedelta(seconds=30))
            chorus.closer.tick()
            if not _stats(chorus).pending_shreds:
                break
    assert not _stats(chorus).pending_shreds, f"still pending after {MAX_TICKS} ticks"
    assert _left(chorus, secrets) == {SQLITE_FILE: 0, f"{SQLITE_FILE}-wal": 0, f"{SQLITE_FILE}-shm": 0}
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    # One warning per subject, naming it and how long it has been pending; none per retry.
    assert len(warnings) == 2
    assert any(f"window {WINDOW} pending for 0 s" in w for w in warnings)
    assert any(f"window {WINDOW} complete after" in r.getMessage() for r in caplog.records)


def test_a_pending_shred_survives_a_restart(chorus: Chorus, clock: FakeClock) -> None:
    secrets = _close_with_a_reader(chorus)
    with _reader(chorus):
        chorus.close()  # its last attempt fails too: the reader is still there
        restarted = Chorus(suite_config(), chorus.data_dir, clock=clock)
    try:
        assert [p.subject for p in restarted.shredder.pending()] == [shred.ROSTER, f"window {WINDOW}"]
        restarted.closer.tick()  # the first tick after a start retries at once
        assert restarted.shredder.pending() == []
        assert sum(_left(restarted, secrets).values()) == 0
    finally:
        restarted.close()


def test_without_a_reader_the_shred_completes_at_close(chorus: Chorus) -> None:
    chorus.ingestor.report(batch(("user-team-red-0", "ai.tokens", 10)))
    secrets = _secrets(chorus)
    chorus.close_window(WINDOW, actor="test")
    assert chorus.shredder.pending() == []
    assert sum(_left(chorus, secrets[:1]).values()) == 0


def test_a_stopping_server_completes_the_shred_once_the_reader_has_left(chorus: Chorus, clock: FakeClock) -> None:
    secrets = _close_with_a_reader(chorus)
    chorus.close()  # no closer tick: the last attempt at shutdown does it
    assert sum(_left(chorus, secrets).values()) == 0
    reopened = Chorus(suite_config(), chorus.data_dir, clock=clock)
    try:
        assert reopened.shredder.pending() == []
    finally:
        reopened.close()


def test_retries_back_off_from_30_seconds_doubling_to_5_minutes(chorus: Chorus, clock: FakeClock,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    attempts = []
    checkpoint = chorus.db.checkpoint

    def counted() -> bool:
        attempts.append(clock.now())
        return checkpoint()

    monkeypatch.setattr(chorus.db, "checkpoint", counted)
    with _reader(chorus):
        chorus.ingestor.report(batch(("user-team-red-0", "ai.tokens", 10)))
        chorus.close_window(WINDOW, actor="test")
        for _ in range(60):  # 30 minutes of closer ticks
            clock.advance(timedelta(seconds=30))
            chorus.closer.tick()
    gaps = [int((b - a).total_seconds()) for a, b in itertools.pairwise(attempts)]
    assert gaps[:6] == [30, 60, 120, 240, 300, 300]
