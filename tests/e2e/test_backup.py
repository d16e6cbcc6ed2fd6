"""`chorus backup` while a real server ingests, then the restore procedure of docs/deployment.md."""

from __future__ import annotations

import shutil
import stat
import threading
import uuid
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest
from cryptography.hazmat.primitives import serialization
from google.protobuf.timestamp_pb2 import Timestamp
from typer.testing import CliRunner

from chorus.server.cli import app
from chorus.server.cli._common import ExitCode
from chorus.server.domain.ledger import KEY_FILE
from chorus.server.store import SQLITE_FILE
from chorus.server.verifier import verify
from chorus.v1 import ingest_pb2, ingest_pb2_grpc
from tests._policy import SUITE_TOML

from ._servers import ServerProcess, sqlite_rows
from .conftest import ROSTER, create_token

runner = CliRunner()


_BATCHES: dict[str, ingest_pb2.ReportRequest] = {}


def batch(batch_id: str) -> ingest_pb2.ReportRequest:
    """One ai.tokens unit for every person on the roster; the same contents each time an id is resent."""
    if batch_id in _BATCHES:
        return _BATCHES[batch_id]
    when = Timestamp()
    when.FromDatetime(datetime.now(UTC))
    request = _BATCHES[batch_id] = ingest_pb2.ReportRequest(batch_id=batch_id, source="backup-test", contributions=[
        ingest_pb2.Contribution(user=u, metric="ai.tokens", value=1, event_time=when) for u, _ in ROSTER])
    return request


class Ingest(threading.Thread):
    """Sends batches until stopped; remembers which ones the server acknowledged."""

    def __init__(self, address: str, token: str) -> None:
        super().__init__(daemon=True)
        self.address, self.token = address, token
        self.acked: list[str] = []
        self.stop = threading.Event()
        self.progress = threading.Semaphore(0)

    def run(self) -> None:
        with grpc.insecure_channel(self.address) as channel:
            stub = ingest_pb2_grpc.IngestServiceStub(channel)
            while not self.stop.is_set():
                batch_id = uuid.uuid4().hex
                reply = stub.Report(batch(batch_id), metadata=(("authorization", f"Bearer {self.token}"),),
                                    timeout=30)
                assert reply.accepted == len(ROSTER)
                self.acked.append(batch_id)
                self.progress.release()


@pytest.mark.slow
def test_backup_while_ingesting_restores_into_a_consistent_server(server_process: ServerProcess,
                                                                  tmp_path: Path) -> None:
    token = create_token(server_process.address, server_process.admin_token, "ingest", "tool")
    sender = Ingest(server_process.address, token)
    sender.start()
    for _ in range(20):
        assert sender.progress.acquire(timeout=30)
    acked_before = list(sender.acked)
    out = tmp_path / "chorus-backup.db"
    result = runner.invoke(app, ["backup", "--out", str(out), "--data-dir", str(server_process.data_dir)],
                           env={"COLUMNS": "300"})
    for _ in range(20):  # the server kept ingesting throughout
        assert sender.progress.acquire(timeout=30)
    sender.stop.set()
    sender.join(30)
    assert result.exit_code == 0, result.output
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    (window,) = [w for (w,) in sqlite_rows(server_process.data_dir, "SELECT id FROM windows WHERE state = 'open'")]
    assert f"holds the open window(s) {window} with their keys" in " ".join(result.stderr.split())
    assert "ledger head" in result.stdout
    assert f"back up {server_process.data_dir / KEY_FILE} separately" in " ".join(result.stderr.split())
    assert not out.with_name(out.name + ".partial").exists()

    # The restore procedure (docs/deployment.md): a fresh data directory with the backup as its
    # database and the signing key from the key backup; then start the server on it.
    restored = tmp_path / "restored"
    restored.mkdir(mode=0o700)
    shutil.copy(out, restored / SQLITE_FILE)
    shutil.copy(server_process.data_dir / KEY_FILE, restored / KEY_FILE)
    backed_up = {b for (b,) in sqlite_rows(restored, "SELECT batch_id FROM batches")}
    # A consistent snapshot: every batch acknowledged before the backup started is in it, each
    # batch in it is counted in full, and nothing else is.
    assert set(acked_before) <= backed_up <= set(sender.acked)
    (total,), = sqlite_rows(restored, "SELECT SUM(t0) FROM usage")  # ai.tokens is the first metric
    assert total == len(backed_up) * len(ROSTER)

    server = ServerProcess(restored)
    server.start()
    try:
        with grpc.insecure_channel(server.address) as channel:
            stub = ingest_pb2_grpc.IngestServiceStub(channel)
            metadata = (("authorization", f"Bearer {token}"),)  # tokens are in the database
            resent = stub.Report(batch(acked_before[0]), metadata=metadata, timeout=30)
            assert resent.duplicate  # exactly once across the restore
            lost = next(b for b in sender.acked if b not in backed_up)  # acknowledged after the backup
            assert stub.Report(batch(lost), metadata=metadata, timeout=30).accepted == len(ROSTER)
        admin = ["--server", server.address, "--token-file", str(server_process.data_dir / "admin.token")]
        assert runner.invoke(app, ["window", "list", *admin]).exit_code == 0
        auditor = create_token(server.address, server_process.admin_token, "auditor", "officer")
        ledger, key = tmp_path / "ledger.jsonl", tmp_path / "ledger.pub.pem"
        exported = runner.invoke(app, ["audit", "export", "--out", str(ledger), "--public-key-out", str(key),
                                       "--server", server.address, "--token", auditor])
        assert exported.exit_code == 0, exported.output
        original_key = serialization.load_pem_private_key(
            (server_process.data_dir / KEY_FILE).read_bytes(), password=None).public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        assert key.read_bytes() == original_key
        assert verify.verify_file(ledger, original_key).ok
    finally:
        server.kill()


def test_backup_refuses_postgresql_an_existing_file_and_a_missing_database(tmp_path: Path) -> None:
    pg = runner.invoke(app, ["backup", "--out", str(tmp_path / "b.db"), "--database", "postgresql://db/chorus"])
    assert pg.exit_code == ExitCode.USAGE and "pg_dump" in pg.stderr
    config = tmp_path / "chorus.toml"
    config.write_text(SUITE_TOML.replace('# database = "postgresql://user@host/chorus"',
                                         'database = "postgresql://db/chorus"'))
    by_config = runner.invoke(app, ["backup", "--out", str(tmp_path / "b.db"), "--config", str(config)])
    assert by_config.exit_code == ExitCode.USAGE and "pg_dump" in by_config.stderr
    missing = runner.invoke(app, ["backup", "--out", str(tmp_path / "b.db"), "--data-dir", str(tmp_path / "none")])
    assert missing.exit_code == ExitCode.NOT_FOUND and "no database at" in missing.stderr
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / SQLITE_FILE).touch()
    (tmp_path / "b.db").write_text("keep")
    exists = runner.invoke(app, ["backup", "--out", str(tmp_path / "b.db"), "--data-dir", str(tmp_path / "data")])
    assert exists.exit_code == ExitCode.USAGE and (tmp_path / "b.db").read_text() == "keep"
