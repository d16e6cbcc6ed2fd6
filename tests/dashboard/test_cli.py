"""`chorus dashboard` as a user runs it: a separate process in front of a running Chorus server."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator

import pytest

from chorus.server.model.roles import Role

from .conftest import Stack

pytestmark = pytest.mark.slow
READY = re.compile(r"chorus dashboard on (http://127\.0\.0\.1:\d+) reading Chorus at (\S+) \(plaintext\)")


def command(*args: str) -> list[str]:
    return [sys.executable, "-m", "chorus.server.cli", "dashboard", *args]


@pytest.fixture
def process(stack: Stack) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen(command("--server", stack.server.address, "--listen", "127.0.0.1:0"),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    yield proc
    if proc.poll() is None:
        proc.kill()
        proc.wait(timeout=10)


def test_the_command_serves_the_dashboard_and_stops_cleanly_on_sigterm(
        process: subprocess.Popen[str], stack: Stack) -> None:
    assert process.stdout is not None
    line = process.stdout.readline()
    ready = READY.search(line)
    assert ready, line
    assert ready[2] == stack.server.address
    with urllib.request.urlopen(ready[1] + "/login", timeout=10) as response:
        page = response.read().decode()
        assert response.status == 200
        assert "Content-Security-Policy" in response.headers
    assert 'name="token"' in page and re.search(r'name="csrf" value="[^"]+"', page)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=15) == 0


def test_plain_http_beyond_loopback_is_refused(stack: Stack) -> None:
    result = subprocess.run(command("--server", stack.server.address, "--listen", "0.0.0.0:0"),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "refusing plain HTTP on non-loopback address 0.0.0.0:0" in result.stderr
    assert stack.tokens[Role.ANALYST] not in result.stdout + result.stderr


def test_the_dashboard_refuses_to_start_without_its_chorus_server() -> None:
    import socket

    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{probe.getsockname()[1]}"
    result = subprocess.run(command("--server", address, "--listen", "127.0.0.1:0", "--connect-timeout", "1"),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 9  # ExitCode.UNAVAILABLE
    assert f"the Chorus server at {address} is not reachable" in " ".join(result.stderr.split())
    assert "start `chorus serve` first" in " ".join(result.stderr.split())
