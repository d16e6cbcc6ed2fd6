"""Fakes for SDK tests: a hand-moved clock and a scripted transport. No sleeps, no network.

Tests drive the public API only: `flush(timeout)` runs the same pass as the flush thread and
returns once it is done, so it is the deterministic way to wait. A scripted retryable failure
carries a long RetryInfo delay (`unavailable()`), so one flush() makes exactly one attempt
and gives up at once instead of waiting out a backoff.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest

from chorus.client import Client, TransportError
from chorus.v1 import ingest_pb2

# 2023-11-14T22:13:00Z: a minute boundary.
T0 = 1_700_000_000 - 1_700_000_000 % 60


class FakeClock:
    """Wall clock moved by hand."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def time(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


Outcome = ingest_pb2.ReportResponse | Exception | None


class FakeTransport:
    """Records a copy of every request and answers from a script.

    Each send consumes the next scripted outcome: a ReportResponse, an exception to raise,
    or None for "accept everything". When the script runs out, `default` is used.
    """

    def __init__(self, *outcomes: Outcome, default: Outcome = None) -> None:
        self.outcomes: deque[Outcome] = deque(outcomes)
        self.default = default
        self.requests: list[ingest_pb2.ReportRequest] = []
        self.timeouts: list[float] = []
        self.sent = threading.Event()
        self.closed = False

    def send(self, request: ingest_pb2.ReportRequest, timeout: float) -> ingest_pb2.ReportResponse:
        copy = ingest_pb2.ReportRequest()
        copy.CopyFrom(request)
        self.requests.append(copy)
        self.timeouts.append(timeout)
        self.sent.set()
        outcome = self.outcomes.popleft() if self.outcomes else self.default
        if isinstance(outcome, Exception):
            raise outcome
        if outcome is None:
            return ingest_pb2.ReportResponse(accepted=len(request.contributions))
        return outcome

    def close(self) -> None:
        self.closed = True


#: A RetryInfo delay longer than any flush() timeout in the tests: flush() then makes one
#: attempt and returns False at once.
LONG_DELAY = 3600.0


def unavailable(retry_delay: float | None = LONG_DELAY) -> TransportError:
    return TransportError(grpc.StatusCode.UNAVAILABLE, "server down", retry_delay)


def flush_threads() -> set[threading.Thread]:
    """The SDK's live flush threads (named chorus-client-flush)."""
    return {t for t in threading.enumerate() if t.name == "chorus-client-flush"}


def contributions(request: ingest_pb2.ReportRequest) -> list[tuple[str, str, int, int]]:
    """(user, metric, value, event_time seconds) of each contribution."""
    return [(c.user, c.metric, c.value, c.event_time.seconds) for c in request.contributions]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def transport() -> FakeTransport:
    return FakeTransport()


@pytest.fixture
def make_client(clock: FakeClock, transport: FakeTransport) -> Iterator[Callable[..., Client]]:
    """Build clients on the fake clock and transport; a long flush_interval keeps the
    background thread idle, so that only the test's flush() calls send."""
    clients: list[Client] = []

    def make(**kwargs: Any) -> Client:
        options: dict[str, Any] = {
            "transport": transport, "clock": clock, "user": "user-alice", "flush_interval": 3600.0,
        }
        options.update(kwargs)
        client = Client(**options)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close(timeout=0)
