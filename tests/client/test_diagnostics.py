"""The SDK's diagnostics against a real server (issue 23): a TLS hint when plaintext meets a TLS
server, the unknown metric named, invalid count() calls counted and explained once per cause,
a token that is not a Chorus token flagged at construction, a spool_dir that is a file, the
debug switch and the on_error callback (whatever it raises stays in the SDK)."""

from __future__ import annotations

import logging
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from chorus.client import Client, ClientError
from chorus.server.model.roles import Role
from chorus.server.root import Chorus
from chorus.server.transport.grpc_server import Server, TlsConfig
from tests._certs import make_certs
from tests._policy import suite_config

pytestmark = pytest.mark.slow


def warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "chorus.client" and r.levelno >= logging.WARNING]


class Running:
    """A real server on 127.0.0.1:0 with one person on the roster and an ingest token."""

    def __init__(self, data_dir: Path) -> None:
        self.chorus = Chorus(suite_config(), data_dir)
        self.chorus.import_roster([("user-team-red-0", "team-red")], actor="test")
        self.ingest_token, _ = self.chorus.tokens.create(Role.INGEST, "tool", self.chorus.clock.now(), "test")
        self.server = Server(self.chorus, "127.0.0.1:0")
        self.server.start()
        self.address = self.server.address


@pytest.fixture
def running(tmp_path: Path) -> Iterator[Running]:
    instance = Running(tmp_path / "data")
    yield instance
    instance.server.stop(grace=1)


def test_plaintext_against_a_tls_server_hints_at_tls(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    certs = make_certs(tmp_path / "certs")
    chorus = Chorus(suite_config(), tmp_path / "data")
    token, _ = chorus.tokens.create(Role.INGEST, "tool", chorus.clock.now(), "test")
    server = Server(chorus, "127.0.0.1:0", tls=TlsConfig((certs / "server.pem").read_bytes(),
                                                         (certs / "server.key").read_bytes()))
    server.start()
    errors: list[ClientError] = []
    try:
        client = Client(server.address, token, on_error=errors.append, timeout=3)  # loopback: plaintext
        client.count("ai.tokens", 1, user="user-team-red-0")
        assert not client.flush(timeout=5)
        client.close(timeout=0.1)
    finally:
        server.stop(grace=0)
    assert any("if the server uses TLS, pass secure=True or root_certificates=" in w for w in warnings(caplog))
    assert errors and errors[0].kind == "retry" and "UNAVAILABLE" in str(errors[0])


def test_the_unknown_metric_is_named(running: Running, caplog: pytest.LogCaptureFixture) -> None:
    errors: list[ClientError] = []
    with Client(running.address, running.ingest_token, on_error=errors.append) as client:
        client.count("ai.no-such-metric", 3, user="user-team-red-0")
        assert client.flush(timeout=10)
        assert client.stats().rejected == {"UNKNOWN_METRIC": 1}
    assert any("UNKNOWN_METRIC (not in the server's policy: ai.no-such-metric)" in w for w in warnings(caplog))
    assert [e.kind for e in errors] == ["reject"]


def test_invalid_counts_are_counted_and_explained_once_per_cause(running: Running,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    with Client(running.address, running.ingest_token) as client:
        for _ in range(3):
            client.count("ai.tokens", -1, user="user-team-red-0")
            client.count("", 1, user="user-team-red-0")
            client.count("ai.tokens", 1)  # no user, no default
        assert client.stats().invalid == 9
    explained = [w for w in warnings(caplog) if w.startswith("count() ignored")]
    assert len(explained) == 3
    assert any("value must be a non-negative int, got int < 0" in w for w in explained)
    assert any("no user: pass user= to count()" in w for w in explained)
    assert "user-team-red-0" not in caplog.text


def test_a_token_that_is_not_a_chorus_token_is_flagged_at_once(caplog: pytest.LogCaptureFixture) -> None:
    Client("127.0.0.1:1", "sk-live-1234").close(timeout=0.1)
    (warning,) = [w for w in warnings(caplog) if "does not look like a Chorus ingest token" in w]
    assert "sk-live-1234" not in caplog.text and "'chorus_'" in warning


def test_a_spool_dir_that_is_a_file_says_so(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "spool").write_text("")
    errors: list[ClientError] = []
    Client("127.0.0.1:1", "chorus_x", spool_dir=tmp_path / "spool", on_error=errors.append).close(timeout=0.1)
    assert any(f"spool_dir {tmp_path / 'spool'} is a file, not a directory" in w for w in warnings(caplog))
    assert [e.kind for e in errors] == ["config"] and "File exists" not in caplog.text


def test_on_error_that_raises_never_reaches_the_host(running: Running, caplog: pytest.LogCaptureFixture) -> None:
    def broken(error: ClientError) -> None:
        raise RuntimeError("host bug")

    with Client(running.address, running.ingest_token, on_error=broken) as client:
        client.count("ai.no-such-metric", 1, user="user-team-red-0")
        assert client.flush(timeout=10)  # the callback raised inside; flush still answers
    assert any("on_error callback raised RuntimeError; the client ignores it" in w for w in warnings(caplog))


def test_debug_logs_to_stderr_when_the_host_set_nothing(running: Running) -> None:
    """A fresh process with no logging configured: debug=True prints the SDK's lines."""
    program = (f"from chorus.client import Client\n"
               f"c = Client({running.address!r}, {running.ingest_token!r}, debug=True)\n"
               "c.count('ai.no-such-metric', 1, user='user-team-red-0'); c.flush(10); c.close()\n")
    quiet = program.replace(", debug=True", "")
    loud = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=60, check=True)
    silent = subprocess.run([sys.executable, "-c", quiet], capture_output=True, text=True, timeout=60, check=True)
    assert "WARNING chorus.client: server rejected 1 contributions: UNKNOWN_METRIC" in loud.stderr
    assert silent.stderr == ""
