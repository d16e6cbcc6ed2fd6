"""Real Chorus servers for end-to-end tests: in-process on port 0, or as a child process."""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests._policy import suite_config_file

READY = re.compile(r"chorus serving on (\S+)")


@dataclass
class ServerProcess:
    """`chorus serve` in a child process, so it can be killed like a real deployment."""

    data_dir: Path
    args: tuple[str, ...] = ()
    proc: subprocess.Popen[str] | None = None
    address: str = ""
    #: What the server printed up to its ready line.
    startup: list[str] = field(default_factory=list)

    def start(self, timeout: float = 30.0) -> str:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "chorus.server.cli", "serve", "--data-dir", str(self.data_dir),
             "--config", str(suite_config_file(self.data_dir.parent)), "--listen", "127.0.0.1:0", *self.args],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env={**os.environ, "COLUMNS": "200"})
        deadline = time.monotonic() + timeout
        assert self.proc.stdout is not None
        seen = self.startup
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            seen.append(line)
            if m := READY.search(line):
                self.address = m[1]
                return self.address
        self.kill()
        raise RuntimeError("server did not start:\n" + "".join(seen))

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def terminate(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(30)

    @property
    def admin_token(self) -> str:
        return (self.data_dir / "admin.token").read_text().strip()


def sqlite_rows(data_dir: Path, sql: str, params: tuple = ()) -> list[tuple]:
    """Read the server's SQLite file directly (what an operator with disk access sees)."""
    conn = sqlite3.connect(data_dir / "chorus.db")
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()
