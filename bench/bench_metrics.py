"""Cost of the metrics on the ingest path, against an anchor measured in the same run.

    python bench/bench_metrics.py [--calls N] [--batch N]

1. Per RPC: a handler wrapped by the metrics interceptor (request id, timing, one histogram
   sample) against the same handler unwrapped; the difference is what every RPC pays.
2. The anchor: applying one ingest batch of `--batch` contributions in-process
   (`Ingestor.report` into SQLite, synchronous=FULL), which every Report RPC pays anyway.
   The ratio says what share of an ingest RPC the metrics take.
3. One scrape of a server's registry (counters, store gauges in one transaction): paid per
   Prometheus scrape, not per RPC.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
from _bench import parse
from prometheus_client import generate_latest

from chorus.server.domain import ingest
from chorus.server.model import config
from chorus.server.root import Chorus
from chorus.server.transport.grpc_server import Server


class _Context:
    def code(self) -> None:
        return None


def per_call(fn: Any, calls: int) -> float:
    started = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - started) / calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=1000)
    args = parse(parser, smoke={"calls": 2000})
    with tempfile.TemporaryDirectory() as tmp:
        chorus = Chorus(config.load(None), Path(tmp) / "data")
        server = Server(chorus, "127.0.0.1:0")
        users = [f"bench-user-{i}" for i in range(args.batch // 4)]
        chorus.import_roster([(u, "team") for u in users], actor="bench")
        try:
            bare = grpc.unary_unary_rpc_method_handler(lambda request, context: request)

            class Details:
                method = "/chorus.v1.IngestService/Report"
                invocation_metadata = ()

            wrapped = server.metrics.interceptor().intercept_service(lambda _: bare, Details())
            context = _Context()
            t_bare = per_call(lambda: bare.unary_unary(1, context), args.calls)
            t_wrapped = per_call(lambda: wrapped.unary_unary(1, context), args.calls)

            now = datetime.now(UTC)
            metrics = [m.name for m in chorus.config.policy.metrics]
            contributions = [ingest.Contribution(u, m, 1, now) for u in users for m in metrics][:args.batch]
            batches = 50
            started = time.perf_counter()
            for _ in range(batches):
                chorus.ingestor.report(ingest.Batch(uuid.uuid4().hex, "bench", "1", 0, contributions))
            t_batch = (time.perf_counter() - started) / batches

            scrapes = 200
            started = time.perf_counter()
            for _ in range(scrapes):
                generate_latest(server.metrics.registry)
            t_scrape = (time.perf_counter() - started) / scrapes
        finally:
            server.stop(grace=0)
    overhead = t_wrapped - t_bare
    print(f"metrics interceptor per RPC      : {overhead * 1e6:8.2f} us "
          f"(wrapped {t_wrapped * 1e6:.2f} us, bare {t_bare * 1e6:.2f} us)")
    print(f"anchor: one {args.batch}-contribution batch: {t_batch * 1e3:8.2f} ms (Ingestor.report, SQLite FULL)")
    print(f"ratio interceptor / batch        : {overhead / t_batch:8.5f}")
    print(f"one scrape of the registry       : {t_scrape * 1e3:8.2f} ms")


if __name__ == "__main__":
    main()
