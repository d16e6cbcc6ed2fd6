"""Per-token ingest rate limit: token buckets in contributions, RESOURCE_EXHAUSTED with
RetryInfo, no state change when refused, and the real SDK waiting as told."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import timedelta

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from chorus.client import Client
from chorus.server.model.clock import FakeClock
from chorus.server.model.roles import Role
from chorus.server.transport.ratelimit import RateLimited, RateLimiter
from chorus.v1 import admin_pb2, admin_pb2_grpc, ingest_pb2, ingest_pb2_grpc
from tests._secrets import register

from .._status import error_info
from .conftest import NOON, ROSTER, SecureServer, bearer

RATE = dict(ingest_rate_per_token=10.0, ingest_burst_per_token=20)


def test_bucket_refills_at_the_rate() -> None:
    clock = FakeClock(NOON)
    limiter = RateLimiter(rate=10.0, burst=20, clock=clock)
    limiter.take("a", 20)
    with pytest.raises(RateLimited) as refused:
        limiter.take("a", 5)
    assert refused.value.retry_after == pytest.approx(0.5)
    limiter.take("b", 20)  # buckets are per token name
    clock.advance(timedelta(seconds=0.5))
    limiter.take("a", 5)
    with pytest.raises(RateLimited):
        limiter.take("a", 1)


def test_a_refused_request_takes_nothing() -> None:
    clock = FakeClock(NOON)
    limiter = RateLimiter(rate=1.0, burst=10, clock=clock)
    limiter.take("a", 8)
    with pytest.raises(RateLimited):
        limiter.take("a", 5)
    limiter.take("a", 2)  # the refused 5 were not taken


def test_batch_larger_than_the_burst_waits_for_a_full_bucket_then_runs_into_debt() -> None:
    clock = FakeClock(NOON)
    limiter = RateLimiter(rate=10.0, burst=20, clock=clock)
    limiter.take("a", 50)  # full bucket: admitted, 30 in debt
    with pytest.raises(RateLimited) as refused:
        limiter.take("a", 1)
    assert refused.value.retry_after == pytest.approx(3.1)  # repay 30, then 1
    clock.advance(timedelta(seconds=3.1))
    limiter.take("a", 1)


def test_clock_stepping_back_does_not_drain_or_fill() -> None:
    clock = FakeClock(NOON)
    limiter = RateLimiter(rate=10.0, burst=20, clock=clock)
    limiter.take("a", 20)
    clock.set(NOON - timedelta(hours=1))
    with pytest.raises(RateLimited):
        limiter.take("a", 1)
    clock.set(NOON + timedelta(seconds=0.1))
    limiter.take("a", 1)


@pytest.mark.parametrize(("rate", "burst"), [(0.0, 10), (-1.0, 10), (1.0, 0)])
def test_nonsense_limits_are_refused(rate: float, burst: int) -> None:
    with pytest.raises(ValueError):
        RateLimiter(rate, burst, FakeClock(NOON))


def batch(batch_id: str, n: int) -> ingest_pb2.ReportRequest:
    request = ingest_pb2.ReportRequest(batch_id=batch_id, source="tool")
    for i in range(n):
        c = request.contributions.add(user=ROSTER[i % len(ROSTER)][0], metric="ai.requests", value=1)
        c.event_time.FromDatetime(NOON)
    return request


@pytest.mark.slow
def test_over_the_limit_is_resource_exhausted_with_retry_info(
        make_server: Callable[..., SecureServer]) -> None:
    server = make_server(limits=RATE)
    assert server.channel is not None
    stub = ingest_pb2_grpc.IngestServiceStub(server.channel)
    ingest = server.metadata(Role.INGEST)
    assert stub.Report(batch("first", 20), metadata=ingest, timeout=10).accepted == 20

    before = server.digest()
    with pytest.raises(grpc.RpcError) as err:
        stub.Report(batch("second", 5), metadata=ingest, timeout=10)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "10 contributions per second" in (err.value.details() or "")
    assert server.tokens[Role.INGEST] not in (err.value.details() or "")
    status = rpc_status.from_call(err.value)
    assert status is not None
    retry = error_details_pb2.RetryInfo()
    assert status.details[1].Unpack(retry)  # after the ErrorInfo
    assert error_info(err.value).reason == "RATE_LIMITED"
    assert retry.retry_delay.ToTimedelta() == timedelta(seconds=0.5)
    assert dict(error_info(err.value).metadata) == {"retry_after_seconds": "0.500"}  # docs/api.md
    assert server.digest() == before  # refused before anything was applied

    # Another ingest token has its own bucket.
    other = admin_pb2_grpc.AdminServiceStub(server.channel).CreateToken(
        admin_pb2.CreateTokenRequest(role=admin_pb2.ROLE_INGEST, name="second-tool"),
        metadata=server.metadata(Role.ADMIN), timeout=10).token
    register(other)
    assert stub.Report(batch("other", 5), metadata=bearer(other), timeout=10).accepted == 5

    server.clock.advance(timedelta(seconds=0.5))
    assert stub.Report(batch("second", 5), metadata=ingest, timeout=10).accepted == 5


class _NoonClock:
    def time(self) -> float:
        return NOON.timestamp()


@pytest.mark.slow
def test_sdk_honours_retry_info(make_server: Callable[..., SecureServer]) -> None:
    """The real SDK waits the server's RetryInfo delay instead of its own (shorter) backoff."""
    server = make_server(limits=dict(ingest_rate_per_token=1.0, ingest_burst_per_token=10))
    client = Client(server.address, server.tokens[Role.INGEST], source="sec-test", flush_interval=3600,
                    clock=_NoonClock())
    try:
        for user, _ in ROSTER[:10]:
            client.count("ai.requests", 1, user=user)
        assert client.flush(timeout=10)
        assert client.stats().accepted == 10

        for user, _ in ROSTER[:5]:
            client.count("ai.tokens", 1, user=user)
        started = time.monotonic()
        # The server asks for 5 s; the SDK's own first backoff is at most 1 s. Honouring the
        # server, it gives up this 4 s flush after one attempt (retries == 1 below) instead of
        # retrying within it, and at once: the bound is generous for a loaded machine.
        assert not client.flush(timeout=4)
        assert time.monotonic() - started < 3.5
        stats = client.stats()
        assert stats.retries == 1 and stats.accepted == 10 and stats.pending == 5

        server.clock.advance(timedelta(seconds=5))
        assert client.flush(timeout=10)
        assert client.stats().accepted == 15
    finally:
        client.close(timeout=1)
