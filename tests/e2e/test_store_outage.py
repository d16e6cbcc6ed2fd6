"""A store that does not answer is UNAVAILABLE with RetryInfo: the SDK retries, nothing is dropped."""

from __future__ import annotations

import grpc
import pytest

from chorus.client import GrpcTransport, TransportError
from chorus.server.store import StoreUnavailable
from chorus.v1 import ingest_pb2

from .conftest import Running, report_request

#: Every test here starts a server, a process or a browser (tests/conftest.py, the fast lane).
pytestmark = pytest.mark.slow


@pytest.mark.parametrize("failing", ["authenticate", "ingest"])
def test_a_store_outage_is_retryable_unavailable(running: Running, monkeypatch: pytest.MonkeyPatch,
                                                 failing: str) -> None:
    real = running.chorus.db._transaction

    def flaky(fn, name, *, read_only):  # type: ignore[no-untyped-def]
        if name == failing:
            raise StoreUnavailable("database /secret/path is locked")
        return real(fn, name, read_only=read_only)

    monkeypatch.setattr(running.chorus.db, "_transaction", flaky)  # writes and reads alike
    transport = GrpcTransport(running.address, running.ingest_token)
    try:
        with pytest.raises(TransportError) as err:
            transport.send(report_request(), timeout=10)
    finally:
        transport.close()
    assert err.value.code == grpc.StatusCode.UNAVAILABLE and err.value.retryable
    assert err.value.retry_delay is not None and err.value.retry_delay > 0
    assert "/secret/path" not in err.value.details  # the store's details stay in the server log
    monkeypatch.setattr(running.chorus.db, "_transaction", real)
    reply: ingest_pb2.ReportResponse = GrpcTransport(running.address, running.ingest_token).send(report_request(), 10)
    assert reply.accepted == 1
