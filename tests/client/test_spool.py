"""The spool: unsent batches survive the process and are sent first by the next one."""

from __future__ import annotations

import os
import random
import stat
import sys
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

from chorus.client import Client, TransportError
from chorus.client._delivery import MAX_BATCH_AGE, Delivery
from chorus.client._spool import Spool
from chorus.v1 import ingest_pb2

from .conftest import FakeTransport, contributions, unavailable

MakeClient = Callable[..., Client]


def _spooled(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.pb"))


def test_round_trip_unsent_batches_are_sent_first_next_time_then_deleted(
    make_client: MakeClient, tmp_path: Path
) -> None:
    spool_dir = tmp_path / "spool"
    down = FakeTransport(default=unavailable(retry_delay=3600.0))
    first = make_client(transport=down, spool_dir=spool_dir)
    first.count("ai.tokens", 41)
    first.close(timeout=1)
    (path,) = _spooled(spool_dir)
    batch_id = down.requests[0].batch_id
    assert path.name == f"{batch_id}.pb"
    assert first.stats().spooled == 1 and first.stats().dropped == 0

    up = FakeTransport()
    second = make_client(transport=up, spool_dir=spool_dir)
    second.count("ai.tokens", 1)
    assert second.flush(timeout=5)
    assert up.requests[0] == down.requests[0]  # resent byte for byte
    assert [c[2] for c in contributions(up.requests[1])] == [1]
    assert _spooled(spool_dir) == []


def test_spooled_without_even_trying_when_close_has_no_time(make_client: MakeClient, tmp_path: Path) -> None:
    transport = FakeTransport()
    client = make_client(transport=transport, spool_dir=tmp_path)
    client.count("ai.tokens", 41)
    client.close(timeout=0)
    assert transport.requests == []
    (path,) = _spooled(tmp_path)
    request = ingest_pb2.ReportRequest.FromString(path.read_bytes())
    assert [c.value for c in request.contributions] == [41] and path.stem == request.batch_id


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX permissions")
def test_spool_files_are_private(make_client: MakeClient, tmp_path: Path) -> None:
    spool_dir = tmp_path / "spool"
    client = make_client(spool_dir=spool_dir)
    client.count("ai.tokens")
    client.close(timeout=0)
    assert stat.S_IMODE(spool_dir.stat().st_mode) == 0o700
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in _spooled(spool_dir))


def test_spool_dir_from_the_environment(
    make_client: MakeClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CHORUS_SPOOL_DIR", str(tmp_path))
    client = make_client()
    client.count("ai.tokens")
    client.close(timeout=0)
    assert len(_spooled(tmp_path)) == 1


def test_closing_twice_spools_once(make_client: MakeClient, tmp_path: Path) -> None:
    transport = FakeTransport(unavailable(retry_delay=3600.0))
    client = make_client(transport=transport, spool_dir=tmp_path)
    client.count("ai.tokens")
    assert not client.flush(timeout=5)
    client.close(timeout=0)
    client.close(timeout=0)
    assert len(_spooled(tmp_path)) == 1 and client.stats().spooled == 1


def test_corrupt_spool_files_are_moved_aside_and_counted(
    make_client: MakeClient, transport: FakeTransport, tmp_path: Path
) -> None:
    (tmp_path / "garbage.pb").write_bytes(b"\xff\xfe not a protobuf")
    (tmp_path / "empty.pb").write_bytes(b"")
    renamed = ingest_pb2.ReportRequest(batch_id="a" * 32)
    (tmp_path / f"{'b' * 32}.pb").write_bytes(renamed.SerializeToString())
    client = make_client(spool_dir=tmp_path)
    client.count("ai.tokens", 9)
    assert client.flush(timeout=5)
    assert client.stats().spool_corrupt == 3
    assert [c[2] for r in transport.requests for c in contributions(r)] == [9]
    assert _spooled(tmp_path) == []
    assert sorted(p.name for p in tmp_path.glob("*.corrupt")) == sorted(
        ["garbage.pb.corrupt", "empty.pb.corrupt", f"{'b' * 32}.pb.corrupt"]
    )


def test_a_batch_refused_for_good_is_deleted_from_the_spool(make_client: MakeClient, tmp_path: Path) -> None:
    contribution = ingest_pb2.Contribution(user="user-x", metric="m")
    Spool(tmp_path).write(ingest_pb2.ReportRequest(batch_id="c" * 32, contributions=[contribution]))
    transport = FakeTransport(TransportError(grpc.StatusCode.INVALID_ARGUMENT))
    client = make_client(transport=transport, spool_dir=tmp_path)
    assert not client.flush(timeout=5)  # the spooled batch was dropped, not acknowledged
    assert client.stats().failed_batches == 1 and _spooled(tmp_path) == []


@pytest.mark.parametrize("code", [grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN,
                                  grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.UNAVAILABLE])
def test_a_batch_the_server_may_yet_accept_stays_in_the_spool(
        make_client: MakeClient, tmp_path: Path, code: grpc.StatusCode) -> None:
    """The audit's full disk: the server answered with an error and the SDK deleted the file."""
    transport = FakeTransport(default=TransportError(code, "disk full"))
    client = make_client(transport=transport, spool_dir=tmp_path)
    client.count("ai.tokens", 5)
    assert not client.flush(timeout=0.5)
    client.close(timeout=0)
    assert len(_spooled(tmp_path)) == 1 and client.stats().failed_batches == 0
    later = FakeTransport()
    assert make_client(transport=later, spool_dir=tmp_path).flush(timeout=5)
    assert [c[2] for r in later.requests for c in contributions(r)] == [5] and _spooled(tmp_path) == []


def test_spool_size_is_bounded(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1000)
    big = ingest_pb2.ReportRequest(
        batch_id="d" * 32, contributions=[ingest_pb2.Contribution(user="user-" + "x" * 95, metric="m")] * 5
    )
    assert spool.write(big) is not None
    big.batch_id = "e" * 32
    assert spool.write(big) is None
    assert [p.name for p in _spooled(tmp_path)] == [f"{'d' * 32}.pb"]


def test_a_full_spool_counts_the_batch_dropped(make_client: MakeClient, tmp_path: Path) -> None:
    (tmp_path / "filler.corrupt").write_bytes(b"x" * (32 * 1024 * 1024))
    client = make_client(spool_dir=tmp_path)
    client.count("ai.tokens")
    client.close(timeout=0)
    assert client.stats().dropped == 1 and client.stats().spooled == 0


def test_an_unusable_spool_dir_never_raises(make_client: MakeClient, tmp_path: Path) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    client = make_client(spool_dir=not_a_dir / "spool")
    client.count("ai.tokens")
    assert client.flush(timeout=5)
    client.count("ai.tokens")
    client.close(timeout=0)
    assert client.stats().dropped == 1


def test_loading_respects_the_memory_bound(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    for i in range(3):
        contribution = ingest_pb2.Contribution(user=f"user-{i}", metric="m", value=1)
        spool.write(ingest_pb2.ReportRequest(batch_id=f"{i}" * 32, contributions=[contribution] * 4))
    loaded, corrupt = spool.load(budget=9)
    assert len(loaded) == 2 and corrupt == 0
    loaded, _ = spool.load(budget=1)  # the first batch always loads, or it would never be sent
    assert len(loaded) == 1


def test_stale_temporary_files_are_cleaned_up(tmp_path: Path) -> None:
    stale = tmp_path / ".x.123.tmp"
    fresh = tmp_path / ".y.456.tmp"
    stale.write_bytes(b"partial")
    fresh.write_bytes(b"partial")
    old = time.time() - 7200
    os.utime(stale, (old, old))
    assert Spool(tmp_path).load(budget=10) == ([], 0)
    assert not stale.exists() and fresh.exists()


def test_batches_are_on_disk_before_their_first_send(tmp_path) -> None:
    """Write-ahead: a process killed while a send is in flight still has the batch spooled."""
    seen_on_disk: list[list[str]] = []

    class Recording:
        def send(self, request, timeout):
            seen_on_disk.append(sorted(p.name for p in tmp_path.glob("*.pb")))
            return ingest_pb2.ReportResponse(accepted=len(request.contributions))

        def close(self) -> None:
            pass

    delivery = Delivery(Recording(), source="t", source_version="", max_pending=100, timeout=1.0,
                        spool=Spool(tmp_path), rng=random.Random(0))
    delivery.add({("user-a", "ai.tokens", 1.0): 5}, dropped=0)
    assert delivery.send() is None
    assert len(seen_on_disk) == 1 and len(seen_on_disk[0]) == 1  # present while sending
    assert list(tmp_path.glob("*.pb")) == []  # removed once acknowledged


def test_a_spooled_batch_past_the_age_limit_is_dropped_counted_and_reported(
        make_client: MakeClient, tmp_path: Path) -> None:
    contribution = ingest_pb2.Contribution(user="user-x", metric="m")
    old = ingest_pb2.ReportRequest(batch_id="e" * 32, contributions=[contribution] * 2)
    path = Spool(tmp_path).write(old)
    assert path is not None
    stale = time.time() - MAX_BATCH_AGE - 60
    os.utime(path, (stale, stale))
    transport = FakeTransport()
    client = make_client(transport=transport, spool_dir=tmp_path)
    client.count("ai.tokens", 4)
    assert client.flush(timeout=5) is False  # the old batch was given up, not acknowledged
    assert _spooled(tmp_path) == [] and client.stats().dropped == 2
    assert [r.batch_id for r in transport.requests] != [old.batch_id]
    client.count("ai.tokens", 5)
    assert client.flush(timeout=5)
    assert sum(r.dropped for r in transport.requests) == 2  # reported to the server once
