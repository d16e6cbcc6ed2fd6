"""The fast lane's rule is enforced (README, Development): outside `@pytest.mark.slow`, starting
a process, a gRPC server or a listening socket raises FastLaneViolation naming the marker."""

from __future__ import annotations

import os
import socket
import subprocess
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from tests.conftest import FastLaneViolation

MARKER = r"must be marked @pytest\.mark\.slow"


def test_a_process_a_grpc_server_or_a_listening_socket_fails_outside_slow() -> None:
    with pytest.raises(FastLaneViolation, match=MARKER):
        subprocess.run(["true"], check=False)
    with pytest.raises(FastLaneViolation, match=MARKER):
        os.fork()
    with pytest.raises(FastLaneViolation, match=MARKER):
        grpc.server(ThreadPoolExecutor(max_workers=1))
    with socket.socket() as sock, pytest.raises(FastLaneViolation, match=MARKER):
        sock.bind(("127.0.0.1", 0))
        sock.listen()


@pytest.mark.slow
def test_a_slow_test_may_start_a_process() -> None:
    assert subprocess.run(["true"], check=False).returncode == 0
