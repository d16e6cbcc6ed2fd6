"""Ingest prepares a batch before the write transaction; a change committed in between is seen.

A batch is resolved (rules, pseudonyms, rows) in a read transaction, outside the writer lock;
the write transaction rechecks the roster's version and each window's key and resolves the
batch again when either changed (chorus.server.domain.ingest). These tests make that race
happen every time, with two real processes on one SQLite store: a second process holds the
store's write transaction open with a roster import or a window close in it, this process
ingests a batch meanwhile (it prepares, then waits for the writer's flock), and the holder
commits. The answer and the stored totals must be those the batch gets after the change;
without the recheck they are those from before (each test fails with it removed).
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from chorus.server.domain import ingest
from chorus.server.model.calendar import window_of
from chorus.server.root import Chorus
from tests._policy import suite_config

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
ROSTER = [(f"user-{i}", "team-red") for i in range(6)]
#: Holds one write transaction open (printing "holding") until a line arrives on stdin.
HOLDER = """
import sys
from pathlib import Path
from chorus.server.domain import roster, shred, windows
from chorus.server.root import Chorus
from tests._policy import suite_config

data, action, arg = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
chorus = Chorus(suite_config(), data)
now = chorus.clock.now()

def change(tx):
    if action == "roster":
        shred.record(tx, shred.ROSTER, now)
        roster.replace(tx, [(u, "team-red") for u in arg.split(",")], chorus.ledger, now, "test")
    else:
        windows.close(tx, arg, chorus.ledger, now, "test")
    print("holding", flush=True)
    sys.stdin.readline()

chorus.db.run(change, name="test_hold")
print("committed", flush=True)
chorus.close()
"""


@pytest.fixture
def chorus(tmp_path: Path) -> Iterator[Chorus]:
    instance = Chorus(suite_config(), tmp_path / "data")
    instance.import_roster(ROSTER, actor="test")
    yield instance
    instance.close()


def _batch(*users: str) -> ingest.Batch:
    now = datetime.now(UTC)
    return ingest.Batch(uuid.uuid4().hex, "test", "1", 0, [ingest.Contribution(u, "ai.tokens", 7, now) for u in users])


def _while_held(chorus: Chorus, action: str, arg: str, batch: ingest.Batch) -> ingest.Outcome:
    """Ingest `batch` while another process holds a write transaction doing `action`, which it
    commits once this process had the time to prepare the batch."""
    assert chorus.ingestor.report(_batch("user-1")).accepted == 1  # the window exists: no opening
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(chorus.data_dir), action, arg], cwd=ROOT,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdin is not None and holder.stdout is not None
    outcome: list[ingest.Outcome] = []
    try:
        assert holder.stdout.readline() == "holding\n"
        sender = threading.Thread(target=lambda: outcome.append(chorus.ingestor.report(batch)))
        sender.start()
        time.sleep(1.0)  # it prepares in a read transaction, then waits for the writer
        assert not outcome, "the batch went through while another process held the writer"
        holder.stdin.write("go\n")
        holder.stdin.flush()
        assert holder.stdout.readline() == "committed\n"
        sender.join(30)
        return outcome[0]
    finally:
        holder.kill()
        holder.wait(10)


def _tokens(chorus: Chorus, window: str) -> int:
    return int(chorus.db.read(lambda tx: tx.query("SELECT COALESCE(SUM(t0), 0) FROM usage WHERE window_id = ?",
                                                  (window,))[0][0], name="test"))


def _window() -> str:
    return window_of(datetime.now(UTC), suite_config().policy.window_length).id


def test_a_person_removed_while_a_batch_waits_for_the_writer_is_not_counted(chorus: Chorus) -> None:
    kept = ",".join(u for u, _ in ROSTER if u != "user-0")
    outcome = _while_held(chorus, "roster", kept, _batch("user-0", "user-2"))
    assert [(r.index, r.reason) for r in outcome.rejections] == [(0, ingest.Reason.UNKNOWN_USER)]
    assert outcome.accepted == 1
    assert _tokens(chorus, _window()) == 7 + 7  # user-1's and user-2's, not user-0's


def test_a_person_added_while_a_batch_waits_for_the_writer_is_counted(chorus: Chorus) -> None:
    everyone = ",".join([*(u for u, _ in ROSTER), "user-new"])
    outcome = _while_held(chorus, "roster", everyone, _batch("user-new", "user-2"))
    assert outcome.rejections == [] and outcome.accepted == 2
    assert _tokens(chorus, _window()) == 7 + 7 + 7


def test_a_window_closed_while_a_batch_waits_for_the_writer_takes_nothing(chorus: Chorus) -> None:
    window = _window()
    outcome = _while_held(chorus, "close", window, _batch("user-0", "user-2"))
    assert outcome.accepted == 0
    assert [(r.index, r.reason) for r in outcome.rejections] == [(0, ingest.Reason.LATE), (1, ingest.Reason.LATE)]
    assert "closed" in outcome.rejections[0].message
    assert _tokens(chorus, window) == 0  # the close folded user-1's row and shredded it; nothing after it
