"""Fixtures for domain-level server tests: a real SQLite store in tmp_path and a FakeClock."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from chorus.server.domain import ingest
from chorus.server.model.clock import FakeClock
from chorus.server.root import Chorus
from tests._policy import suite_config

NOON = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
TEAMS = {"team-red": 6, "team-blue": 5, "team-tiny": 2}


def roster_rows() -> list[tuple[str, str]]:
    return [(f"user-{team}-{i}", team) for team, size in TEAMS.items() for i in range(size)]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(NOON)


@pytest.fixture
def chorus(tmp_path: Path, clock: FakeClock) -> Iterator[Chorus]:
    instance = Chorus(suite_config(), tmp_path / "data", clock=clock)
    instance.import_roster(roster_rows(), actor="test")
    yield instance
    instance.close()


def batch(*contributions: tuple[str, str, int] | tuple[str, str, int, datetime],
          batch_id: str | None = None, at: datetime = NOON) -> ingest.Batch:
    """A batch of (user, metric, value[, event_time]) with a fresh id unless given."""
    return ingest.Batch(
        batch_id=batch_id or uuid.uuid4().hex, source="test-tool", source_version="1.0", dropped=0,
        contributions=[ingest.Contribution(c[0], c[1], c[2], c[3] if len(c) > 3 else at)  # type: ignore[misc]
                       for c in contributions])


def after(delta: timedelta) -> datetime:
    return NOON + delta
