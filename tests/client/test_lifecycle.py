"""flush(), close(), the flush thread, atexit and fork."""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable

import grpc
import pytest

from chorus.client import Client, TransportError
from chorus.client import _client as client_module
from chorus.v1 import ingest_pb2

from .conftest import FakeClock, FakeTransport, unavailable

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
    assert not client.flush(timeout=30)
    assert time.monotonic() - started < 5
    assert client.stats().pending == 1


def test_the_flush_thread_sends_on_its_own(clock: FakeClock) -> None:
    transport = FakeTransport()
    client = Client(transport=transport, clock=clock, user="user-alice", flush_interval=0.01)
    client.count("ai.tokens")
    assert transport.sent.wait(timeout=10)
    client.close(timeout=5)
    assert transport.requests[0].contributions[0].value == 1


def test_close_interrupts_a_long_backoff_promptly(clock: FakeClock) -> None:
    transport = FakeTransport(default=unavailable(retry_delay=3600.0))
    client = Client(transport=transport, clock=clock, user="user-alice", flush_interval=0.01)
    client.count("ai.tokens")
    assert transport.sent.wait(timeout=10)  # the thread failed once and now waits an hour
    thread = client._thread
    assert thread is not None

    started = time.monotonic()
    client.close(timeout=3)
    assert time.monotonic() - started < 2
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
    client = Client(transport=transport, clock=clock, user="user-alice", flush_interval=0.01, timeout=30)
    client.count("ai.tokens")
    assert transport.sent.wait(timeout=10)
    started = time.monotonic()
    client.close(timeout=0.2)
    assert time.monotonic() - started < 2
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
            fresh = client.stats().pending == 0 and client._thread is None
            transport.requests.clear()
            client.count("ai.tokens", 22)
            sent = client.flush(timeout=5) and [c.value for c in transport.requests[0].contributions] == [22]
            status = 0 if fresh and sent and client._thread is not None else 2
        finally:
            os._exit(status)
    _, wait_status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(wait_status) == 0
    assert client.stats().pending == 1
    assert client.flush(timeout=5)
    assert [c.value for c in transport.requests[0].contributions] == [11]
