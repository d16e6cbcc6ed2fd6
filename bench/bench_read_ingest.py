"""Ingest while a reader re-reads the full report, against ingest alone, as real processes.

    python bench/bench_read_ingest.py [--teams 500] [--people 10] [--seconds 6] [--rounds 3]

One SQLite store: a closed window of `teams` teams x `people` people x 5 metrics whose full
report (every team, metric, sum/count/mean/histogram: bench_release.py's) has been released, and
the next day's window open for ingest. An ingest process applies durable 1,000-contribution
batches (random people, the real ingest rules and store) for `seconds`; in alternate rounds a
reader process re-reads the full report (`validate_only`: the cached replay behind `chorus
report` and the dashboard) in a loop meanwhile, or a control process that only burns CPU. The
anchor is ingest alone in the same run, so the ratio is what one reader costs ingest; the
control's ratio is what any busy process costs it on this machine (on 2 shared cores, most of
the reader's cost). Target (issue 25): >= 0.6. Before reads ran in read transactions, the read
took the writer lock and the ratio was 0.12-0.18 (the control's 0.64 or more).
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import timedelta
from pathlib import Path

from _bench import parse
from bench_release import METRICS, NOON, REPORT, WINDOW, build

from chorus.server.domain import ingest
from chorus.server.model import config
from chorus.server.model.clock import FakeClock
from chorus.server.root import Chorus

NEXT_DAY = NOON + timedelta(days=1)
BATCH = 1000


def _open(data: Path) -> Chorus:
    return Chorus(config.load(data / "chorus.toml"), data / "data", clock=FakeClock(NEXT_DAY))


def ingest_worker(data: Path, seconds: float, teams: int, per_team: int) -> None:
    """Apply batches for `seconds`; print {"rate": contributions/s, "p99_ms": batch p99}."""
    chorus = _open(data)
    rng = random.Random(7)
    people = [f"u{t:04d}-{p:02d}" for t in range(teams) for p in range(per_team)]  # build()'s roster
    batches = [[ingest.Contribution(rng.choice(people), f"ai.metric{rng.randrange(METRICS)}", 1, NEXT_DAY)
                for _ in range(BATCH)] for _ in range(50)]
    print("ready", flush=True)
    sys.stdin.readline()
    latencies: list[float] = []
    started = time.perf_counter()
    done = 0
    while (now := time.perf_counter()) - started < seconds:
        chorus.ingestor.report(ingest.Batch(uuid.uuid4().hex, "bench", "1", 0, batches[done % len(batches)]))
        latencies.append(time.perf_counter() - now)
        done += 1
    elapsed = time.perf_counter() - started
    chorus.close()
    latencies.sort()
    print(json.dumps({"rate": done * BATCH / elapsed, "p99_ms": 1000 * latencies[int(0.99 * (len(latencies) - 1))]}),
          flush=True)


def _stdin_closed() -> threading.Event:
    """An event set when the parent closes this worker's stdin (its signal to stop and report)."""
    closed = threading.Event()

    def wait() -> None:
        sys.stdin.read()
        closed.set()

    threading.Thread(target=wait, daemon=True).start()
    return closed


def read_worker(data: Path) -> None:
    """Re-read the full report until stdin closes; print {"reads": n, "mean_ms": ...}."""
    chorus = _open(data)
    times: list[float] = []
    stop = _stdin_closed()
    while not stop.is_set():
        started = time.perf_counter()
        chorus.releases.release(WINDOW, [], [], REPORT, "bench", validate_only=True)
        times.append(time.perf_counter() - started)
        if len(times) == 1:
            print("reading", flush=True)
    chorus.close()
    print(json.dumps({"reads": len(times), "mean_ms": 1000 * statistics.mean(times)}), flush=True)


def spin_worker() -> None:
    """Burn CPU in Python until stdin closes (the control)."""
    stop = _stdin_closed()
    print("reading", flush=True)
    spins = 0
    while not stop.is_set():
        spins += sum(range(1000)) > 0
    print(json.dumps({"reads": 0, "mean_ms": 0.0}), flush=True)


def _spawn(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, __file__, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)


def _round(data: Path, seconds: float, teams: int, people: int, beside: str) -> tuple[dict[str, float],
                                                                                      dict[str, float] | None]:
    """Ingest for `seconds` with `beside` running ("": nothing, "read": the reader, "spin": the control)."""
    writer = _spawn("--worker-ingest", str(data), str(seconds), str(teams), str(people))
    assert writer.stdout is not None and writer.stdin is not None
    assert writer.stdout.readline().strip() == "ready"
    reader = None
    if beside:
        reader = _spawn(f"--worker-{beside}", str(data))
        assert reader.stdout is not None
        assert reader.stdout.readline().strip() == "reading"
    writer.stdin.write("go\n")
    writer.stdin.flush()
    result = json.loads(writer.stdout.readline())
    writer.wait(60)
    read = None
    if reader is not None:
        assert reader.stdin is not None and reader.stdout is not None
        reader.stdin.close()
        read = json.loads(reader.stdout.readline())
        reader.wait(60)
    return result, read


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teams", type=int, default=500)
    parser.add_argument("--people", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parse(parser, smoke={"teams": 10, "seconds": 1.0, "rounds": 1})
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "store"
        data.mkdir()
        build(data, args.teams, args.people)
        chorus = _open(data)
        chorus.releases.release(WINDOW, [], [], REPORT, "bench")  # the full report, released once
        chorus.close()
        ratios, controls = [], []
        for r in range(args.rounds):
            copy = Path(tmp) / f"round-{r}"  # one store for the three parts of a round
            shutil.copytree(data, copy)
            solo, _ = _round(copy, args.seconds, args.teams, args.people, beside="")
            both, read = _round(copy, args.seconds, args.teams, args.people, beside="read")
            spun, _ = _round(copy, args.seconds, args.teams, args.people, beside="spin")
            assert read is not None
            ratios.append(both["rate"] / solo["rate"])
            controls.append(spun["rate"] / solo["rate"])
            print(f"round {r}: ingest alone {solo['rate']:,.0f}/s (batch p99 {solo['p99_ms']:.1f} ms); "
                  f"with a reader {both['rate']:,.0f}/s (p99 {both['p99_ms']:.1f} ms), the reader "
                  f"{read['reads']} full reports at {read['mean_ms']:.0f} ms; with the CPU control "
                  f"{spun['rate']:,.0f}/s; ratios {ratios[-1]:.2f} and {controls[-1]:.2f}", flush=True)
        print(f"ingest with a reader / ingest alone: median ratio {statistics.median(ratios):.2f} over "
              f"{args.rounds} round(s) ({args.teams} teams; target >= 0.6); with the CPU control instead: "
              f"control ratio {statistics.median(controls):.2f}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker-ingest":
        ingest_worker(Path(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]))
    elif len(sys.argv) > 1 and sys.argv[1] == "--worker-read":
        read_worker(Path(sys.argv[2]))
    elif len(sys.argv) > 1 and sys.argv[1] == "--worker-spin":
        spin_worker()
    else:
        main()
