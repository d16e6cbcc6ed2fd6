"""Durable ingest into PostgreSQL through one and two replica processes, against the bare
PostgreSQL upsert rate measured in the same run.

    python bench/bench_ingest_pg.py [--batches 200] [--batch-size 500] [--senders 8]

Anchors: the ingest transaction's store operations alone (`store.batches.claim`,
`store.usage.add`), without gRPC or domain logic, pseudonyms precomputed:
  * pipelined executemany: psycopg's executemany, one pipelined statement per row;
  * engine bulk path: what the PostgreSQL `Tx.add_usage` does for 128 rows or more, COPY
    into a temporary staging table, then one INSERT ... SELECT ... ON CONFLICT merge.
The replicas' rate is reported as a ratio to the bulk-path anchor.
Replicas: `chorus serve --database URL` child processes fed pre-built ReportRequests over
gRPC by `--senders` threads. CPU seconds of each server process and of its PostgreSQL
backends (found by application_name in pg_stat_activity, read from /proc) locate the
bottleneck. PostgreSQL must run on this machine (CHORUS_TEST_POSTGRES, default
postgresql://postgres@127.0.0.1:5432/test); the bench works in a schema it drops at exit.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import itertools
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import psycopg
from _bench import parse
from google.protobuf.timestamp_pb2 import Timestamp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # for the test helpers' URL handling

from chorus.server.model import config  # noqa: E402
from chorus.server.model.roles import Role  # noqa: E402
from chorus.server.root import Chorus  # noqa: E402
from chorus.server.store import Tx, batches, usage  # noqa: E402
from chorus.server.store.postgres import PostgresDatabase, _PostgresTx, placeholders  # noqa: E402
from chorus.v1 import ingest_pb2, ingest_pb2_grpc  # noqa: E402
from tests.store.postgres_schema import scratch_schema, url_with  # noqa: E402

READY = re.compile(r"chorus serving on (127\.0\.0\.1:\d+)")
POLICY = config.load(None).policy
METRICS = [m.name for m in POLICY.metrics][:2]  # ai.tokens, ai.requests
BOUNDS = {m.name: m.max_per_user for m in POLICY.metrics}
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process so far (0 if it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except FileNotFoundError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICKS


def backend_pids(url: str, application_name: str) -> list[int]:
    with psycopg.connect(url, autocommit=True, application_name="bench-observer") as conn:
        return [pid for pid, in conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = %s", (application_name,))]


@dataclass
class Cpu:
    """CPU seconds of some processes over a measured interval."""

    pids: Callable[[], list[int]]

    def __enter__(self) -> Cpu:
        self._start = {pid: cpu_seconds(pid) for pid in self.pids()}
        self.seconds = 0.0
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = sum(cpu_seconds(pid) - self._start.get(pid, 0.0) for pid in self.pids())


class WaitSampler:
    """Samples what the named sessions are doing every 10 ms: 'CPU' when running, else
    their wait event (e.g. IO:WALSync is the commit's fsync, Lock:transactionid a row lock)."""

    def __init__(self, url: str, names: list[str]) -> None:
        self._url = url
        self._names = names
        self.counts: Counter[str] = Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run)

    def __enter__(self) -> WaitSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        with psycopg.connect(self._url, autocommit=True, application_name="bench-observer") as conn:
            while not self._stop.wait(0.01):
                for state, kind, event in conn.execute(
                        "SELECT state, wait_event_type, wait_event FROM pg_stat_activity "
                        "WHERE application_name = ANY(%s)", (self._names,)):
                    if state == "active":
                        self.counts["CPU" if kind is None else f"{kind}:{event}"] += 1
                    elif state == "idle in transaction":
                        self.counts["waiting for the replica (idle in transaction)"] += 1

    def top(self, n: int = 4) -> str:
        total = sum(self.counts.values()) or 1
        return ", ".join(f"{what} {count / total:.0%}" for what, count in self.counts.most_common(n))


def make_batches(users: list[str], batches: int, size: int, seed: int) -> list[list[tuple[str, str, int]]]:
    """`batches` lists of (user, metric, value) with distinct (user, metric) keys, as the SDK's
    per-minute pre-aggregation produces. Consecutive batches (the ones in flight together)
    take consecutive slices of the roster, so they touch different people as reports from
    different tool instances do; each person recurs every len(users) / (size / 2) batches."""
    rng = random.Random(seed)
    per_batch = size // len(METRICS)
    slices = len(users) // per_batch
    return [[(u, m, rng.randint(1, 50)) for u in users[(b % slices) * per_batch:(b % slices + 1) * per_batch]
             for m in METRICS] for b in range(batches)]


# --- anchors: the bare PostgreSQL side of ingest -------------------------------------------------

def bare_rows(window: str, batch: list[tuple[str, str, int]], key: bytes) -> list:
    """The batch as the server writes it: one usage row per person, a total per metric slot."""
    slot = {m: i for i, m in enumerate(METRICS)}
    people: dict[str, list[int]] = {}
    for u, m, v in batch:
        people.setdefault(u, [0] * len(METRICS))[slot[m]] += v
    return sorted((window, hmac.new(key, u.encode(), hashlib.sha256).digest(), "team", *totals)
                  for u, totals in people.items())


def anchor_sql(tx: Tx, rows: list) -> None:
    """The ingest transaction's writes, through the store's operations."""
    batches.claim(tx, uuid.uuid4().hex, int(time.time()), b"")
    usage.add(tx, BOUND_TUPLE, rows)


BOUND_TUPLE = tuple(BOUNDS[m] for m in METRICS)


class RowByRowTx(_PostgresTx):
    """The engine's Tx with the bulk path switched off: psycopg's pipelined executemany only."""

    def add_usage(self, bounds: tuple[int, ...], rows: Sequence[Any]) -> None:
        self._cur.executemany(placeholders(usage.upsert_sql(bounds)), rows)


def concurrently(workers: int, jobs: list, work: Callable[[object], None]) -> float:
    """Run work(job) for every job on `workers` threads; return the wall time."""
    queue = iter(jobs)
    lock = threading.Lock()

    def loop() -> None:
        while True:
            with lock:
                job = next(queue, None)
            if job is None:
                return
            work(job)

    threads = [threading.Thread(target=loop) for _ in range(workers)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - started


def run_anchors(url: str, batches: list[list[tuple[str, str, int]]], workers: int) -> dict[str, float]:
    """Contributions/s of the ingest SQL alone, row by row and through the engine's bulk path,
    with `workers` concurrent transactions; PostgreSQL and Python CPU per contribution."""
    key = os.urandom(32)
    total = sum(len(b) for b in batches)
    out: dict[str, float] = {}
    for variant, tx_class in (("row_by_row", RowByRowTx), ("bulk", _PostgresTx)):
        name = f"bench-anchor-{variant}"
        db = PostgresDatabase(url_with(url, application_name=name), min_size=workers, max_size=workers)
        prepared = [bare_rows(f"bare-{variant}", b, key) for b in batches]
        with Cpu(lambda n=name: backend_pids(url, n)) as db_cpu, Cpu(lambda: [os.getpid()]) as py_cpu:
            elapsed = concurrently(workers, prepared, lambda job, db=db, tx_class=tx_class: db.run(
                lambda tx: anchor_sql(tx_class(tx._cur), job), name="anchor"))
        db.close()
        out[variant] = total / elapsed
        out[f"{variant}_db_us"] = db_cpu.seconds / total * 1e6
        out[f"{variant}_py_us"] = py_cpu.seconds / total * 1e6
    return out


# --- replicas ----------------------------------------------------------------------------------

class Replica:
    def __init__(self, name: str, url: str, data_dir: Path) -> None:
        self.name = name
        self.url = url_with(url, application_name=name)
        self.log = data_dir.parent / f"{name}.log"
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "chorus.server.cli", "serve", "--data-dir", str(data_dir),
                 "--listen", "127.0.0.1:0", "--database", self.url, "--log-level", "WARNING"],
                stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "COLUMNS": "400"})
        deadline = time.monotonic() + 60
        while not (m := READY.search(self.log.read_text(errors="replace"))):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not start:\n{self.log.read_text(errors='replace')}")
            time.sleep(0.05)
        self.address = m[1]

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(30)


def requests_for(batches: list[list[tuple[str, str, int]]]) -> list[ingest_pb2.ReportRequest]:
    when = Timestamp()
    when.FromDatetime(datetime.now(UTC).replace(second=0, microsecond=0))
    return [ingest_pb2.ReportRequest(batch_id=uuid.uuid4().hex, source="bench", contributions=[
        ingest_pb2.Contribution(user=u, metric=m, value=v, event_time=when) for u, m, v in batch])
        for batch in batches]


def run_replicas(replicas: list[Replica], token: str, requests: list[ingest_pb2.ReportRequest],
                 senders: int) -> dict[str, float]:
    """Send every request (round-robin over replicas, `senders` at a time); rate and CPU split."""
    channels = [grpc.insecure_channel(r.address) for r in replicas]
    stubs = [ingest_pb2_grpc.IngestServiceStub(c) for c in channels]
    metadata = (("authorization", f"Bearer {token}"),)
    jobs = iter(enumerate(requests))
    lock = threading.Lock()
    accepted = [0] * senders

    def send(worker: int) -> None:
        while True:
            with lock:
                job = next(jobs, None)
            if job is None:
                return
            i, request = job
            reply = stubs[i % len(stubs)].Report(request, metadata=metadata, timeout=120)
            accepted[worker] += reply.accepted

    total = sum(len(r.contributions) for r in requests)
    threads = [threading.Thread(target=send, args=(w,)) for w in range(senders)]
    with Cpu(lambda: [r.proc.pid for r in replicas]) as server_cpu, \
            Cpu(lambda: [p for r in replicas for p in backend_pids(r.url, r.name)]) as db_cpu, \
            Cpu(lambda: [os.getpid()]) as load_cpu, \
            WaitSampler(replicas[0].url, [r.name for r in replicas]) as waits:
        started = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - started
    for c in channels:
        c.close()
    if sum(accepted) != total:
        raise RuntimeError(f"accepted {sum(accepted)} of {total} contributions")
    return {"rate": total / elapsed, "elapsed": elapsed, "server_cpu": server_cpu.seconds,
            "db_cpu": db_cpu.seconds, "load_cpu": load_cpu.seconds, "waits": waits.top()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, default=200, help="batches per measurement")
    parser.add_argument("--batch-size", type=int, default=500, help="contributions per batch")
    parser.add_argument("--users", type=int, default=3000, help="people on the roster per measurement")
    parser.add_argument("--senders", type=int, default=8, help="concurrent gRPC senders")
    args = parse(parser, smoke={"batches": 6, "batch_size": 200, "users": 200, "senders": 2})

    with scratch_schema("chorus_bench_") as url, tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp) / "data"
        runs = ("1 replica", "2 replicas")
        users = {run: [f"bench-{i}-{n:06d}" for n in range(args.users)] for i, run in enumerate(runs)}
        chorus = Chorus(config.load(None), data_dir, database=url)
        chorus.import_roster([(u, f"team-{n % 20}") for run in runs for n, u in enumerate(users[run])],
                             actor="bench")
        token, _ = chorus.tokens.create(Role.INGEST, "bench", chorus.clock.now(), actor="bench")
        chorus.close()
        total = args.batches * (args.batch_size // len(METRICS)) * len(METRICS)
        print(f"{args.batches} batches x {args.batch_size} contributions = {total} per measurement; "
              f"{args.users} people per measurement; PostgreSQL synchronous_commit=on (durable)")

        anchors = run_anchors(url, make_batches(users[runs[0]], args.batches, args.batch_size, seed=0),
                              args.senders)
        print(f"anchors: the ingest SQL alone, {args.senders} concurrent transactions (as many as senders)")
        labels = {"row_by_row": "pipelined executemany", "bulk": "engine bulk path (COPY)"}
        for variant, label in labels.items():
            db_us, py_us = anchors[variant + "_db_us"], anchors[variant + "_py_us"]
            print(f"anchor  {label:<28} {anchors[variant]:>9,.0f} contributions/s; CPU per contribution: "
                  f"PostgreSQL {db_us:.1f} us, Python {py_us:.1f} us")
        anchor = anchors["bulk"]

        replicas: list[Replica] = []
        try:
            for count, run in zip(itertools.count(1), runs, strict=False):
                while len(replicas) < count:
                    replicas.append(Replica(f"bench-replica-{len(replicas)}", url, data_dir))
                requests = requests_for(make_batches(users[run], args.batches, args.batch_size, seed=count))
                r = run_replicas(replicas, token, requests, args.senders)
                per_core = r["server_cpu"] / r["elapsed"] / count
                print(f"{run:<10} {r['rate']:>9,.0f} contributions/s = "
                      f"{r['rate'] / anchor:.2f}x the bulk-path anchor; in {r['elapsed']:.1f} s wall: "
                      f"server CPU {r['server_cpu']:.1f} s ({per_core:.0%} of a core per replica), "
                      f"PostgreSQL backends {r['db_cpu']:.1f} s, load generator {r['load_cpu']:.1f} s "
                      "(2 cores shared by all)")
                print(f"{'':<10} the replicas' PostgreSQL sessions, sampled: {r['waits']}")
        finally:
            for replica in replicas:
                replica.stop()


if __name__ == "__main__":
    main()
