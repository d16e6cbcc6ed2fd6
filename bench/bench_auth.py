"""Cost of the security gate, against anchors measured in the same run.

    python bench/bench_auth.py [--calls N]

1. Token lookup: `Tokens.authenticate` with the cache (the ingest path) against the same
   lookup with the cache off (one store transaction each): the ratio is the cache's gain.
2. Per RPC: an authenticated call (AuditService.GetPublicKey, no store access) through the
   real server against the open health check on the same channel: the ratio is what the
   gate (deadline, token, role, parse) adds to a round trip.
3. The ingest rate limiter: `RateLimiter.take` per call.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from chorus.server import config
from chorus.server.app import Server
from chorus.server.app_context import Chorus
from chorus.server.auth import Role, Tokens
from chorus.server.ratelimit import RateLimiter
from chorus.v1 import audit_pb2, audit_pb2_grpc


def rate(fn: Callable[[], object], calls: int) -> float:
    """Calls per second of fn, after a short warm-up."""
    for _ in range(min(100, calls)):
        fn()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return calls / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=3000)
    calls = parser.parse_args().calls
    with tempfile.TemporaryDirectory() as tmp:
        chorus = Chorus(config.load(None), Path(tmp))
        secret, _ = chorus.tokens.create(Role.AUDITOR, "bench", chorus.clock.now(), "bench")
        uncached = Tokens(chorus.db, chorus.ledger, cache_seconds=0)
        cached_rate = rate(lambda: chorus.tokens.authenticate(secret), calls * 10)
        store_rate = rate(lambda: uncached.authenticate(secret), calls)
        print(f"authenticate, cached:        {cached_rate:12,.0f} /s")
        print(f"authenticate, store (anchor): {store_rate:11,.0f} /s   "
              f"ratio {cached_rate / store_rate:,.1f}x")

        server = Server(chorus, "127.0.0.1:0")
        server.start()
        try:
            with grpc.insecure_channel(server.address) as channel:
                metadata = (("authorization", f"Bearer {secret}"),)
                audit = audit_pb2_grpc.AuditServiceStub(channel)
                health = health_pb2_grpc.HealthStub(channel)
                gated = rate(lambda: audit.GetPublicKey(audit_pb2.GetPublicKeyRequest(), metadata=metadata,
                                                        timeout=10), calls)
                open_ = rate(lambda: health.Check(health_pb2.HealthCheckRequest(), timeout=10), calls)
        finally:
            server.stop(grace=1)
        print(f"RPC through the gate:        {gated:12,.0f} /s   ({1e6 / gated:,.0f} us per call)")
        print(f"open health check (anchor):  {open_:12,.0f} /s   ({1e6 / open_:,.0f} us per call)   "
              f"ratio {gated / open_:.2f}")

    limiter = RateLimiter(1e12, 10**12, chorus.clock)
    take_rate = rate(lambda: limiter.take("bench", 100), calls * 30)
    print(f"RateLimiter.take:            {take_rate:12,.0f} /s")


if __name__ == "__main__":
    main()
