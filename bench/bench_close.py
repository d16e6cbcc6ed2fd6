"""Closing a window: fold per-person rows into team statistics and shred them, in one transaction.

    python bench/bench_close.py [--people 1000000]

Usage is written through the real ingest path (4 metrics per person, one row per person);
the anchor, measured in the same run on an identical copy of the database, is the bare read
of those rows, without folding, writing or deleting.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

from _bench import parse

from chorus.server.domain import ingest
from chorus.server.model import config
from chorus.server.model.calendar import window_of
from chorus.server.model.clock import FakeClock
from chorus.server.root import Chorus
from chorus.server.store.sqlite import SqliteDatabase


def build(data: Path, people: int, clock: FakeClock) -> str:
    chorus = Chorus(config.load(None), data, clock=clock)
    users = [f"bench-user-{i:07d}" for i in range(people)]
    chorus.import_roster([(u, f"team-{i % 500}") for i, u in enumerate(users)], actor="bench")
    metrics = [m.name for m in chorus.config.policy.metrics]
    now = clock.now()
    for i in range(0, people, 1250):
        chorus.ingestor.report(ingest.Batch(uuid.uuid4().hex, "bench", "", 0, [
            ingest.Contribution(u, m, 1 + (j * 37) % 900, now) for j, u in enumerate(users[i:i + 1250])
            for m in metrics]))
    chorus.close()
    return window_of(now, chorus.config.policy.window_length).id


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--people", type=int, default=1_000_000)
    args = parse(parser, smoke={"people": 2000})
    clock = FakeClock(datetime(2026, 11, 25, 12, tzinfo=UTC))
    with tempfile.TemporaryDirectory() as tmp:
        data, copy = Path(tmp) / "data", Path(tmp) / "copy"
        started = time.perf_counter()
        window = build(data, args.people, clock)
        print(f"built {args.people:,} per-person rows ({args.people * 4:,} totals) in "
              f"{time.perf_counter() - started:.1f} s")
        shutil.copytree(data, copy)

        bare = SqliteDatabase(copy / "chorus.db")
        started = time.perf_counter()
        rows = bare.run(lambda tx: len(tx.query(
            "SELECT team, t0, t1, t2, t3 FROM usage WHERE window_id = ?", (window,))), name="bench")
        anchor = time.perf_counter() - started
        bare.close()

        clock.advance(timedelta(days=8))
        chorus = Chorus(config.load(None), data, clock=clock)
        started = time.perf_counter()
        result = chorus.close_window(window, actor="bench")
        elapsed = time.perf_counter() - started
        chorus.close()
    print(f"bare read of {rows:,} rows (anchor) : {anchor:8.2f} s")
    assert result.closed_now
    print(f"close: fold + shred + checkpoint   : {elapsed:8.2f} s ({rows:,} rows, "
          f"{elapsed / rows * 1e6:.2f} us/row)")
    print(f"ratio close / bare read            : {elapsed / anchor:8.2f}")


if __name__ == "__main__":
    main()
