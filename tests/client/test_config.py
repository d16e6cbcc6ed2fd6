"""Configuration: environment fallbacks, TLS choice, and the no-op client on bad config."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import grpc
import pytest

from chorus.client import Client, TransportError
from chorus.client._config import is_loopback
from chorus.client._transport import GrpcTransport
from tests._secrets import register

from .conftest import FakeTransport, flush_threads

TOKEN = "chorus_tok-3f9a-secret"
register(TOKEN, "arg-token", "env-token")  # the session's log guard must never find them


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("CHORUS_ENDPOINT", "CHORUS_TOKEN", "CHORUS_USER", "CHORUS_SPOOL_DIR", "CHORUS_CA_FILE"):
        monkeypatch.delenv(name, raising=False)


def _warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "chorus.client" and r.levelno >= logging.WARNING]


@pytest.mark.parametrize(
    "kwargs",
    [
        {},  # no endpoint, no token
        {"endpoint": "chorus.example.com:443"},  # no token
        {"token": TOKEN},  # no endpoint
        {"endpoint": "localhost:1", "token": "two words\n"},
        {"endpoint": "localhost:1", "token": TOKEN, "flush_interval": -1},
        {"endpoint": "localhost:1", "token": TOKEN, "flush_interval": float("nan")},
        {"endpoint": "localhost:1", "token": TOKEN, "max_pending": 0},
        {"endpoint": "localhost:1", "token": TOKEN, "max_pending": 1.5},
        {"endpoint": "localhost:1", "token": TOKEN, "timeout": "10"},
        {"endpoint": "localhost:1", "token": TOKEN, "user": ""},
        {"endpoint": "localhost:1", "token": TOKEN, "source": ""},
        {"endpoint": "localhost:1", "token": TOKEN, "source": "s" * 257},
        {"endpoint": "localhost:1", "token": TOKEN, "spool_dir": 42},
        {"endpoint": "localhost:1", "token": TOKEN, "client_certificate": b"cert"},
        {"endpoint": "localhost:1", "token": TOKEN, "root_certificates": b"ca", "secure": False},
        {"endpoint": "localhost:1", "token": TOKEN, "root_certificates": "/nonexistent/ca.pem"},
        {"endpoint": "localhost:1", "token": TOKEN, "root_certificates": 3.14},
        {"endpoint": "localhost:1", "token": TOKEN, "clock": object()},
    ],
)
def test_bad_config_gives_a_no_op_client_and_one_warning(
    caplog: pytest.LogCaptureFixture, kwargs: dict[str, Any]
) -> None:
    threads = flush_threads()
    with caplog.at_level(logging.DEBUG, logger="chorus.client"):
        client = Client(**kwargs)
        client.count("ai.tokens", 1, user="user-alice")
        client.count("ai.tokens", -1, user="user-alice")
        assert client.flush(timeout=1)
        client.close()
    (warning,) = _warnings(caplog)
    assert "disabled" in warning.getMessage()
    assert TOKEN not in caplog.text and "user-alice" not in caplog.text
    assert flush_threads() <= threads  # none started
    stats = client.stats()
    assert (stats.dropped, stats.invalid, stats.sent_batches) == (1, 1, 0)


def test_environment_configures_the_grpc_transport(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("CHORUS_ENDPOINT", "127.0.0.1:50051")
    monkeypatch.setenv("CHORUS_TOKEN", TOKEN)
    monkeypatch.setenv("CHORUS_USER", "user-alice")
    client = Client()
    transport = client._transport
    assert isinstance(transport, GrpcTransport)
    assert transport._target == "127.0.0.1:50051"
    assert transport._credentials is None  # loopback: plaintext
    assert transport._metadata == (("authorization", f"Bearer {TOKEN}"),)
    assert client._settings is not None and client._settings.user == "user-alice"
    assert _warnings(caplog) == []
    client.close(timeout=0)


def test_arguments_win_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHORUS_ENDPOINT", "127.0.0.1:1")
    monkeypatch.setenv("CHORUS_TOKEN", "env-token")
    client = Client("127.0.0.1:2", "arg-token")
    transport = client._transport
    assert isinstance(transport, GrpcTransport)
    assert transport._target == "127.0.0.1:2"
    assert transport._metadata == (("authorization", "Bearer arg-token"),)
    client.close(timeout=0)


def test_remote_endpoints_use_tls_by_default() -> None:
    client = Client("chorus.example.com:443", TOKEN)
    assert isinstance(client._transport, GrpcTransport) and client._transport._credentials is not None
    client.close(timeout=0)


def test_a_ca_file_turns_tls_on_even_for_loopback(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_bytes(b"-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n")
    monkeypatch.setenv("CHORUS_CA_FILE", str(ca))
    client = Client("localhost:50051", TOKEN)
    assert isinstance(client._transport, GrpcTransport) and client._transport._credentials is not None
    client.close(timeout=0)


def test_mutual_tls_accepts_paths_and_bytes(tmp_path: Path) -> None:
    key = tmp_path / "client.key"
    key.write_bytes(b"key")
    client = Client("localhost:1", TOKEN, root_certificates=b"ca", client_certificate=b"cert", client_key=key)
    assert isinstance(client._transport, GrpcTransport) and client._transport._credentials is not None
    client.close(timeout=0)


def test_secure_false_allows_plaintext_to_a_remote_host() -> None:
    client = Client("chorus.internal:50051", TOKEN, secure=False)
    assert isinstance(client._transport, GrpcTransport) and client._transport._credentials is None
    client.close(timeout=0)


def test_a_transport_needs_no_endpoint_nor_token(caplog: pytest.LogCaptureFixture) -> None:
    transport = FakeTransport()
    client = Client(transport=transport, user="user-alice")
    client.count("ai.tokens")
    assert client.flush(timeout=5)
    assert _warnings(caplog) == [] and len(transport.requests) == 1
    client.close(timeout=0)


@pytest.mark.parametrize(
    ("target", "loopback"),
    [
        ("localhost:50051", True),
        ("LOCALHOST:50051", True),
        ("127.0.0.1:50051", True),
        ("127.8.9.10:1", True),
        ("[::1]:50051", True),
        ("::1", True),
        ("ipv4:127.0.0.1:50051", True),
        ("ipv6:[::1]:50051", True),
        ("dns:///localhost:50051", True),
        ("unix:/run/chorus.sock", True),
        ("chorus.example.com:443", False),
        ("10.0.0.5:50051", False),
        ("[2001:db8::1]:443", False),
        ("dns:///chorus.example.com", False),
        ("localhost.evil.com:443", False),
    ],
)
def test_loopback_detection(target: str, loopback: bool) -> None:
    assert is_loopback(target) is loopback


@pytest.fixture
def home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A fake home directory, and a separate working directory where no `~` may appear."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("USERPROFILE", str(home))  # Path.expanduser on Windows
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    return home


@pytest.mark.parametrize("spool_dir", ["~/.cache/my-ai-tool/chorus", Path("~/.cache/my-ai-tool/chorus")])
def test_a_spool_dir_under_home_is_expanded(home: Path, spool_dir: str | Path) -> None:
    transport = FakeTransport(default=TransportError(grpc.StatusCode.UNAVAILABLE))
    client = Client(transport=transport, user="user-alice", spool_dir=spool_dir)
    client.count("ai.tokens")
    client.close(timeout=0)
    assert len(list((home / ".cache" / "my-ai-tool" / "chorus").glob("*.pb"))) == 1
    assert not (Path.cwd() / "~").exists()


def test_the_spool_dir_environment_value_is_expanded(monkeypatch: pytest.MonkeyPatch, home: Path) -> None:
    monkeypatch.setenv("CHORUS_SPOOL_DIR", "~/spool")
    client = Client(transport=FakeTransport(), user="user-alice")
    assert client._settings.spool_dir == home / "spool"
    client.close(timeout=0)
    assert not (Path.cwd() / "~").exists()


def test_certificate_paths_under_home_are_expanded(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, home: Path
) -> None:
    for name in ("ca.pem", "client.pem", "client.key"):
        (home / name).write_bytes(b"-----BEGIN X-----\n-----END X-----\n")
    client = Client(
        "localhost:1", TOKEN, root_certificates="~/ca.pem",
        client_certificate=Path("~/client.pem"), client_key="~/client.key",
    )
    assert isinstance(client._transport, GrpcTransport) and client._transport._credentials is not None
    client.close(timeout=0)
    monkeypatch.setenv("CHORUS_CA_FILE", "~/ca.pem")
    client = Client("localhost:1", TOKEN)
    assert isinstance(client._transport, GrpcTransport) and client._transport._credentials is not None
    client.close(timeout=0)
    assert _warnings(caplog) == []


def test_an_unreadable_certificate_under_home_still_disables_the_client(
    caplog: pytest.LogCaptureFixture, home: Path
) -> None:
    client = Client("localhost:1", TOKEN, root_certificates="~/missing.pem")
    (warning,) = _warnings(caplog)
    assert "disabled" in warning.getMessage() and "root_certificates" in warning.getMessage()
    client.close(timeout=0)
