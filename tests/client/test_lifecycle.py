"""flush(), close(), the flush thread, atexit and fork."""

from __future__ import annotations

import os
import random
import sys
import threading
import time
from collections.abc import Callable

import grpc
import pytest

from chorus.client import Client, TransportError
from chorus.client import _client as client_module
from chorus.client._delivery import Delivery
from chorus.client._worker import Worker
from chorus.v1 import ingest_pb2

from .conftest import FakeClock, FakeTransport, flush_threads, unavailable

MakeClient = Callable[..., Client]


def test_flush_sends_everything_and_reports_success(
    make_client: MakeClient, transport: FakeTransport
) -> None:
    client = make_client()
    client.count("ai.tokens", 3)
    assert client.flush(timeout=5)
    assert client.stats().accepted == 1 and client.stats().pending == 0
    assert client.flush(timeout=5)  # nothing left: still True
    assert len(transport.requests) == 1


def test_flush_retries_within_its_timeout(make_client: MakeClient) -> None:
    transport = FakeTransport(unavailable(retry_delay=0.0), unavailable(retry_delay=0.0), None)
    client = make_client(transport=transport)
    client.count("ai.tokens")
    assert client.flush(timeout=5)
    assert len(transport.requests) == 3 and client.stats().retries == 2


def test_flush_gives_up_at_once_when_the_wait_exceeds_its_timeout(make_client: MakeClient) -> None:
    transport = FakeTransport(default=unavailable(retry_delay=3600.0))
    client = make_client(transport=transport)
    client.count("ai.tokens")
    started = time.monotonic()
    assert not client.flush(timeout=600)
    # Waiting for the retry would take the whole 600 s; a generous bound for a loaded machine.
    assert time.monotonic() - started < 60
    assert len(transport.requests) == 1 and client.stats().pending == 1


def test_flush_is_false_when_a_batch_is_dropped_as_invalid(make_client: MakeClient) -> None:
    transport = FakeTransport(TransportError(grpc.StatusCode.INVALID_ARGUMENT, "bad batch"))
    client = make_client(transport=transport)
    client.count("ai.tokens", 3)
    assert not client.flush(timeout=5)
    stats = client.stats()
    assert (stats.failed_batches, stats.pending, stats.accepted) == (1, 0, 0)
    # The drop is reported by the flush that covered it, not by every later one.
    client.count("ai.tokens", 4)
    assert client.flush(timeout=5)
    assert client.flush(timeout=5)


@pytest.mark.parametrize("code", [grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.OUT_OF_RANGE])
def test_flush_is_false_when_any_of_several_batches_is_dropped(
    make_client: MakeClient, code: grpc.StatusCode
) -> None:
    transport = FakeTransport(None, TransportError(code), None)
    client = make_client(transport=transport, max_pending=20_000)
    for i in range(12_000):  # three batches of at most 5,000
        client.count("ai.tokens", user=f"user-{i}")
    assert not client.flush(timeout=5)
    assert len(transport.requests) == 3 and client.stats().failed_batches == 1


@pytest.mark.parametrize(
    "response",
    [
        ingest_pb2.ReportResponse(duplicate=True),
        ingest_pb2.ReportResponse(
            accepted=0,
            rejections=[ingest_pb2.Rejection(index=0, reason=ingest_pb2.REJECT_REASON_UNKNOWN_USER)],
        ),
    ],
    ids=["duplicate", "rejected"],
)
def test_flush_counts_duplicates_and_rejections_as_acknowledged(
    make_client: MakeClient, response: ingest_pb2.ReportResponse
) -> None:
    client = make_client(transport=FakeTransport(response))
    client.count("ai.tokens")
    assert client.flush(timeout=5)
    assert client.stats().sent_batches == 1 and client.stats().failed_batches == 0


def test_flush_reports_a_drop_by_the_flush_thread_during_the_call(
    make_client: MakeClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch pending when flush() is called, dropped by the flush thread's send in progress."""
    sending = threading.Event()
    watching = threading.Event()

    class BlockedTransport(FakeTransport):
        def send(self, request: ingest_pb2.ReportRequest, timeout: float) -> ingest_pb2.ReportResponse:
            sending.set()
            assert watching.wait(timeout=30)  # answer only once flush() has taken its snapshot
            return super().send(request, timeout)

    watch = Delivery.watch

    def watch_and_signal(self: Delivery, generation: int) -> object:
        try:
            return watch(self, generation)
        finally:
            watching.set()

    # The one seam: when flush() has registered its interest, the thread's send may answer.
    monkeypatch.setattr(Delivery, "watch", watch_and_signal)
    transport = BlockedTransport(TransportError(grpc.StatusCode.INVALID_ARGUMENT))
    client = make_client(transport=transport, flush_interval=0.01)
    client.count("ai.tokens")  # starts the flush thread, whose first pass is now under way
    assert sending.wait(timeout=30)
    try:
        assert not client.flush(timeout=30)
    finally:
        watching.set()
    assert client.stats().failed_batches == 1 and client.stats().pending == 0


def test_flush_ignores_the_loss_of_a_batch_drained_after_the_call() -> None:
    transport = FakeTransport(TransportError(grpc.StatusCode.INVALID_ARGUMENT), None)
    delivery = Delivery(
        transport, source="t", source_version="", max_pending=100, timeout=1.0, spool=None, rng=random.Random(0)
    )
    watch = delivery.watch(1)
    delivery.add({("user-alice", "ai.tokens", 1.0): 1}, 0, generation=2)  # counted after the call
    assert delivery.send() is None
    assert not watch.lost
    delivery.add({("user-alice", "ai.tokens", 2.0): 1}, 0, generation=1)
    delivery.unwatch(watch)
    assert delivery.send() is None and not watch.lost  # no longer watched
    assert delivery.failed_batches == 1


def test_flush_is_false_when_counts_are_lost_to_an_unexpected_error(make_client: MakeClient) -> None:
    client = make_client()
    delivery = client._delivery
    assert delivery is not None

    def broken_add(*args: object, **kwargs: object) -> None:
        raise RuntimeError("bug")

    delivery.add = broken_add  # type: ignore[method-assign]
    client.count("ai.tokens")
    assert not client.flush(timeout=5)


def test_flush_never_raises(make_client: MakeClient, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(self: Worker, timeout: float | None) -> bool:
        raise RuntimeError("bug")

    monkeypatch.setattr(Worker, "flush", broken)
    client = make_client()
    client.count("ai.tokens")
    assert client.flush(timeout=1) is False


def test_the_flush_thread_sends_on_its_own(clock: FakeClock) -> None:
    transport = FakeTransport()
    client = Client(transport=transport, clock=clock, user="user-alice", flush_interval=0.01)
    client.count("ai.tokens")
    assert transport.sent.wait(timeout=10)
    client.close(timeout=5)
    assert transport.requests[0].contributions[0].value == 1


def test_close_interrupts_a_long_backoff_promptly(clock: FakeClock) -> None:
    transport = FakeTransport(default=unavailable(retry_delay=3600.0))
    before = flush_threads()
    client = Client(transport=transport, clock=clock, user="user-alice", flush_interval=0.01)
    client.count("ai.tokens")
    assert transport.sent.wait(timeout=30)  # the thread failed once and now waits an hour
    (thread,) = flush_threads() - before

    started = time.monotonic()
    client.close(timeout=120)
    # Without the interruption close() would wait its whole 120 s for the thread.
    assert time.monotonic() - started < 60
    assert not thread.is_alive()
    assert transport.closed


def test_close_sends_what_is_pending_then_drops_later_counts(
    make_client: MakeClient, transport: FakeTransport
) -> None:
    client = make_client()
    client.count("ai.tokens", 4)
    client.close()
    assert [r.contributions[0].value for r in transport.requests] == [4]
    client.count("ai.tokens", 5)
    client.close()  # idempotent
    assert len(transport.requests) == 1
    assert client.stats().dropped == 1
    assert client.flush(timeout=1)


def test_close_without_a_spool_counts_the_unsent_as_dropped(
    make_client: MakeClient, caplog: pytest.LogCaptureFixture
) -> None:
    transport = FakeTransport(default=unavailable(retry_delay=3600.0))
    client = make_client(transport=transport)
    client.count("ai.tokens", user="user-1")
    client.count("ai.tokens", user="user-2")
    client.close(timeout=1)
    assert client.stats().dropped == 2
    assert "2 contributions could not be delivered" in caplog.text


def test_close_when_a_send_hangs_returns_within_its_timeout(clock: FakeClock) -> None:
    release = threading.Event()

    class HangingTransport(FakeTransport):
        def send(self, request: ingest_pb2.ReportRequest, timeout: float) -> ingest_pb2.ReportResponse:
            super().send(request, timeout)
            release.wait(timeout)
            raise TransportError(grpc.StatusCode.DEADLINE_EXCEEDED)

    transport = HangingTransport()
    client = Client(transport=transport, clock=clock, user="user-alice", flush_interval=0.01, timeout=300)
    client.count("ai.tokens")
    assert transport.sent.wait(timeout=30)
    started = time.monotonic()
    client.close(timeout=0.2)
    # The send hangs for 300 s; a generous bound for a loaded machine.
    assert time.monotonic() - started < 60
    release.set()


def test_context_manager_closes(make_client: MakeClient, transport: FakeTransport) -> None:
    with make_client() as client:
        client.count("ai.tokens")
    assert transport.closed and len(transport.requests) == 1


def test_atexit_closes_unclosed_clients_once(
    monkeypatch: pytest.MonkeyPatch, transport: FakeTransport
) -> None:
    registered: list[Callable[[], None]] = []
    monkeypatch.setattr(client_module.atexit, "register", registered.append)
    monkeypatch.setattr(client_module.atexit, "unregister", registered.remove)
    client = Client(transport=transport, user="user-alice")
    client.count("ai.tokens")
    (at_exit,) = registered
    at_exit()
    assert len(transport.requests) == 1 and transport.closed
    assert registered == []


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32" or not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_starts_empty_and_the_parent_keeps_its_data(
    make_client: MakeClient, transport: FakeTransport
) -> None:
    client = make_client()
    client.count("ai.tokens", 11)  # also starts the parent's flush thread
    pid = os.fork()
    if pid == 0:  # child: report through the exit status only, never return into pytest
        status = 1
        try:
            fresh = client.stats().pending == 0 and not flush_threads()
            transport.requests.clear()
            client.count("ai.tokens", 22)
            started = len(flush_threads()) == 1  # the child's own thread
            sent = client.flush(timeout=5) and [c.value for c in transport.requests[0].contributions] == [22]
            status = 0 if fresh and sent and started else 2
        finally:
            os._exit(status)
    _, wait_status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(wait_status) == 0
    assert client.stats().pending == 1
    assert client.flush(timeout=5)
    assert [c.value for c in transport.requests[0].contributions] == [11]
