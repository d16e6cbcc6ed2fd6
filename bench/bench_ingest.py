"""Durable ingest throughput: load generator -> gRPC -> Chorus -> SQLite with 1 and N workers
(`chorus serve --workers N`), against anchors that are physical limits, measured in the same run:

    python bench/bench_ingest.py [--people 10000 100000 1000000] [--rounds N] [--workers 1 2]
                                 [--repeats 2] [--clients 2] [--channels 4]

* the bare store: the same rows upserted straight into SQLite (synchronous=FULL, one batch's
  people x the default config's metrics per transaction, no gRPC, no rules), once in **random** pseudonym order, as real
  batches arrive (a batch's people are spread over HMAC space; each batch sorted as the server
  sorts it), and once in globally **sorted** order (consecutive batches hit neighbouring
  B-tree pages: a rate real traffic never reaches, printed beside it);
* a no-op gRPC server that parses each Report and answers (bench/_noop_server.py);
* the writer's ceiling: the same batches through an in-process `Ingestor`, timing only what
  runs inside the store's write transaction (writer lock, BEGIN IMMEDIATE, commit): no number
  of workers can ingest faster than one contribution per that time.

Chorus and the no-op server are fed by the same load generator: `--clients` processes with
`--channels` connections each (one request in flight per connection, so SO_REUSEPORT spreads
them over the workers), sending pre-serialised Reports of at most 5,000 contributions (the SDK's
largest batch: 454 people x the default config's 11 metrics) whose only per-request work is prefixing a fresh batch id;
that costs almost nothing, so the figures are the server's. Each person is on the roster; one
round sends one contribution per (person, metric). Measurements are alternated `--repeats`
times (the machine is shared) and each prints the load average.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import _load
import grpc
from _bench import load_average, parse

from chorus.server.domain import ingest
from chorus.server.model import config
from chorus.server.root import Chorus
from chorus.server.store import usage
from chorus.server.store._schema import migrate
from chorus.server.store.sqlite import SqliteDatabase
from chorus.server.transport.services import ingest as services_ingest
from chorus.v1 import admin_pb2, admin_pb2_grpc, ingest_pb2

ROOT = Path(__file__).resolve().parent.parent
METRICS = [m.name for m in config.load(None).policy.metrics]
PER_BATCH = 5000 // len(METRICS)  # people per batch
READY = re.compile(r"serving on (127\.0\.0\.1:\d+)")


def users_for(people: int) -> list[str]:
    return [f"bench-user-{i:07d}" for i in range(people)]


def start(args: list[str]) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "COLUMNS": "200"})
    assert proc.stdout is not None
    for line in proc.stdout:
        if m := READY.search(line):
            return proc, m[1]
    raise RuntimeError(f"server did not start: {args}")


def batches(users: list[str]) -> list[list[str]]:
    """The people of each batch: consecutive names, i.e. random in HMAC space."""
    return [users[i:i + PER_BATCH] for i in range(0, len(users), PER_BATCH)]


def generate(address: str, token: str, users: list[str], rounds: int, clients: int, channels: int) -> float:
    """Contributions/s through `clients` load generators (bench/_load.py) x `channels`
    connections, every answer checked; the clock runs from "go" to the last answer."""
    connections = clients * channels
    all_batches = batches(users)
    shards = [all_batches[i::connections] for i in range(connections)]
    procs = [subprocess.Popen([sys.executable, str(ROOT / "bench" / "_load.py")], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True) for _ in range(clients)]
    try:
        for c, proc in enumerate(procs):
            assert proc.stdin is not None
            proc.stdin.write(json.dumps({"address": address, "token": token, "rounds": rounds,
                                         "metrics": METRICS, "shards": shards[c::clients]}) + "\n")
            proc.stdin.flush()
        for proc in procs:  # every generator serialised its requests and connected
            assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        started = time.perf_counter()
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        outcomes = [json.loads(proc.stdout.readline()) for proc in procs if proc.stdout is not None]
        elapsed = time.perf_counter() - started
    finally:
        for proc in procs:
            proc.kill()
            proc.wait(30)
    errors = [e for outcome in outcomes for e in outcome["errors"]]
    if errors:
        raise RuntimeError(f"lost contributions: {errors[:3]}")
    sent = sum(outcome["sent"] for outcome in outcomes)
    assert sent == len(users) * len(METRICS) * rounds, sent
    return sent / elapsed


def bare_store_rate(users: list[str], rounds: int, order: str) -> tuple[float, float]:
    """The same upserts straight into SQLite, no gRPC, no validation: the store's ceiling, in
    contributions/s and CPU seconds per contribution. `order`: "random" (each batch's people
    as real batches bring them, the batch sorted) or "sorted" (globally sorted pseudonyms)."""
    with tempfile.TemporaryDirectory() as tmp:
        db = SqliteDatabase(Path(tmp) / "bare.db", synchronous="FULL")
        migrate(db)
        bounds = (10**9,) * len(METRICS)
        rows = [("2026-01-01", hmac.digest(b"k" * 32, user.encode(), hashlib.sha256), "team",
                 *[1] * len(METRICS)) for user in users]
        if order == "sorted":
            rows.sort()
        chunks = [sorted(rows[i:i + PER_BATCH]) for i in range(0, len(rows), PER_BATCH)]
        started, cpu = time.perf_counter(), time.process_time()
        for _ in range(rounds):
            for chunk in chunks:
                db.run(lambda tx, c=chunk: usage.add(tx, bounds, c), name="bench")
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
        db.close()
    contributions = len(rows) * len(METRICS) * rounds
    return contributions / elapsed, cpu / contributions


class _TimedDatabase:
    """The store, timing each ingest transaction: the write transaction (the writer is held for
    all of `run`) and the read transaction that prepares the batch, in wall and CPU seconds."""

    def __init__(self, db: Any) -> None:
        self._db = db
        self.seconds: dict[str, list[float]] = {"ingest": [0.0, 0.0], "ingest_prepare": [0.0, 0.0]}

    def _timed(self, call: Callable[..., Any], fn: Callable[..., Any], name: str) -> Any:
        started, cpu = time.perf_counter(), time.process_time()
        try:
            return call(fn, name=name)
        finally:
            if name in self.seconds:
                self.seconds[name][0] += time.perf_counter() - started
                self.seconds[name][1] += time.process_time() - cpu

    def run(self, fn: Callable[..., Any], *, name: str) -> Any:
        return self._timed(self._db.run, fn, name)

    def read(self, fn: Callable[..., Any], *, name: str) -> Any:
        return self._timed(self._db.read, fn, name)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._db, name)


def in_process(users: list[str], rounds: int) -> dict[str, float]:
    """The server's steps per contribution without gRPC, through the servicer's own functions:
    CPU seconds of decoding, grouping, digest and validation, of preparing (read transaction)
    and of the write transaction, its wall seconds (the writer's ceiling is its inverse), and
    the in-process rate."""
    with tempfile.TemporaryDirectory() as tmp:
        chorus = Chorus(config.load(None), Path(tmp) / "data")
        try:
            chorus.import_roster([(u, f"team-{i % 500}") for i, u in enumerate(users)], actor="bench")
            timed = _TimedDatabase(chorus.db)
            ingestor = ingest.Ingestor(timed, chorus.config.policy, chorus.ledger, chorus.clock,  # type: ignore[arg-type]
                                       chorus.roster)
            when = chorus.clock.now() - timedelta(minutes=1)
            bodies = [_load.serialised(people, METRICS, when) for people in batches(users)]
            cpu = dict.fromkeys(("decode", "group", "digest", "validate"), 0.0)
            started = time.perf_counter()
            for _ in range(rounds):
                for body in bodies:
                    t0 = time.process_time()
                    request = ingest_pb2.ReportRequest.FromString(
                        ingest_pb2.ReportRequest(batch_id=uuid.uuid4().hex).SerializeToString() + body)
                    t1 = time.process_time()
                    grouped = services_ingest._contributions(request)
                    t2 = time.process_time()
                    digest = services_ingest.content_digest(request)
                    t3 = time.process_time()
                    batch = ingest.Batch(request.batch_id, request.source, request.source_version, 0, grouped, digest)
                    ingest.validate(batch, chorus.config.limits)
                    t4 = time.process_time()
                    for step, seconds in zip(cpu, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
                        cpu[step] += seconds
                    outcome = ingestor.report(batch)
                    assert outcome.accepted == len(grouped), outcome
            elapsed = time.perf_counter() - started
        finally:
            chorus.close()
    n = len(users) * len(METRICS) * rounds
    return {**{step: seconds / n for step, seconds in cpu.items()},
            "prepare": timed.seconds["ingest_prepare"][1] / n, "write": timed.seconds["ingest"][1] / n,
            "write wall": timed.seconds["ingest"][0] / n, "rate": n / elapsed}


def server_cpu_seconds(pid: int) -> float:
    """User + system CPU of a server process and its live workers (Linux /proc)."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    total = 0
    for p in (pid, *map(int, children)):
        fields = Path(f"/proc/{p}/stat").read_text().rpartition(")")[2].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / os.sysconf("SC_CLK_TCK")


def peak_memory_mib(pid: int) -> list[float]:
    """Peak resident memory (VmHWM) of a server process and of each live worker, MiB."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    out = []
    for p in (pid, *map(int, children)):
        line = next(x for x in Path(f"/proc/{p}/status").read_text().splitlines() if x.startswith("VmHWM:"))
        out.append(int(line.split()[1]) / 1024)
    return out


def chorus_rate(users: list[str], rounds: int, clients: int, channels: int,
                workers: str) -> tuple[float, float, list[float]]:
    """Contributions/s, server CPU seconds per contribution, peak memory per process (MiB)."""
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        proc, address = start([sys.executable, "-m", "chorus.server.cli", "serve", "--data-dir", str(data),
                               "--listen", "127.0.0.1:0", "--log-level", "WARNING", "--workers", workers])
        try:
            admin = (("authorization", f"Bearer {(data / 'admin.token').read_text().strip()}"),)
            with grpc.insecure_channel(address) as channel:
                stub = admin_pb2_grpc.AdminServiceStub(channel)
                chunks = [admin_pb2.ImportRosterRequest(entries=[
                    admin_pb2.RosterEntry(user=u, team=f"team-{i % 500}") for i, u in
                    enumerate(users[j:j + 10_000], start=j)]) for j in range(0, len(users), 10_000)]
                stub.ImportRoster(iter(chunks), metadata=admin, timeout=600)
                token = stub.CreateToken(admin_pb2.CreateTokenRequest(role=admin_pb2.ROLE_INGEST, name="bench"),
                                         metadata=admin).token
            cpu = server_cpu_seconds(proc.pid)
            rate = generate(address, token, users, rounds, clients, channels)
            contributions = len(users) * len(METRICS) * rounds
            return rate, (server_cpu_seconds(proc.pid) - cpu) / contributions, peak_memory_mib(proc.pid)
        finally:
            proc.terminate()
            proc.wait(30)


def noop_rate(users: list[str], rounds: int, clients: int, channels: int) -> float:
    proc, address = start([sys.executable, str(ROOT / "bench" / "_noop_server.py")])
    try:
        return generate(address, "unused", users, rounds, clients, channels)
    finally:
        proc.terminate()
        proc.wait(30)


def _ranges(values: list[float], fmt: str = ",.0f") -> str:
    low, high = min(values), max(values)
    if len(values) == 1:
        return f"{low:{fmt}}"
    return f"{low:{fmt}}-{high:{fmt}} (median {statistics.median(values):{fmt}})"


def measurements(args: argparse.Namespace, users: list[str], rounds: int) -> Iterator[tuple[str, float]]:
    """(name, value) of one repeat, each measurement followed by its load average."""
    for order in ("random", "sorted"):
        rate, cpu = bare_store_rate(users, rounds, order)
        yield f"bare {order}", rate
        yield f"bare {order} cpu", cpu
    steps = in_process(users, rounds)
    yield "writer ceiling", 1 / steps["write wall"]
    yield "in-process", steps["rate"]
    for step in ("decode", "group", "digest", "validate", "prepare", "write"):
        yield f"{step} cpu", steps[step]
    yield "noop", noop_rate(users, rounds, args.clients, args.channels)
    for workers in args.workers:
        rate, cpu, memory = chorus_rate(users, rounds, args.clients, args.channels, workers)
        yield f"chorus {workers}", rate
        yield f"chorus {workers} cpu", cpu
        print(f"    chorus {workers} worker(s): peak memory {', '.join(f'{m:,.0f}' for m in memory)} MiB "
              "(the server process, then each worker)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--people", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--rounds", type=int, default=0, help="default: 1M contributions, at least 2 rounds")
    parser.add_argument("--clients", type=int, default=2, help="load-generator processes")
    parser.add_argument("--channels", type=int, default=4, help="connections per load-generator process")
    parser.add_argument("--workers", nargs="+", default=["1", "2"],
                        help="`chorus serve --workers` values to measure (default: 1 and 2)")
    parser.add_argument("--repeats", type=int, default=2, help="alternated repeats of every measurement")
    args = parse(parser, smoke={"people": [2_500], "rounds": 2, "repeats": 1, "clients": 1, "channels": 2})
    for people in args.people:
        users = users_for(people)
        rounds = args.rounds or max(2, 1_000_000 // (people * len(METRICS)))
        total = people * len(METRICS) * rounds
        print(f"\n{people:,} people x {len(METRICS)} metrics, {rounds} rounds, {total:,} contributions per "
              f"measurement; {args.clients} load generators x {args.channels} connections", flush=True)
        results: dict[str, list[float]] = {}
        loads: list[float] = []
        for repeat in range(args.repeats):
            for name, value in measurements(args, users, rounds):
                results.setdefault(name, []).append(value)
                if not name.endswith("cpu"):
                    print(f"  repeat {repeat + 1}: {name:16} {value:12,.0f} contributions/s   {load_average()}",
                          flush=True)
            loads.append(os.getloadavg()[0])
        print(f"summary for {people:,} people (ranges over {args.repeats} repeats, 1-minute load averages "
              f"{min(loads):.2f}-{max(loads):.2f}):")
        random_, sorted_ = results["bare random"], results["bare sorted"]
        print(f"  bare SQLite upsert, random order : {_ranges(random_)} contributions/s, "
              f"CPU {_ranges([c * 1e6 for c in results['bare random cpu']], '.2f')} us per contribution")
        print(f"  bare SQLite upsert, sorted order : {_ranges(sorted_)} contributions/s "
              f"({_ranges([s / r for s, r in zip(sorted_, random_, strict=True)], '.2f')} x random)")
        print(f"  no-op gRPC server                : {_ranges(results['noop'])} contributions/s")
        print(f"  writer's ceiling (in-transaction): {_ranges(results['writer ceiling'])} contributions/s; "
              f"in-process, without gRPC: {_ranges(results['in-process'])}/s")
        print("  in-process CPU per contribution, us: " + ", ".join(
            f"{step} {_ranges([c * 1e6 for c in results[f'{step} cpu']], '.2f')}"
            for step in ("decode", "group", "digest", "validate", "prepare", "write")))
        for workers in args.workers:
            rates = results[f"chorus {workers}"]
            cpu = [c * 1e6 for c in results[f"chorus {workers} cpu"]]
            print(f"  chorus, {workers} worker(s)             : {_ranges(rates)} contributions/s, server CPU "
                  f"{_ranges(cpu, '.2f')} us per contribution")
            print(f"      / bare random {_ranges([c / b for c, b in zip(rates, random_, strict=True)], '.2f')}, "
                  f"/ bare sorted {_ranges([c / b for c, b in zip(rates, sorted_, strict=True)], '.2f')}, "
                  f"/ no-op gRPC {_ranges([c / n for c, n in zip(rates, results['noop'], strict=True)], '.2f')}")
        if len(args.workers) > 1:
            one = results[f"chorus {args.workers[0]}"]
            for workers in args.workers[1:]:
                ratio = [n / o for n, o in zip(results[f"chorus {workers}"], one, strict=True)]
                print(f"  {workers} workers / {args.workers[0]} worker: {_ranges(ratio, '.2f')}")


if __name__ == "__main__":
    main()
