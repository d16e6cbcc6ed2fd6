"""A company a VP would look at: 35 teams in 8 orgs, 8 closed ISO weeks, adoption really growing.

Team sizes cycle through 8, 12, 20, 30 and 45 people (805 in all); the share of each team's
roster using AI grows from 30% in the first week to 65% in the last, and the share of AI edits
people accept (the default plan's outcome) from 25% to 45%. The server runs the
product's default configuration (weekly windows, the default release plan), so every number
the dashboard shows is what a real deployment would publish. Used by the browser journey
(test_vp_journey.py) and by `python -m tests.dashboard.vp_data DIR` to keep a data directory
for screenshots.
"""

from __future__ import annotations

import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

from chorus.server.domain import ingest
from chorus.server.model import config
from chorus.server.model.clock import FakeClock
from chorus.server.root import Chorus

ORGS = ("engineering", "product", "sales", "support", "data", "design", "finance", "operations")
SIZES = (8, 12, 20, 30, 45)
TEAMS = {f"{ORGS[i % len(ORGS)]}-{i // len(ORGS) + 1}": SIZES[i % len(SIZES)] for i in range(35)}
WEEKS = 8
START = datetime(2026, 10, 7, 12, tzinfo=UTC)  # a Wednesday in ISO week 2026-W41
ADOPTION = [0.30 + (0.65 - 0.30) * w / (WEEKS - 1) for w in range(WEEKS)]
ACCEPTED = [0.25 + (0.45 - 0.25) * w / (WEEKS - 1) for w in range(WEEKS)]
DECIDED = 200  # AI edits each active person accepts or rejects in a week


def org_of(team: str) -> str:
    return team.rsplit("-", 1)[0]


def build(data_dir: Path) -> tuple[Chorus, FakeClock, list[str]]:
    """The company's data directory with its 8 weeks closed (and their plan released); the week ids."""
    clock = FakeClock(START)
    chorus = Chorus(config.load(None), data_dir, clock=clock)
    chorus.import_roster([(f"{team}-p{i}", team) for team, size in TEAMS.items() for i in range(size)],
                         actor="vp-data", orgs={team: org_of(team) for team in TEAMS})
    weeks = []
    for week in range(WEEKS):
        at = START + timedelta(weeks=week)
        clock.set(at)
        rows = []
        for number, (team, size) in enumerate(TEAMS.items()):
            # Orgs differ a little around the company's growth: engineering leads, finance lags.
            share = min(1.0, max(0.0, ADOPTION[week] + 0.04 * (3.5 - number % len(ORGS)) / 3.5))
            for i in range(round(share * size)):
                accepted = round(DECIDED * ACCEPTED[week])
                rows += [ingest.Contribution(f"{team}-p{i}", "ai.tokens", 40_000 + 1_000 * i, at),
                         ingest.Contribution(f"{team}-p{i}", "ai.requests", 150 + 5 * i, at),
                         ingest.Contribution(f"{team}-p{i}", "ai.suggestions_accepted", accepted, at),
                         ingest.Contribution(f"{team}-p{i}", "ai.suggestions_rejected", DECIDED - accepted, at)]
        outcome = chorus.ingestor.report(ingest.Batch(uuid.uuid4().hex, "vp-data", "1.0", 0, rows))
        assert not outcome.rejections
        week_id = f"{at.isocalendar().year}-W{at.isocalendar().week:02d}"
        chorus.close_window(week_id, actor="vp-data")
        weeks.append(week_id)
    clock.set(START + timedelta(weeks=WEEKS))
    return chorus, clock, weeks


if __name__ == "__main__":
    built, _, ids = build(Path(sys.argv[1]))
    print(f"closed {', '.join(ids)}")
    built.close()
