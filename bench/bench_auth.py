"""Cost of the security gate, against anchors measured in the same run.

    python bench/bench_auth.py [--calls N]

1. Token lookup: `Tokens.authenticate`, one read transaction per call (no cache: a revocation
   holds at once everywhere), against the same lookup in a write transaction (the anchor: the
   path before reads took no writer lock): the ratio is what read transactions gain.
2. Per RPC: an authenticated call (AuditService.GetPublicKey, no store access) through the
   real server against the open health check on the same channel: the ratio is what the
   gate (deadline, token, role, parse) adds to a round trip.
3. The ingest rate limiter: `RateLimiter.take` per call.
4. A refused oversize Report (1,000,000 empty contributions, 2 MB: over the 10,000 limit)
   against an accepted 1,000-contribution batch (the anchor), in server process CPU per
   request: a refusal must cost no more than a small accepted batch.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import grpc
from _bench import parse
from grpc_health.v1 import health_pb2, health_pb2_grpc

from chorus.server import store
from chorus.server.domain.tokens import hash_token
from chorus.server.model import config
from chorus.server.model.roles import Role
from chorus.server.root import Chorus
from chorus.server.transport.grpc_server import Server
from chorus.server.transport.ratelimit import RateLimiter
from chorus.v1 import audit_pb2, audit_pb2_grpc, ingest_pb2


def rate(fn: Callable[[], object], calls: int) -> float:
    """Calls per second of fn, after a short warm-up."""
    for _ in range(min(100, calls)):
        fn()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return calls / (time.perf_counter() - start)


def cpu_per_call(fn: Callable[[], object], calls: int) -> float:
    """Process CPU seconds (every thread: the server's handlers) per call of fn."""
    fn()
    start = time.process_time()
    for _ in range(calls):
        fn()
    return (time.process_time() - start) / calls


def report_bytes(batch_id: str, contributions: int, user: str = "") -> bytes:
    request = ingest_pb2.ReportRequest(batch_id=batch_id, source="bench")
    if user:
        for i in range(contributions):
            c = request.contributions.add(user=user, metric="ai.tokens", value=i % 7)
            c.event_time.GetCurrentTime()
    else:
        request.contributions.extend(ingest_pb2.Contribution() for _ in range(contributions))
    return request.SerializeToString()


def oversize_against_normal(chorus: Chorus, address: str, calls: int) -> None:
    """Section 4: raw bytes on the wire, so the client side costs next to nothing."""
    secret, _ = chorus.tokens.create(Role.INGEST, "bench-ingest", chorus.clock.now(), "bench")
    chorus.import_roster([("bench-user", "bench-team")], "bench")
    metadata = (("authorization", f"Bearer {secret}"),)
    huge = report_bytes("huge", 1_000_000)
    normal = iter([report_bytes(f"normal-{i}", 1000, "bench-user") for i in range(calls + 1)])
    with grpc.insecure_channel(address, options=[("grpc.max_send_message_length", 8 << 20)]) as channel:
        report = channel.unary_unary("/chorus.v1.IngestService/Report")

        def refused() -> None:
            try:
                report(huge, metadata=metadata, timeout=60)
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT, exc
            else:
                raise AssertionError("the oversize batch was accepted")

        refused_cpu = cpu_per_call(refused, calls)
        normal_cpu = cpu_per_call(lambda: report(next(normal), metadata=metadata, timeout=60), calls)
    print(f"refused 1M-contribution Report (2 MB): {refused_cpu * 1e3:8.2f} ms CPU per request")
    print(f"accepted 1,000-contribution batch (anchor): {normal_cpu * 1e3:5.2f} ms CPU per request   "
          f"ratio {refused_cpu / normal_cpu:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=3000)
    calls = parse(parser, smoke={"calls": 60}).calls
    with tempfile.TemporaryDirectory() as tmp:
        chorus = Chorus(config.load(None), Path(tmp))
        secret, _ = chorus.tokens.create(Role.AUDITOR, "bench", chorus.clock.now(), "bench")
        digest = hash_token(secret)
        read_rate = rate(lambda: chorus.tokens.authenticate(secret), calls)
        write_rate = rate(lambda: chorus.db.run(lambda tx: store.tokens.active_by_hash(tx, digest),
                                                name="bench"), calls)
        print(f"authenticate (a read transaction):       {read_rate:12,.0f} /s")
        print(f"the lookup in a write transaction (anchor): {write_rate:9,.0f} /s   "
              f"ratio {read_rate / write_rate:,.2f}x")

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
            oversize_against_normal(chorus, server.address, max(5, calls // 300))
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
