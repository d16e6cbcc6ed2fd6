"""The SDK must embed anywhere: it imports only grpc, protobuf, the stubs and the stdlib."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

#: Every test here starts a server, a process or a browser (tests/conftest.py, the fast lane).
pytestmark = pytest.mark.slow

_PROBE = """
import json, sys
import grpc, google.protobuf.message  # the allowed dependencies, with whatever they import
before = set(sys.modules)
import chorus.client
new = sorted(set(sys.modules) - before)
print(json.dumps(new))
"""


def test_importing_the_sdk_pulls_in_nothing_beyond_grpc_protobuf_and_the_stdlib() -> None:
    out = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, check=True).stdout
    new_modules = json.loads(out)
    foreign = [
        name for name in new_modules
        if name.split(".")[0] not in sys.stdlib_module_names
        and name not in ("chorus", "google")
        # google._upb is protobuf's own C implementation.
        and not name.startswith(("chorus.client", "chorus.v1", "google.protobuf", "google._upb", "grpc."))
    ]
    assert foreign == []
    assert "chorus.v1.ingest_pb2" in new_modules
