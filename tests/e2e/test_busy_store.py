"""docs/api.md and docs/security.md, "a busy store": with the store's write lock held by a foreign
program (another process in a SQLite write transaction; a PostgreSQL session holding a table or
row lock), a real `chorus serve` answers each Report `UNAVAILABLE` with `RetryInfo` within the
call's deadline (the client's, or `limits.rpc_deadline_seconds`), while health checks and reads
keep being answered at once; when the holder lets go, the same Report is accepted."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from chorus.server.model.roles import Role
from chorus.server.root import Chorus
from chorus.server.store import SQLITE_FILE
from chorus.v1 import admin_pb2, admin_pb2_grpc, ingest_pb2, ingest_pb2_grpc
from tests._locks import holding
from tests._policy import SUITE_TOML, suite_config
from tests._roster import ROSTER
from tests._status import detail
from tests.store.postgres_schema import fresh_schema

from .conftest import report_request

pytestmark = pytest.mark.slow

READY = re.compile(r"chorus serving on (\S+)")
SERVER_DEADLINE = 3.0  # limits.rpc_deadline_seconds of the server under test


@contextlib.contextmanager
def _database(engine: str) -> Iterator[str]:
    if engine == "sqlite":
        yield ""
    else:
        with fresh_schema() as url:
            yield url


@contextlib.contextmanager
def _server(tmp_path: Path, database: str) -> Iterator[tuple[str, dict[str, str]]]:
    data_dir = tmp_path / "data"
    chorus = Chorus(suite_config(), data_dir, database=database or None)
    try:
        chorus.import_roster(ROSTER, actor="operator")
        tokens = {role.value: chorus.tokens.create(role, f"test-{role.value}", chorus.clock.now(),
                                                   actor="operator")[0] for role in (Role.ADMIN, Role.INGEST)}
    finally:
        chorus.close()
    config = tmp_path / "config.toml"
    config.write_text(SUITE_TOML + f"\n[limits]\nrpc_deadline_seconds = {SERVER_DEADLINE}\n")
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "chorus.server.cli", "serve", "--data-dir", str(data_dir),
                                 "--config", str(config), "--listen", "127.0.0.1:0",
                                 *(["--database", database] if database else [])],
                                stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "COLUMNS": "400"})
    try:
        deadline = time.monotonic() + 60
        while not (ready := READY.search(log.read_text(errors="replace"))):
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text(errors="replace")
            time.sleep(0.05)
        yield ready[1], tokens
    finally:
        proc.kill()
        proc.wait(10)
        print(log.read_text(errors="replace"))  # shown when the test failed




def _report(channel: grpc.Channel, token: str, request: ingest_pb2.ReportRequest,
            timeout: float | None) -> tuple[grpc.RpcError | None, float]:
    started = time.monotonic()
    try:
        ingest_pb2_grpc.IngestServiceStub(channel).Report(request, metadata=(("authorization", f"Bearer {token}"),),
                                                          timeout=timeout)
        return None, time.monotonic() - started
    except grpc.RpcError as exc:
        return exc, time.monotonic() - started


def _assert_unavailable_in_time(error: grpc.RpcError | None, took: float, bound: float) -> None:
    assert error is not None, "the Report passed although the store was locked"
    assert error.code() == grpc.StatusCode.UNAVAILABLE, (error.code(), error.details())
    assert detail(error, error_details_pb2.RetryInfo).retry_delay.ToNanoseconds() > 0
    # UNAVAILABLE (not DEADLINE_EXCEEDED) means the answer came before the deadline; the slack is
    # this client's own scheduling on a loaded machine.
    assert took < bound + 0.25, f"UNAVAILABLE after {took:.2f} s, past the {bound} s deadline"


@pytest.mark.parametrize("engine", ["sqlite", pytest.param("postgresql-table", marks=pytest.mark.postgres),
                                    pytest.param("postgresql-row", marks=pytest.mark.postgres)])
def test_a_foreign_lock_holder_gets_unavailable_within_the_deadline(tmp_path: Path, engine: str) -> None:
    with _database("sqlite" if engine == "sqlite" else "postgresql") as url, _server(tmp_path, url) as (address,
                                                                                                       tokens):
        ingest, admin = tokens[Role.INGEST.value], tokens[Role.ADMIN.value]
        blocked = report_request(batch_id=uuid.uuid4().hex)
        target = str(tmp_path / "data" / SQLITE_FILE) if engine == "sqlite" else url
        with grpc.insecure_channel(address) as channel, holding(engine, target, blocked.batch_id):
            # The client's deadline bounds the wait.
            _assert_unavailable_in_time(*_report(channel, ingest, blocked, timeout=2.0), bound=2.0)
            # No client deadline: the server's limits.rpc_deadline_seconds does.
            _assert_unavailable_in_time(*_report(channel, ingest, blocked, timeout=None), bound=SERVER_DEADLINE)
            # Many writers at once, more than the server has RPC threads: each refused in time, while
            # health checks and reads are answered at once all along.
            stop, slowest = threading.Event(), [0.0, 0.0]

            def probe() -> None:
                health = health_pb2_grpc.HealthStub(channel)
                admin_stub = admin_pb2_grpc.AdminServiceStub(channel)
                while not stop.is_set():
                    started = time.monotonic()
                    health.Check(health_pb2.HealthCheckRequest(), timeout=5)
                    slowest[0] = max(slowest[0], time.monotonic() - started)
                    started = time.monotonic()
                    admin_stub.ListWindows(admin_pb2.ListWindowsRequest(), timeout=5,
                                           metadata=(("authorization", f"Bearer {admin}"),))
                    slowest[1] = max(slowest[1], time.monotonic() - started)
                    time.sleep(0.05)

            prober = threading.Thread(target=probe)
            prober.start()
            with ThreadPoolExecutor(32) as pool:
                outcomes = list(pool.map(lambda _: _report(channel, ingest, blocked, timeout=2.0), range(48)))
            stop.set()
            prober.join()
            for error, took in outcomes:
                _assert_unavailable_in_time(error, took, bound=2.0)
            assert slowest[0] < 0.5 and slowest[1] < 1.0, f"health {slowest[0]:.2f} s, ListWindows {slowest[1]:.2f} s"
        # The holder is gone: the very same batch goes through, at once or after one RetryInfo
        # delay (a write that arrives while the stalled one is still taking the lock is refused).
        with grpc.insecure_channel(address) as channel:
            error, _ = _report(channel, ingest, blocked, timeout=10)
            if error is not None and error.code() == grpc.StatusCode.UNAVAILABLE:
                time.sleep(detail(error, error_details_pb2.RetryInfo).retry_delay.ToTimedelta().total_seconds())
                error, _ = _report(channel, ingest, blocked, timeout=10)
        assert error is None, (error.code(), error.details())


@pytest.mark.parametrize("engine", ["sqlite", pytest.param("postgresql-table", marks=pytest.mark.postgres)])
def test_while_one_write_waits_for_a_foreign_lock_the_next_is_refused_at_once(tmp_path: Path, engine: str) -> None:
    """security.md: while one write waits for a lock another program holds (past 0.5 s on SQLite,
    0.25 s on PostgreSQL), the others are refused at once rather than queue behind it."""
    with _database("sqlite" if engine == "sqlite" else "postgresql") as url, _server(tmp_path, url) as (address,
                                                                                                       tokens):
        ingest = tokens[Role.INGEST.value]
        target = str(tmp_path / "data" / SQLITE_FILE) if engine == "sqlite" else url
        with grpc.insecure_channel(address) as channel, holding(engine, target, "unused"), \
                ThreadPoolExecutor(1) as pool:
            first = pool.submit(_report, channel, ingest, report_request(batch_id=uuid.uuid4().hex), 5.0)
            time.sleep(1.0)  # the first has waited past either engine's patience
            error, took = _report(channel, ingest, report_request(batch_id=uuid.uuid4().hex), timeout=5.0)
            assert error is not None and error.code() == grpc.StatusCode.UNAVAILABLE, error
            assert took < 0.5, f"the second write was refused after {took:.2f} s, not at once"
            first_error, first_took = first.result()
            # The first waited for its deadline: the server's 3 s, less a fifth.
            _assert_unavailable_in_time(first_error, first_took, bound=SERVER_DEADLINE)
            assert first_took > 2.0, f"the first write gave up after {first_took:.2f} s"
