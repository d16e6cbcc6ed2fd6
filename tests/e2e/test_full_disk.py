"""A full disk loses nothing: the store's failure is UNAVAILABLE with RetryInfo, health says
NOT_SERVING until the store can write again, and the SDK keeps (and spools) every batch, so
after space returns every acknowledged and every spooled contribution is counted once."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2

from chorus.client import Client, GrpcTransport, TransportError
from chorus.server.domain import windows as window_store
from chorus.server.model.roles import Role
from chorus.server.root import Chorus
from chorus.server.transport import grpc_server as app_module
from chorus.server.transport.grpc_server import Server
from tests._policy import suite_config

from .conftest import Running, import_roster, report_request
from .test_health import _wait_for

#: Every test here starts a server, a process or a browser (tests/conftest.py, the fast lane).
pytestmark = pytest.mark.slow

SERVING, NOT_SERVING = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING
TEAMS = {"team-red": 600, "team-blue": 400}
PEOPLE = [(f"user-{team}-{i}", team) for team, size in TEAMS.items() for i in range(size)]


@pytest.fixture(autouse=True)
def fast_probe(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(app_module, "HEALTH_PROBE_SECONDS", 0.05)


def test_a_full_store_is_unavailable_with_retry_info_and_not_serving_until_it_writes_again(
        tmp_path: Path) -> None:
    running = Running(tmp_path / "data")
    db = running.chorus.db
    try:
        import_roster(running.address, running.admin_token, PEOPLE)
        # max_page_count makes SQLite fail with SQLITE_FULL exactly as a full disk does.
        (pages,), = db.run(lambda tx: tx.query("PRAGMA page_count"), name="t")
        db.run(lambda tx: tx.query(f"PRAGMA max_page_count = {pages}"), name="t")
        transport = GrpcTransport(running.address, running.ingest_token)
        big = report_request()
        for user, _ in PEOPLE[1:]:  # a row per person: more than the free pages hold
            big.contributions.add(user=user, metric="ai.tokens", value=1, event_time=big.contributions[0].event_time)
        health = SERVING
        deadline = time.monotonic() + 10
        while health != NOT_SERVING and time.monotonic() < deadline:  # clients keep trying meanwhile
            with pytest.raises(TransportError) as raised:
                transport.send(big, timeout=10)
            assert raised.value.code == grpc.StatusCode.UNAVAILABLE  # the audit saw INTERNAL
            assert raised.value.retry_delay is not None and raised.value.retryable
            assert "SQLITE" not in raised.value.details and ".db" not in raised.value.details  # server log only
            health = _wait_for(running.address, NOT_SERVING, seconds=0.2)
        assert health == NOT_SERVING

        db.run(lambda tx: tx.query("PRAGMA max_page_count = 1073741823"), name="t")  # space is back
        assert _wait_for(running.address, SERVING) == SERVING
        assert transport.send(big, timeout=10).accepted == len(big.contributions)
        transport.close()
    finally:
        running.server.stop(grace=1)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 16 MiB tmpfs mounted for the test (root only); skipped visibly elsewhere, never in CI."""
    mount = tmp_path / "disk"
    mount.mkdir()
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m,mode=0700", "tmpfs", str(mount)],
                              capture_output=True, text=True, timeout=30)
        error = done.stderr.strip() if done.returncode else ""
    except (OSError, subprocess.SubprocessError) as exc:
        error = str(exc)
    if error:
        reason = f"cannot mount a tmpfs as the data directory (needs root): {error}"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False, timeout=30)


def _fill(path: Path, leave: int) -> None:
    """Write a ballast file that leaves about `leave` bytes free on the filesystem."""
    stats = os.statvfs(path.parent)
    size = max(0, stats.f_bavail * stats.f_frsize - leave)
    with open(path, "wb") as ballast:
        chunk = b"\0" * (1 << 20)
        while size > 0:
            try:
                size -= ballast.write(chunk[:size])
            except OSError:
                break


def _count_round(client: Client, truth: Counter[tuple[str, str]], metric: str, value: int) -> None:
    for user, team in PEOPLE:
        client.count(metric, value, user=user)
        truth[(team, metric)] += value


@pytest.mark.slow
def test_a_full_disk_loses_nothing(small_disk: Path, tmp_path: Path) -> None:
    chorus = Chorus(suite_config(), small_disk / "data")
    admin, _ = chorus.tokens.create(Role.ADMIN, "test-admin", chorus.clock.now(), "test")
    ingest, _ = chorus.tokens.create(Role.INGEST, "test-ingest", chorus.clock.now(), "test")
    server = Server(chorus, "127.0.0.1:0")
    server.start()
    spool = tmp_path / "spool"  # the tool's own disk, not the server's
    truth: Counter[tuple[str, str]] = Counter()
    try:
        import_roster(server.address, admin, PEOPLE)

        def client() -> Client:
            return Client(endpoint=server.address, token=ingest, source="fill", spool_dir=spool,
                          flush_interval=3600)

        first = client()
        _count_round(first, truth, "ai.requests", 1)
        assert first.flush(timeout=30)  # acknowledged while there is space

        _fill(small_disk / "ballast", leave=256 * 1024)
        for value in range(1, 40):  # through the SDK until the store is full
            _count_round(first, truth, "ai.tokens", value)
            if not first.flush(timeout=3):
                break
        else:
            pytest.fail("the disk never filled up")
        health, deadline = SERVING, time.monotonic() + 20
        while health != NOT_SERVING and time.monotonic() < deadline:
            assert not first.flush(timeout=1.5)  # the SDK keeps retrying; every retry fails
            health = _wait_for(server.address, NOT_SERVING, seconds=0.2)
        assert health == NOT_SERVING
        _count_round(first, truth, "ai.requests", 2)  # counted while the store is full
        first.close(timeout=1)
        stats = first.stats()
        assert stats.failed_batches == 0 and stats.dropped == 0 and stats.retries > 0
        assert list(spool.glob("*.pb")), "the unsent batches must wait in the spool"

        (small_disk / "ballast").unlink()  # the operator frees space
        assert _wait_for(server.address, SERVING, seconds=30) == SERVING
        second = client()  # the tool's next run sends what the first one spooled
        assert second.flush(timeout=60)
        second.close()
        assert second.stats().failed_batches == 0 and not list(spool.glob("*.pb"))

        windows = chorus.db.run(lambda tx: window_store.list_windows(tx), name="t")
        for window in windows:
            chorus.close_window(window.id, actor="test")
        rows = chorus.db.run(lambda tx: tx.query("SELECT team, metric, SUM(total) FROM team_metrics "
                                                 "GROUP BY team, metric"), name="t")
        counted = {(team, metric): total for team, metric, total in rows if total}
        assert counted == dict(truth)  # every contribution exactly once
    finally:
        server.stop(grace=1)
        shutil.rmtree(small_disk / "data", ignore_errors=True)
