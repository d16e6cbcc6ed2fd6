"""The vendor AI CLIs as shipped (npm, pinned in .ci/run) against a real `chorus serve` started
with `chorus default-config --otlp` unchanged, and a local stand-in for each model API.

`.ci/run` installs the CLIs into `.ci/tools/ai`; the tests fail (never skip) without them.
Each run gets its own HOME, so a tool's settings, caches and ids are the run's only.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest

from chorus.server.model.calendar import WindowLength, window_of
from chorus.v1 import admin_pb2, admin_pb2_grpc
from tests._roster import ROSTER, import_roster
from tests._usage import person_totals
from tests.e2e._servers import sqlite_rows

REPO = Path(__file__).resolve().parents[2]
BIN = REPO / ".ci" / "tools" / "ai" / "node_modules" / ".bin"
#: The versions .ci/run installs and docs/otlp.md states.
VERSIONS = {"claude": "2.1.197", "gemini": "0.61.0", "codex": "0.171.0"}
PERSON = ROSTER[0][0]
_OTLP_HTTP = re.compile(r"OTLP/HTTP on http://(\S+)/v1/metrics")
_READY = re.compile(r"chorus serving on (\S+)")


def tool(name: str) -> str:
    path = BIN / name
    if not path.exists():
        pytest.fail(f"{path} is missing: run `bash .ci/run` (it installs the pinned AI CLIs)")
    return str(path)


@dataclass
class Chorus:
    """`chorus serve` as deployed: a child process with the shipped OTLP presets."""

    root: Path
    proc: subprocess.Popen[str] | None = None
    grpc_address: str = ""
    http_address: str = ""
    log: list[str] = field(default_factory=list)

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    def start(self) -> None:
        config = self.root / "chorus.toml"
        config.write_text(subprocess.run([sys.executable, "-m", "chorus.server.cli", "default-config", "--otlp"],
                                         capture_output=True, text=True, check=True).stdout)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "chorus.server.cli", "serve", "--data-dir", str(self.data_dir), "--config",
             str(config), "--listen", "127.0.0.1:0", "--otlp-http-listen", "127.0.0.1:0"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, "COLUMNS": "300"})
        assert self.proc.stdout is not None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not self.grpc_address:
            line = self.proc.stdout.readline()
            if not line:
                break
            self.log.append(line)
            if m := _OTLP_HTTP.search(line):
                self.http_address = m[1]
            if m := _READY.search(line):
                self.grpc_address = m[1]
        assert self.grpc_address and self.http_address, "".join(self.log)
        admin = (self.data_dir / "admin.token").read_text().strip()
        import_roster(self.grpc_address, admin)
        with grpc.insecure_channel(self.grpc_address) as channel:
            self.ingest_token = admin_pb2_grpc.AdminServiceStub(channel).CreateToken(
                admin_pb2.CreateTokenRequest(name="ai-tools", role=admin_pb2.ROLE_INGEST),
                metadata=(("authorization", f"Bearer {admin}"),), timeout=30).token

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()

    def totals(self) -> dict[str, int]:
        """The person's totals by metric in the open window."""
        window = window_of(datetime.now(UTC), WindowLength.WEEK).id  # the shipped config's windows
        return {metric: v for (_, metric), v in person_totals(
            lambda sql, params: sqlite_rows(self.data_dir, sql, tuple(params)), window, [PERSON]).items()}

    def disk_holds(self, needles: dict[str, str]) -> list[str]:
        """Which of `needles` appear anywhere in the data directory's files."""
        found = []
        for path in sorted(self.data_dir.rglob("*")):
            if path.is_file():
                blob = path.read_bytes()
                found += [f"{name} in {path.name}" for name, needle in needles.items() if needle.encode() in blob]
        return found


@pytest.fixture
def chorus_server(tmp_path: Path) -> Iterator[Chorus]:
    server = Chorus(tmp_path)
    server.start()
    yield server
    server.stop()


def run_tool(argv: list[str], home: Path, cwd: Path, env: dict[str, str],
             timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """A vendor CLI in a clean environment of its own (HOME, working directory, no inherited OTEL_*)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "ANTHROPIC_", "GEMINI_", "GOOGLE_",
                                                                      "OPENAI_", "CODEX_", "CLAUDE_"))}
    return subprocess.run(argv, cwd=cwd, env={**base, "HOME": str(home), **env}, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


EXPORT_ERROR = re.compile(r"(export|otlp|telemetry)[^\n]*(fail|error|refused|denied|unavailable)", re.I)


def export_errors(done: subprocess.CompletedProcess[str]) -> list[str]:
    """Lines of the tool's output reporting an OpenTelemetry export failure."""
    return [line for line in (done.stdout + done.stderr).splitlines() if EXPORT_ERROR.search(line)]
