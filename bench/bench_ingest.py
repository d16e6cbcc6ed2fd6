"""Durable ingest throughput: SDK -> gRPC -> Chorus -> SQLite with 1 and N workers
(`chorus serve --workers N`), against two anchors measured in the same run: a no-op gRPC
server fed the same batches, and the bare SQLite upsert.

    python bench/bench_ingest.py [--keys 10000 1000000] [--rounds N] [--workers 1 auto]

Each key is a distinct (user, metric); one round sends one contribution per key. The
server runs as a child process (its own GIL), with SQLite synchronous=FULL (durable). Each
SDK client runs in its own process, so that the senders are not one GIL either.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import multiprocessing
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc

from chorus.client import Client
from chorus.server.model import config
from chorus.server.store import usage
from chorus.server.store._schema import migrate
from chorus.server.store.sqlite import SqliteDatabase
from chorus.v1 import admin_pb2, admin_pb2_grpc

ROOT = Path(__file__).resolve().parent.parent
METRICS = [m.name for m in config.load(None).policy.metrics]
READY = re.compile(r"serving on (127\.0\.0\.1:\d+)")


def users_for(keys: int) -> list[str]:
    return [f"bench-user-{i:07d}" for i in range(keys // len(METRICS))]


def start(args: list[str]) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "COLUMNS": "200"})
    assert proc.stdout is not None
    for line in proc.stdout:
        if m := READY.search(line):
            return proc, m[1]
    raise RuntimeError(f"server did not start: {args}")


def _feed(address: str, token: str, shard: list[str], rounds: int, index: int,
          go: multiprocessing.synchronize.Event, results: multiprocessing.Queue) -> None:
    """One SDK client in its own process: count one unit per key per round, flush each round."""
    client = Client(address, token, source=f"bench-{index}", flush_interval=3600,
                    max_pending=len(shard) * len(METRICS) * 2, timeout=120)
    errors = []
    go.wait()
    for _ in range(rounds):
        for user in shard:
            for metric in METRICS:
                client.count(metric, 1, user=user)
        if not client.flush(timeout=600):
            errors.append("flush timed out")
    client.close()
    stats = client.stats()
    if stats.dropped or stats.rejected or stats.failed_batches:
        errors.append(f"lost contributions: {stats}")
    results.put((stats.accepted, errors))


def send_rounds(address: str, token: str, users: list[str], rounds: int, clients: int) -> tuple[int, float]:
    """Count one unit per key per round through `clients` SDK clients (one process each, like
    several tools reporting at once) and wait for every acknowledgement."""
    spawn = multiprocessing.get_context("spawn")  # fresh interpreters: gRPC does not survive fork
    go, results = spawn.Event(), spawn.Queue()
    procs = [spawn.Process(target=_feed, args=(address, token, users[i::clients], rounds, i, go, results))
             for i in range(clients)]
    for proc in procs:
        proc.start()
    time.sleep(2.0)  # let every client import and connect before the clock starts
    started = time.perf_counter()
    go.set()
    outcomes = [results.get(timeout=1800) for _ in procs]
    elapsed = time.perf_counter() - started
    for proc in procs:
        proc.join(30)
    errors = [e for _, errs in outcomes for e in errs]
    if errors:
        raise RuntimeError(f"lost contributions: {errors}")
    return sum(accepted for accepted, _ in outcomes), elapsed


def bare_store_rate(users: list[str], rounds: int, batch: int = 5000) -> tuple[float, float]:
    """The same upserts straight into SQLite, no gRPC, no validation: the store's ceiling, in
    contributions/s and CPU seconds per contribution."""
    with tempfile.TemporaryDirectory() as tmp:
        db = SqliteDatabase(Path(tmp) / "bare.db", synchronous="FULL")
        migrate(db)
        # One row per person as the server writes them; pseudonyms are HMAC output, i.e. random
        # order in the B-tree. A batch of `batch` contributions is batch / len(METRICS) rows.
        bounds = (10**9,) * len(METRICS)
        rows = sorted(("2026-01-01", hmac.digest(b"k" * 32, user.encode(), hashlib.sha256), "team",
                       *[1] * len(METRICS)) for user in users)
        per_batch = batch // len(METRICS)
        started, cpu = time.perf_counter(), time.process_time()
        for _ in range(rounds):
            for i in range(0, len(rows), per_batch):
                chunk = sorted(rows[i:i + per_batch])
                db.run(lambda tx, c=chunk: usage.add(tx, bounds, c), name="bench")
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
        db.close()
    contributions = len(rows) * len(METRICS) * rounds
    return contributions / elapsed, cpu / contributions


def server_cpu_seconds(pid: int) -> float:
    """User + system CPU of a server process and its live workers (Linux /proc)."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    total = 0
    for p in (pid, *map(int, children)):
        fields = Path(f"/proc/{p}/stat").read_text().rpartition(")")[2].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / os.sysconf("SC_CLK_TCK")


def chorus_rate(users: list[str], rounds: int, clients: int, workers: str) -> tuple[float, float]:
    """Contributions/s, and server CPU seconds per contribution."""
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
                stub.ImportRoster(iter(chunks), metadata=admin, timeout=300)
                token = stub.CreateToken(admin_pb2.CreateTokenRequest(role=admin_pb2.ROLE_INGEST, name="bench"),
                                         metadata=admin).token
            cpu = server_cpu_seconds(proc.pid)
            accepted, elapsed = send_rounds(address, token, users, rounds, clients)
            return accepted / elapsed, (server_cpu_seconds(proc.pid) - cpu) / accepted
        finally:
            proc.terminate()
            proc.wait(30)


def noop_rate(users: list[str], rounds: int, clients: int) -> float:
    proc, address = start([sys.executable, str(ROOT / "bench" / "_noop_server.py")])
    try:
        accepted, elapsed = send_rounds(address, "unused", users, rounds, clients)
        return accepted / elapsed
    finally:
        proc.terminate()
        proc.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keys", type=int, nargs="+", default=[10_000, 1_000_000])
    parser.add_argument("--rounds", type=int, default=0, help="default: 50 for 10k keys, 2 for 1M")
    parser.add_argument("--clients", type=int, default=4, help="concurrent SDK clients (one process each)")
    parser.add_argument("--workers", nargs="+", default=["1", "auto"],
                        help="`chorus serve --workers` values to measure (default: 1 and auto)")
    args = parser.parse_args()
    for keys in args.keys:
        users = users_for(keys)
        rounds = args.rounds or max(2, 500_000 // keys)
        total = len(users) * len(METRICS) * rounds
        print(f"\n{len(users) * len(METRICS):,} distinct (user, metric) keys, {rounds} rounds, "
              f"{total:,} contributions per measurement, {args.clients} SDK clients")
        bare, bare_cpu = bare_store_rate(users, rounds)
        noop = noop_rate(users, rounds, args.clients)
        print(f"  bare SQLite upsert (synchronous=FULL)    : {bare:12,.0f} contributions/s, "
              f"CPU {bare_cpu * 1e6:.2f} us per contribution")
        print(f"  SDK -> gRPC -> no-op server              : {noop:12,.0f} contributions/s")
        for workers in args.workers:
            full, cpu = chorus_rate(users, rounds, args.clients, workers)
            label = f"{workers} worker{'' if workers == '1' else 's'}"
            if workers == "auto":
                label += f" = {len(os.sched_getaffinity(0))}"
            print(f"  SDK -> gRPC -> Chorus ({label:>10}) -> SQLite: {full:12,.0f} contributions/s (durable), "
                  f"{full / bare:.2f} of the bare store, {full / noop:.2f} of no-op gRPC; server CPU "
                  f"{cpu * 1e6:.1f} us per contribution ({bare_cpu / cpu:.2f} of the bare store's CPU rate)")


if __name__ == "__main__":
    main()
