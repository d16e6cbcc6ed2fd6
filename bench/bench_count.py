"""Cost of Client.count(), next to OpenTelemetry's Counter.add and a bare locked dict update.

    python bench/bench_count.py [--number N] [--repeat R]

Each figure is the best of R repeats of N calls, in nanoseconds per call: the best run is
the one least disturbed by the rest of the machine. count() is measured in its steady
state (the key already seen this minute), which is what a tool pays per event; the first
count of a key each minute takes a slower path once. The target is count() <= 1/10 of
Counter.add with one attribute.
"""

from __future__ import annotations

import argparse
import platform
import sys
import threading
import timeit
from typing import Any

from _bench import parse

from chorus.client import Client
from chorus.v1 import ingest_pb2


class _NullTransport:
    """Accepts everything; the benchmark never reaches it (the flush interval is an hour)."""

    def send(self, request: ingest_pb2.ReportRequest, timeout: float) -> ingest_pb2.ReportResponse:
        return ingest_pb2.ReportResponse(accepted=len(request.contributions))

    def close(self) -> None:
        pass


def best_ns(stmt: str, namespace: dict[str, Any], number: int, repeat: int) -> float:
    """Best per-call time of `stmt` in nanoseconds."""
    timer = timeit.Timer(stmt, globals=namespace)
    return min(timer.repeat(repeat=repeat, number=number)) / number * 1e9


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--number", type=int, default=1_000_000, help="calls per repeat")
    parser.add_argument("--repeat", type=int, default=7, help="repeats; the best one counts")
    args = parse(parser, smoke={"number": 20_000, "repeat": 1})

    client = Client(transport=_NullTransport(), user="alice", flush_interval=3600.0)
    client.count("ai.tokens")  # steady state: the key exists and the flush thread runs
    lock = threading.Lock()
    counts: dict[tuple[str, str, int], int] = {}
    key = ("alice", "ai.tokens", 0)
    results = {
        "anchor: with lock: d[k] = d.get(k, 0) + v": best_ns(
            "with lock:\n    counts[key] = counts.get(key, 0) + 1",
            {"lock": lock, "counts": counts, "key": key}, args.number, args.repeat,
        ),
        'Client.count("ai.tokens")': best_ns(
            'count("ai.tokens")', {"count": client.count}, args.number, args.repeat,
        ),
        'Client.count("ai.tokens", 1, user="alice")': best_ns(
            'count("ai.tokens", 1, user="alice")', {"count": client.count}, args.number, args.repeat,
        ),
    }
    client.close()
    # A key new this minute: one distinct user per call (names built before the clock starts),
    # in a fresh client per repeat so that every key is new and none is dropped.
    keys = max(1, args.number // 10)
    users = [f"user-{i:07d}" for i in range(keys)]
    new_key = []
    for _ in range(args.repeat):
        fresh = Client(transport=_NullTransport(), flush_interval=3600.0, max_pending=keys + 1)
        fresh.count("ai.tokens", 1, user="warm-up")  # the flush thread started
        new_key.append(timeit.Timer("for u in users: count('ai.tokens', 1, user=u)",
                                    globals={"users": users, "count": fresh.count}).timeit(1) / keys * 1e9)
        assert fresh.stats().dropped == 0
        fresh.close()
    results['Client.count("ai.tokens", 1, user=<new key>)'] = min(new_key)

    try:
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    except ImportError:
        otel_ns = None
    else:
        provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
        counter = provider.get_meter("bench").create_counter("ai.tokens")
        # A fresh attributes dict per call, as instrumented code usually writes it.
        otel_ns = best_ns(
            'add(1, {"user": "alice"})', {"add": counter.add}, max(1, args.number // 10), args.repeat,
        )
        results['OpenTelemetry SDK Counter.add(1, {"user": "alice"})'] = otel_ns
        provider.shutdown()

    print(f"Python {platform.python_version()} on {platform.machine()}, "
          f"best of {args.repeat} x {args.number:,} calls")
    width = max(len(name) for name in results)
    for name, ns in results.items():
        print(f"  {name:<{width}}  {ns:8.1f} ns/call")
    count_ns = results['Client.count("ai.tokens", 1, user="alice")']
    print(f"  count() / anchor: {count_ns / results['anchor: with lock: d[k] = d.get(k, 0) + v']:.2f}x")
    if otel_ns is None:
        print("  opentelemetry-sdk is not installed: no comparison")
        return 0
    ratio = count_ns / otel_ns
    verdict = "meets" if ratio <= 0.1 else "MISSES"
    print(f"  count() / Counter.add: {ratio:.3f} (1/{1 / ratio:.1f}); {verdict} the 1/10 target")
    return 0


if __name__ == "__main__":
    sys.exit(main())
