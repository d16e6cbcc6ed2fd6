"""`chorus demo`, the README's first command, runs end to end and shows what it promises."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys

import pytest

#: Every test here starts a server, a process or a browser (tests/conftest.py, the fast lane).
pytestmark = pytest.mark.slow


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
    story = " ".join(out.split())
    ratio = "ratio of ai.suggestions_accepted over ai.suggestions_accepted + ai.suggestions_rejected"
    assert ("Right after closing, the server released the window's release plan, once: adoption, sum of ai.tokens, "
            f"{ratio}, histogram of ai.tokens, histogram of ai.suggestions_accepted, histogram of "
            f"ai.suggestions_rejected for the company; adoption, sum of ai.tokens, {ratio} for every org; adoption "
            "for every team of at least k people") in story
    # A discrete-Gaussian window names its amounts in rho, never in epsilon.
    assert "(rho 0.01 per team)" in story and "(epsilon " not in story
    assert "Nothing was charged: reading released numbers is free, and repeats are identical." in out
    # leadership's report reads what the plan released; only the org report (step 10) spends
    assert "Charged now" not in out.split("10. The same window by org")[0]
    assert "no violation" in out
    # Two orgs; design, below k, is not released alone but counted in product.
    assert "no: below k=5, counted in product" in out and "sum per node" in out
    assert "Charged now" not in out  # the org numbers were in the plan: --release finds them released
    assert "│ 2026-" in out and "│ design   │ 11       │ 0.098" in out  # charged by product's and the company's
    # The kept data directory holds no per-person rows and no window key after the demo closed the window.
    conn = sqlite3.connect(tmp_path / "data" / "chorus.db")
    assert conn.execute("SELECT COUNT(*) FROM usage").fetchone() == (0,)
    assert conn.execute("SELECT COUNT(*) FROM window_keys").fetchone() == (0,)
    assert conn.execute("SELECT COUNT(*) FROM otlp_points").fetchone() == (0,)
    for path in (tmp_path / "data").iterdir():  # the OTLP tool's attributes never reached the disk
        assert b"demo-model-large" not in path.read_bytes() and b"session-3" not in path.read_bytes(), path


def test_after_the_demo_the_dashboard_landing_page_shows_the_plan_and_spends_nothing(tmp_path) -> None:
    from chorus.server.dashboard import Gateway, create_app
    from chorus.server.model import config
    from chorus.server.root import Chorus
    from chorus.server.transport.grpc_server import Server
    from tests._dashboard import login

    data = tmp_path / "data"
    (tmp_path / "ledger.jsonl").write_text("mine")  # the demo writes nothing beside its directory
    for _ in range(2):  # a second run replaces the first one's directory
        result = subprocess.run([sys.executable, "-m", "chorus.server.cli", "demo", "--keep", str(data)],
                                capture_output=True, text=True, timeout=300,
                                env={**os.environ, "COLUMNS": "200", "TERM": "dumb"})
        assert result.returncode == 0, result.stdout + result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "ledger.jsonl"]
    assert (tmp_path / "ledger.jsonl").read_text() == "mine"
    assert f"signed in with the analyst token in {data / 'analyst.token'}" in " ".join(result.stdout.split())
    token = (data / "analyst.token").read_text().strip()  # README: sign in with it
    assert (data / "analyst.token").stat().st_mode & 0o077 == 0
    chorus = Chorus(config.load(None), data)
    server = Server(chorus, "127.0.0.1:0")
    server.start()
    gateway = Gateway(server.address)
    try:
        conn = sqlite3.connect(data / "chorus.db")
        spent = conn.execute("SELECT window_id, team, spent_micros FROM budgets ORDER BY 1, 2").fetchall()
        entries = conn.execute("SELECT COUNT(*) FROM ledger WHERE kind = 'release'").fetchone()
        (window,), = conn.execute("SELECT id FROM windows WHERE state = 'closed'").fetchall()
        # the plan: company 0.054 + org 0.044 + team 0.03 for every team of at least k; design,
        # below k, only its org's and the company's; the teams the demo asks one more question about, 0.01 more
        assert {s for _, _, s in spent} == {98_000, 128_000, 138_000}
        client = create_app(gateway).test_client()
        login(client, token)
        page = client.get("/overview")
        body = page.get_data(as_text=True)
        assert page.status_code == 200
        assert f"Overview: window {window}" in body and "Company adoption" in body
        assert "Adoption per team" in body  # the plan's team entry (ai.requests is planned no more)
        assert "Company total of ai.tokens" in body
        conn = sqlite3.connect(data / "chorus.db")
        assert conn.execute("SELECT window_id, team, spent_micros FROM budgets ORDER BY 1, 2").fetchall() == spent
        assert conn.execute("SELECT COUNT(*) FROM ledger WHERE kind = 'release'").fetchone() == entries
    finally:
        gateway.close()
        server.stop(grace=0)


def test_demo_keep_refuses_a_directory_that_is_not_an_earlier_demo(tmp_path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "chorus.db").write_text("someone's data")
    result = subprocess.run([sys.executable, "-m", "chorus.server.cli", "demo", "--keep", str(tmp_path / "data")],
                            capture_output=True, text=True, timeout=60, env={**os.environ, "COLUMNS": "300"})
    assert result.returncode == 2
    assert result.stderr.startswith(f"error: --keep {tmp_path / 'data'} is not empty and holds no earlier demo")
    assert (tmp_path / "data" / "chorus.db").read_text() == "someone's data"
