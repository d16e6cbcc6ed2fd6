"""`chorus demo`, the README's first command, runs end to end and shows what it promises."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_demo_runs_and_tells_the_story(tmp_path) -> None:
    result = subprocess.run([sys.executable, "-m", "chorus.server.cli", "demo", "--keep", str(tmp_path / "data")],
                            capture_output=True, text=True, timeout=300,
                            env={**os.environ, "COLUMNS": "200", "TERM": "dumb"})
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert "SIGKILL" in out and "1 duplicate (counted once)" in out  # the killed tool counted once
    assert "otel-agent uses only the OpenTelemetry SDK" in out  # a tool reporting over OTLP
    assert "demo-model-large" not in out and "session-" not in out
    for reason in ("UNKNOWN_USER", "UNKNOWN_METRIC", "NEGATIVE_VALUE", "LATE"):
        assert reason in out
    assert "team design has 3 people on the roster; releases need at least 5" in out
    assert "Nothing was charged: every answer was released before, and repeats are identical." in out
    assert "no violation" in out
    # Two orgs; design, below k, is not released alone but counted in product.
    assert "no: below k=5, counted in product" in out and "sum per node" in out
    assert "Charged now: epsilon 0.5 to each of 5 team-window budget(s)" in out
    assert "│ 2026-" in out and "│ design   │ 2        │ 0.5" in out  # its budget charged by product's releases
    # The kept data directory holds no per-person rows and no window key after the demo closed the window.
    conn = sqlite3.connect(tmp_path / "data" / "chorus.db")
    assert conn.execute("SELECT COUNT(*) FROM usage").fetchone() == (0,)
    assert conn.execute("SELECT COUNT(*) FROM window_keys").fetchone() == (0,)
    assert conn.execute("SELECT COUNT(*) FROM otlp_points").fetchone() == (0,)
    for path in (tmp_path / "data").iterdir():  # the OTLP tool's attributes never reached the disk
        assert b"demo-model-large" not in path.read_bytes() and b"session-3" not in path.read_bytes(), path
