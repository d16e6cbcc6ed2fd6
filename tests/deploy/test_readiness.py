"""`Type=notify`: a real `chorus serve` sends READY=1 to $NOTIFY_SOCKET (a real unix datagram
socket here, as systemd's) once its port answers and its store is ready; under --workers the
parent alone sends it, after every worker serves. Configured through environment variables
alone (docs/deployment.md, "Settings")."""

from __future__ import annotations

import json
import os
import re
import socket
import struct
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

pytestmark = pytest.mark.slow  # real `chorus serve` processes


def receive(sock: socket.socket) -> tuple[str, int]:
    """One datagram and the pid of its sender (SCM_CREDENTIALS)."""
    ucred = struct.calcsize("3i")
    data, ancillary, _, _ = sock.recvmsg(4096, socket.CMSG_SPACE(ucred))
    pid = next(struct.unpack("3i", payload)[0] for level, kind, payload in ancillary
               if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS)
    return data.decode(), pid


@pytest.mark.parametrize("count", [1, 2])
def test_ready_is_notified_when_the_port_answers(tmp_path: Path, count: int) -> None:
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        sock.settimeout(120)
        env = {**os.environ, "NOTIFY_SOCKET": str(path), "CHORUS_DATA_DIR": str(tmp_path / "data"),
               "CHORUS_LISTEN": "127.0.0.1:0", "CHORUS_LOG_FORMAT": "json", "CHORUS_WORKERS": str(count),
               "CHORUS_METRICS_LISTEN": "127.0.0.1:0", "COLUMNS": "400"}
        proc = subprocess.Popen([sys.executable, "-m", "chorus.server.cli", "serve"], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            state, sender = receive(sock)
            assert sender == proc.pid  # the main process, as NotifyAccess=main wants
            assert state.startswith("READY=1\nSTATUS=serving on 127.0.0.1:")
            address = re.search(r"serving on (127\.0\.0\.1:\d+)", state)[1]  # type: ignore[index]
            with grpc.insecure_channel(address) as channel:  # answers at once: bound and ready
                reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
            sock.settimeout(1)
            with pytest.raises(TimeoutError):  # no worker sends a second one
                receive(sock)
        finally:
            proc.terminate()
            out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, out + err
    assert (tmp_path / "data" / "admin.token").exists()  # CHORUS_DATA_DIR
    records = [json.loads(line) for line in err.splitlines() if line.strip()]  # CHORUS_LOG_FORMAT=json
    assert out == ""  # every line, the announcements included, is a log record
    assert any("metrics on http://127.0.0.1:" in r["message"] for r in records)  # CHORUS_METRICS_LISTEN
    assert any(r["message"].startswith("window closer started") for r in records)


def test_without_notify_socket_nothing_is_sent(monkeypatch: pytest.MonkeyPatch) -> None:
    from chorus.server.transport import readiness

    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert readiness.notify("READY=1") is False


def test_an_abstract_notify_socket_is_used(monkeypatch: pytest.MonkeyPatch) -> None:
    from chorus.server.transport import readiness

    name = f"chorus-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert readiness.notify("READY=1") is True
        assert sock.recv(64) == b"READY=1"
