"""Durable ingest throughput: SDK -> gRPC -> Chorus -> SQLite, against two anchors measured
in the same run: a no-op gRPC server fed the same batches, and the bare SQLite upsert.

    python bench/bench_ingest.py [--keys 10000 1000000] [--rounds N]

Each key is a distinct (user, metric); one round sends one contribution per key. The
server runs as a child process (its own GIL), with SQLite synchronous=FULL (durable).
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import grpc

from chorus.client import Client
from chorus.server import config
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


def send_rounds(address: str, token: str, users: list[str], rounds: int, clients: int) -> tuple[int, float]:
    """Count one unit per key per round through `clients` SDK clients (one thread each, like
    several tools reporting at once) and wait for every acknowledgement."""
    shards = [users[i::clients] for i in range(clients)]
    sdks = [Client(address, token, source=f"bench-{i}", flush_interval=3600,
                   max_pending=len(shard) * len(METRICS) * 2, timeout=120) for i, shard in enumerate(shards)]
    errors: list[str] = []

    def feed(client: Client, shard: list[str]) -> None:
        for _ in range(rounds):
            for user in shard:
                for metric in METRICS:
                    client.count(metric, 1, user=user)
            if not client.flush(timeout=600):
                errors.append("flush timed out")

    threads = [threading.Thread(target=feed, args=(c, shard)) for c, shard in zip(sdks, shards, strict=True)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    for client in sdks:
        client.close()
    stats = [c.stats() for c in sdks]
    if errors or any(s.dropped or s.rejected or s.failed_batches for s in stats):
        raise RuntimeError(f"lost contributions: {errors} {stats}")
    return sum(s.accepted for s in stats), elapsed


def bare_store_rate(users: list[str], rounds: int, batch: int = 5000) -> float:
    """The same upserts straight into SQLite, no gRPC, no validation: the store's ceiling."""
    with tempfile.TemporaryDirectory() as tmp:
        db = SqliteDatabase(Path(tmp) / "bare.db", synchronous="FULL")
        migrate(db)
        # One row per person as the server writes them; pseudonyms are HMAC output, i.e. random
        # order in the B-tree. A batch of `batch` contributions is batch / len(METRICS) rows.
        bounds = (10**9,) * len(METRICS)
        rows = sorted(("2026-01-01", hmac.digest(b"k" * 32, user.encode(), hashlib.sha256), "team",
                       *[1] * len(METRICS)) for user in users)
        per_batch = batch // len(METRICS)
        started = time.perf_counter()
        for _ in range(rounds):
            for i in range(0, len(rows), per_batch):
                chunk = sorted(rows[i:i + per_batch])
                db.run(lambda tx, c=chunk: usage.add(tx, bounds, c), name="bench")
        elapsed = time.perf_counter() - started
        db.close()
    return len(rows) * len(METRICS) * rounds / elapsed


def chorus_rate(users: list[str], rounds: int, clients: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        proc, address = start([sys.executable, "-m", "chorus.server.cli", "serve", "--data-dir", str(data),
                               "--listen", "127.0.0.1:0", "--log-level", "WARNING"])
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
            accepted, elapsed = send_rounds(address, token, users, rounds, clients)
            return accepted / elapsed
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
    parser.add_argument("--clients", type=int, default=4, help="concurrent SDK clients")
    args = parser.parse_args()
    for keys in args.keys:
        users = users_for(keys)
        rounds = args.rounds or max(2, 500_000 // keys)
        total = len(users) * len(METRICS) * rounds
        print(f"\n{len(users) * len(METRICS):,} distinct (user, metric) keys, {rounds} rounds, "
              f"{total:,} contributions per measurement, {args.clients} SDK clients")
        bare = bare_store_rate(users, rounds)
        noop = noop_rate(users, rounds, args.clients)
        full = chorus_rate(users, rounds, args.clients)
        print(f"  bare SQLite upsert (synchronous=FULL) : {bare:12,.0f} contributions/s")
        print(f"  SDK -> gRPC -> no-op server           : {noop:12,.0f} contributions/s")
        print(f"  SDK -> gRPC -> Chorus -> SQLite       : {full:12,.0f} contributions/s (durable)")
        print(f"  ratio Chorus / no-op gRPC             : {full / noop:12.2f}")
        print(f"  ratio Chorus / bare store             : {full / bare:12.2f}")


if __name__ == "__main__":
    main()
