"""Retries, backoff, RetryInfo, non-retryable failures and rejections."""

from __future__ import annotations

import logging
import random
from collections.abc import Callable

import grpc
import pytest

from chorus.client import RETRYABLE_CODES, Client, TransportError
from chorus.client._delivery import BACKOFF_CAP, MAX_BATCH_AGE, MAX_SERVER_DELAY, ClientError, Delivery
from chorus.v1 import ingest_pb2

from .conftest import LONG_DELAY, T0, FakeTransport, unavailable

MakeClient = Callable[..., Client]


def _delivery(transport: FakeTransport, rng: random.Random) -> Delivery:
    return Delivery(
        transport, source="t", source_version="", max_pending=1000, timeout=10.0, spool=None, rng=rng
    )


class _MaxRandom(random.Random):
    """uniform() returns its upper bound: exposes the backoff ceiling."""

    def uniform(self, a: float, b: float) -> float:
        return b


def test_a_failed_batch_is_resent_with_the_same_id_and_contents(make_client: MakeClient) -> None:
    deadline_exceeded = TransportError(grpc.StatusCode.DEADLINE_EXCEEDED, retry_delay=LONG_DELAY)
    transport = FakeTransport(unavailable(), deadline_exceeded, None)
    client = make_client(transport=transport)
    client.count("ai.tokens", 5)
    assert not client.flush(timeout=5)
    client.count("ai.tokens", 7)  # arrives between retries: goes into a later batch
    assert not client.flush(timeout=5)
    assert client.flush(timeout=5)

    first, second, third, later = transport.requests
    assert first.batch_id == second.batch_id == third.batch_id != later.batch_id
    assert first.SerializeToString() == second.SerializeToString() == third.SerializeToString()
    assert [c.value for c in first.contributions] == [5]
    assert [c.value for c in later.contributions] == [7]
    stats = client.stats()
    assert (stats.retries, stats.sent_batches, stats.accepted, stats.pending) == (2, 2, 2, 0)


def test_backoff_ceiling_doubles_up_to_the_cap() -> None:
    transport = FakeTransport(default=unavailable(retry_delay=None))
    delivery = _delivery(transport, _MaxRandom())
    delivery.add({("user-alice", "ai.tokens", T0 // 60): 1}, 0)
    ceilings = [delivery.send() for _ in range(9)]
    assert ceilings == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, BACKOFF_CAP, BACKOFF_CAP, BACKOFF_CAP]


def test_backoff_is_jittered_within_its_ceiling() -> None:
    transport = FakeTransport(default=unavailable(retry_delay=None))
    delivery = _delivery(transport, random.Random(42))
    delivery.add({("user-alice", "ai.tokens", T0 // 60): 1}, 0)
    delays = [delivery.send() for _ in range(40)]
    ceilings = [min(BACKOFF_CAP, 2.0**i) for i in range(40)]
    assert all(d is not None and 0.0 <= d <= c for d, c in zip(delays, ceilings, strict=True))
    assert len(set(delays)) == len(delays)  # full jitter: no two waits alike
    assert sum(d for d in delays[10:] if d is not None) / 30 < BACKOFF_CAP * 0.8


def test_backoff_resets_after_a_success() -> None:
    down = unavailable(retry_delay=None)
    delivery = _delivery(FakeTransport(down, down, None, down), _MaxRandom())
    delivery.add({("user-alice", "ai.tokens", T0 // 60): 1}, 0)
    assert [delivery.send(), delivery.send(), delivery.send()] == [1.0, 2.0, None]
    delivery.add({("user-alice", "ai.tokens", T0 // 60 + 1): 1}, 0)
    assert delivery.send() == 1.0


def test_flush_retries_after_the_backoff_within_its_timeout(make_client: MakeClient) -> None:
    """Without RetryInfo, flush() waits a jittered backoff of at most 1 s, then retries."""
    transport = FakeTransport(unavailable(retry_delay=None), None)
    client = make_client(transport=transport)
    client.count("ai.tokens")
    assert client.flush(timeout=60)
    assert len(transport.requests) == 2 and client.stats().retries == 1


@pytest.mark.parametrize("code", [grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE])
def test_retry_info_delay_is_honoured(make_client: MakeClient, code: grpc.StatusCode) -> None:
    transport = FakeTransport(TransportError(code, "slow down", retry_delay=7.25), None)
    client = make_client(transport=transport)
    client.count("ai.tokens")
    # A backoff (at most 1 s on a first failure) would retry within 5 s; 7.25 s does not.
    assert not client.flush(timeout=5)
    assert len(transport.requests) == 1
    assert client.flush(timeout=5)
    assert transport.requests[0] == transport.requests[1]


def test_a_short_retry_info_delay_is_waited_out_within_the_timeout(make_client: MakeClient) -> None:
    transport = FakeTransport(TransportError(grpc.StatusCode.RESOURCE_EXHAUSTED, retry_delay=0.05), None)
    client = make_client(transport=transport)
    client.count("ai.tokens")
    assert client.flush(timeout=60)
    assert len(transport.requests) == 2


def test_an_absurd_retry_info_delay_is_capped() -> None:
    transport = FakeTransport(TransportError(grpc.StatusCode.RESOURCE_EXHAUSTED, retry_delay=86400.0))
    delivery = _delivery(transport, random.Random(0))
    delivery.add({("user-alice", "ai.tokens", T0 // 60): 1}, 0)
    assert delivery.send() == MAX_SERVER_DELAY


def test_the_retryable_codes_are_the_documented_ones() -> None:
    # docs/sdk.md: a batch is dropped only when the answer says the batch itself is bad.
    assert {code.name for code in grpc.StatusCode} - {code.name for code in RETRYABLE_CODES} == {
        "OK", "INVALID_ARGUMENT", "OUT_OF_RANGE", "ALREADY_EXISTS",
    }


@pytest.mark.parametrize("code", [grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.OUT_OF_RANGE])
def test_codes_that_refuse_the_batch_itself_drop_it_with_one_warning(
    make_client: MakeClient, caplog: pytest.LogCaptureFixture, code: grpc.StatusCode
) -> None:
    transport = FakeTransport(default=TransportError(code, "no"))
    client = make_client(transport=transport)
    with caplog.at_level(logging.DEBUG, logger="chorus.client"):
        client.count("ai.tokens", user="user-alice")
        assert not client.flush(timeout=5)
        client.count("ai.tokens", user="user-alice")
        assert not client.flush(timeout=5)
        assert client.flush(timeout=5)

    assert len(transport.requests) == 2  # each batch tried once, never again
    assert transport.requests[0].batch_id != transport.requests[1].batch_id
    stats = client.stats()
    assert (stats.failed_batches, stats.retries, stats.pending) == (2, 0, 0)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and code.name in warnings[0].getMessage()
    assert "user-alice" not in caplog.text


@pytest.mark.parametrize("code", sorted(RETRYABLE_CODES, key=lambda c: c.name))
def test_every_answer_the_server_may_change_keeps_the_batch(make_client: MakeClient, code: grpc.StatusCode) -> None:
    """A full disk (UNAVAILABLE), a server bug (INTERNAL, UNKNOWN), a revoked token
    (UNAUTHENTICATED): the batch stays queued, same id, and is delivered once the server heals."""
    not_now = TransportError(code, "not now", retry_delay=LONG_DELAY)
    transport = FakeTransport(not_now, not_now, None)
    client = make_client(transport=transport)
    client.count("ai.tokens", 3)
    assert not client.flush(timeout=5)
    assert not client.flush(timeout=5)
    assert client.stats().pending == 1
    assert client.flush(timeout=5)
    assert len({r.batch_id for r in transport.requests}) == 1 and len(transport.requests) == 3
    stats = client.stats()
    assert (stats.accepted, stats.failed_batches, stats.dropped, stats.retries) == (1, 0, 0, 2)


def test_already_exists_settles_the_batch_as_a_duplicate(make_client: MakeClient) -> None:
    client = make_client(transport=FakeTransport(TransportError(grpc.StatusCode.ALREADY_EXISTS)))
    client.count("ai.tokens")
    assert client.flush(timeout=5)
    stats = client.stats()
    assert (stats.duplicates, stats.failed_batches, stats.pending) == (1, 0, 0)


def test_a_batch_the_server_keeps_refusing_does_not_hold_up_the_others(make_client: MakeClient) -> None:
    internal = TransportError(grpc.StatusCode.INTERNAL, "bug", retry_delay=LONG_DELAY)
    transport = FakeTransport(internal, internal, None, None)
    client = make_client(transport=transport)
    client.count("ai.tokens", 1)
    assert not client.flush(timeout=5)  # the first batch fails
    client.count("ai.tokens", 2, user="user-bob")
    assert not client.flush(timeout=5)  # the first batch, at the head, fails again: to the back
    assert client.flush(timeout=5)  # the second batch goes first
    assert [r.contributions[0].value for r in transport.requests] == [1, 1, 2, 1]
    assert client.stats().accepted == 2


def test_a_batch_older_than_the_age_limit_is_dropped_counted_and_reported() -> None:
    now = [1_000_000.0]
    transport = FakeTransport(default=TransportError(grpc.StatusCode.INTERNAL))
    errors: list[ClientError] = []
    delivery = Delivery(transport, source="t", source_version="", max_pending=100, timeout=1.0, spool=None,
                        rng=random.Random(0), wall=lambda: now[0], on_error=errors.append)
    delivery.add({("user-alice", "ai.tokens", 1.0): 1, ("user-bob", "ai.tokens", 1.0): 1}, 0)
    assert delivery.send() is not None and delivery.pending == 2
    now[0] += MAX_BATCH_AGE + 1
    transport.default = None
    assert delivery.send() is None
    assert (delivery.pending, delivery.dropped, delivery.failed_batches, delivery.accepted) == (0, 2, 0, 0)
    assert [(e.kind, str(e)) for e in errors][-1] == ("expired", "1 batch(es) dropped: not acknowledged within 14 days")
    delivery.add({("user-alice", "ai.tokens", 2.0): 1}, 0)
    assert delivery.send() is None
    assert transport.requests[-1].dropped == 2  # the server learns of the drop


def test_a_transport_bug_drops_the_batch_instead_of_killing_the_loop(make_client: MakeClient) -> None:
    transport = FakeTransport(RuntimeError("bug"), None)
    client = make_client(transport=transport)
    client.count("ai.tokens", 1)
    assert not client.flush(timeout=5)  # given up, not acknowledged
    client.count("ai.tokens", 2)
    assert client.flush(timeout=5)
    assert client.stats().failed_batches == 1 and client.stats().sent_batches == 1


def test_the_drop_report_of_a_failed_batch_is_carried_to_the_next(make_client: MakeClient) -> None:
    transport = FakeTransport(TransportError(grpc.StatusCode.INVALID_ARGUMENT), None)
    client = make_client(transport=transport, max_pending=1)
    client.count("ai.tokens", user="user-1")
    client.count("ai.tokens", user="user-2")  # dropped
    assert not client.flush(timeout=5)
    client.count("ai.tokens", user="user-3")
    assert client.flush(timeout=5)
    assert [r.dropped for r in transport.requests] == [1, 1]


def test_rejections_are_final_and_counted_by_reason(
    make_client: MakeClient, caplog: pytest.LogCaptureFixture
) -> None:
    response = ingest_pb2.ReportResponse(
        accepted=1,
        rejections=[
            ingest_pb2.Rejection(index=1, reason=ingest_pb2.REJECT_REASON_UNKNOWN_USER, message="roster"),
            ingest_pb2.Rejection(index=2, reason=ingest_pb2.REJECT_REASON_LATE, message="window closed"),
            ingest_pb2.Rejection(index=3, reason=ingest_pb2.REJECT_REASON_LATE, message="window closed"),
        ],
    )
    transport = FakeTransport(response)
    client = make_client(transport=transport)
    for user in ("user-0", "user-mallory", "user-2", "user-3"):
        client.count("ai.tokens", user=user)
    with caplog.at_level(logging.WARNING, logger="chorus.client"):
        assert client.flush(timeout=5)
    assert client.flush(timeout=5)
    assert len(transport.requests) == 1
    stats = client.stats()
    assert stats.rejected == {"UNKNOWN_USER": 1, "LATE": 2}
    assert (stats.accepted, stats.sent_batches, stats.retries) == (1, 1, 0)
    assert "user-mallory" not in caplog.text


def test_duplicates_are_counted(make_client: MakeClient) -> None:
    transport = FakeTransport(ingest_pb2.ReportResponse(duplicate=True))
    client = make_client(transport=transport)
    client.count("ai.tokens")
    assert client.flush(timeout=5)
    assert client.stats().duplicates == 1


def test_sends_stop_at_the_first_retryable_failure(make_client: MakeClient) -> None:
    transport = FakeTransport(unavailable())
    client = make_client(transport=transport, max_pending=20_000)
    for i in range(6000):  # two batches
        client.count("ai.tokens", user=f"user-{i}")
    assert not client.flush(timeout=5)
    assert len(transport.requests) == 1
    assert client.flush(timeout=5)
    assert [len(r.contributions) for r in transport.requests] == [5000, 5000, 1000]


def test_each_send_gets_the_configured_timeout(make_client: MakeClient, transport: FakeTransport) -> None:
    client = make_client(timeout=2.5)
    client.count("ai.tokens")
    assert client.flush()  # no flush deadline: the configured timeout alone
    assert transport.timeouts == [2.5]


def test_a_malformed_answer_neither_raises_nor_counts_as_success(
    make_client: MakeClient, caplog: pytest.LogCaptureFixture
) -> None:
    class GarbageTransport(FakeTransport):
        def send(self, request: ingest_pb2.ReportRequest, timeout: float) -> ingest_pb2.ReportResponse:
            super().send(request, timeout)
            return "not a response"  # type: ignore[return-value]

    transport = GarbageTransport()
    client = make_client(transport=transport)
    client.count("ai.tokens")
    assert not client.flush(timeout=5)  # the batch stays; retried an interval (an hour) later
    assert len(transport.requests) == 1
    assert client.stats().pending == 1
    assert "flush step failed" in caplog.text
