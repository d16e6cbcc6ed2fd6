"""Sharp edges a newcomer or an operator hits (issue 23), each through the real CLI process:
a data directory that is a file or read-only, JSON logs that are JSON on every line, a
malformed listen address, the same exit code for a busy port from serve and dashboard."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from chorus.server.cli._common import ExitCode

from .conftest import Running

pytestmark = pytest.mark.slow

ENV = {**os.environ, "COLUMNS": "400"}


def chorus(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "chorus.server.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=ENV, check=False)


@contextmanager
def read_only(directory: Path) -> Iterator[Path]:
    """A directory nobody may write, root included: immutable for root (chattr +i), 0555 otherwise."""
    directory.mkdir()
    if os.geteuid() == 0:
        subprocess.run(["chattr", "+i", str(directory)], check=True)
    else:
        directory.chmod(0o555)
    try:
        yield directory
    finally:
        if os.geteuid() == 0:
            subprocess.run(["chattr", "-i", str(directory)], check=True)
        directory.chmod(0o755)


def test_a_data_dir_that_is_a_file_is_one_clear_line(tmp_path: Path) -> None:
    (tmp_path / "data").write_text("not a directory")
    run = chorus("serve", "--data-dir", str(tmp_path / "data"), "--listen", "127.0.0.1:0")
    assert run.returncode == ExitCode.USAGE
    assert run.stderr.startswith(f"error: --data-dir {tmp_path / 'data'} is a file, not a directory")
    assert "Traceback" not in run.stderr and len(run.stderr.splitlines()) == 1


@pytest.mark.parametrize("inside", ["", "sub"])
def test_a_read_only_data_dir_is_one_clear_line(tmp_path: Path, inside: str) -> None:
    with read_only(tmp_path / "ro") as directory:
        data = directory / inside if inside else directory
        run = chorus("serve", "--data-dir", str(data), "--listen", "127.0.0.1:0")
    assert run.returncode == ExitCode.USAGE
    assert run.stderr.startswith(f"error: cannot use the data directory {data} (")
    assert "it must be a directory this user can write" in run.stderr
    assert "Traceback" not in run.stderr and len(run.stderr.splitlines()) == 1


def test_json_logs_are_json_on_every_line_of_both_streams(tmp_path: Path) -> None:
    """`--log-format json`: the ready line, the first start's token line and a refusal are log
    records too, so `journalctl ... | jq .` reads everything the server writes."""
    proc = subprocess.Popen([sys.executable, "-m", "chorus.server.cli", "serve", "--data-dir", str(tmp_path / "d"),
                             "--listen", "127.0.0.1:0", "--log-format", "json", "--log-level", "WARNING",
                             "--metrics-listen", "127.0.0.1:0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    assert proc.stderr is not None
    seen = []
    while not any("chorus serving on" in r["message"] for r in seen):
        line = proc.stderr.readline()
        assert line, "server exited before its ready line"
        seen.append(json.loads(line))
    proc.terminate()
    out, err = proc.communicate(timeout=30)
    records = seen + [json.loads(line) for line in err.splitlines()]  # any other line fails here
    assert out == ""
    messages = [r["message"] for r in records]
    assert any(m.startswith("First start: an admin token was written to") for m in messages)
    assert any(re.match(r"metrics on http://127\.0\.0\.1:\d+/metrics", m) for m in messages)
    assert all({"time", "level", "logger", "message"} <= set(r) for r in records)
    refused = chorus("serve", "--data-dir", str(tmp_path / "d"), "--log-format", "json", "--tls-cert", "x.pem")
    assert refused.returncode == ExitCode.USAGE and refused.stdout == ""
    (record,) = [json.loads(line) for line in refused.stderr.splitlines()]
    assert record["level"] == "ERROR" and record["message"] == "error: --tls-cert and --tls-key go together"


@pytest.mark.parametrize(("flag", "value"), [("--listen", "nonsense"), ("--listen", "127.0.0.1:99999"),
                                             ("--otlp-http-listen", "localhost")])
def test_a_malformed_listen_address_is_named_as_such(tmp_path: Path, flag: str, value: str) -> None:
    args = ["serve", "--data-dir", str(tmp_path / "d"), flag, value]
    run = chorus(*args) if flag == "--listen" else chorus(*args, "--listen", "127.0.0.1:0")
    assert run.returncode == ExitCode.USAGE
    assert run.stderr.startswith(f"error: {flag} {value!r} is not a listen address: expected HOST:PORT")
    assert "plaintext" not in run.stderr and not (tmp_path / "d").exists()


def test_a_busy_port_exits_the_same_from_serve_and_dashboard(tmp_path: Path, running: Running) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = f"127.0.0.1:{taken.getsockname()[1]}"
        served = chorus("serve", "--data-dir", str(tmp_path / "d"), "--listen", busy)
        dashboard = chorus("dashboard", "--server", running.address, "--listen", busy)
    assert served.returncode == dashboard.returncode == ExitCode.UNAVAILABLE == 9
    for run in (served, dashboard):
        assert f"error: cannot listen on {busy}: " in run.stderr, run.stderr


@pytest.mark.parametrize(("toml", "expected"), [
    ('[privacy]\nlisten = "127.0.0.1:1"\n', "did you mean server.listen? It belongs in [server]"),
    ('[[privacy.release_plan]]\nstatistic = "sum"\n', "no [[metrics]] defined"),
])
def test_config_check_prints_section_names_in_brackets(tmp_path: Path, toml: str, expected: str) -> None:
    (tmp_path / "c.toml").write_text(toml)
    run = chorus("config", "check", str(tmp_path / "c.toml"))
    assert run.returncode == ExitCode.USAGE
    assert expected in run.stderr


def test_a_token_name_in_brackets_is_printed_as_given(running: Running, tmp_path: Path) -> None:
    (tmp_path / "admin.token").write_text(running.admin_token)
    run = chorus("token", "create", "--role", "ingest", "--name", "[bold]tool[/]", "--server", running.address,
                 "--token-file", str(tmp_path / "admin.token"), "--out", str(tmp_path / "t.token"))
    assert run.returncode == 0, run.stderr
    assert "token '[bold]tool[/]' (ingest) written to" in run.stdout


def test_roster_import_detects_a_semicolon_and_says_what_it_read(running: Running, tmp_path: Path) -> None:
    (tmp_path / "admin.token").write_text(running.admin_token)
    (tmp_path / "r.csv").write_text("User;Team;Org\nuser-semi-0;team-semi;\nuser-semi-1;team-semi;\n")
    common = ("--server", running.address, "--token-file", str(tmp_path / "admin.token"), "--dry-run")
    detected = chorus("roster", "import", str(tmp_path / "r.csv"), *common)
    assert detected.returncode == 0, detected.stderr
    assert "columns separated by ';' (detected; --delimiter sets it)" in detected.stderr
    assert "2 people added" in detected.stdout
    forced = chorus("roster", "import", str(tmp_path / "r.csv"), "--delimiter", ",", *common)
    assert forced.returncode == ExitCode.USAGE
    assert ("has no column named 'user', 'team' (read with delimiter ',', it has 1 column(s): is the "
            "delimiter another? pass --delimiter") in forced.stderr
    assert "user-semi" not in forced.stderr  # the row is never echoed
