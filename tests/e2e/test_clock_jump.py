"""A clock jump does not close a window (docs/architecture.md, "Windows"): a real `chorus serve`
under libfaketime, its wall clock jumped 3 days ahead (monotonic time left alone, as a stepped
system clock leaves it) while the closer runs every second: the open day stays open, the log
names the clock anomaly, and when the clock comes back the day's real-time contributions are
still counted, none rejected as late."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest

from chorus.server.model.calendar import window_of
from chorus.server.model.roles import Role
from chorus.server.root import Chorus
from chorus.v1 import admin_pb2, admin_pb2_grpc, common_pb2, ingest_pb2_grpc
from tests._policy import SUITE_TOML, suite_config
from tests._roster import ROSTER

from .conftest import report_request

pytestmark = pytest.mark.slow

LIBFAKETIME = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1")
READY = re.compile(r"chorus serving on (\S+)")


def test_a_clock_jump_ahead_closes_no_window(tmp_path: Path) -> None:
    assert LIBFAKETIME.exists(), "libfaketime is installed by .ci/run (Debian package libfaketime)"
    data_dir = tmp_path / "data"
    chorus = Chorus(suite_config(), data_dir)
    try:
        chorus.import_roster(ROSTER, actor="operator")
        ingest = chorus.tokens.create(Role.INGEST, "ingest", chorus.clock.now(), actor="operator")[0]
        admin = chorus.tokens.create(Role.ADMIN, "admin", chorus.clock.now(), actor="operator")[0]
    finally:
        chorus.close()
    config = tmp_path / "config.toml"
    config.write_text(SUITE_TOML.replace('listen = "127.0.0.1:7355"', 'listen = "127.0.0.1:7355"\n'
                                         "close_interval_seconds = 1"))
    offset = tmp_path / "faketime"
    offset.write_text("+0\n")
    log = tmp_path / "serve.log"
    env = {**os.environ, "LD_PRELOAD": str(LIBFAKETIME), "FAKETIME_TIMESTAMP_FILE": str(offset),
           "FAKETIME_NO_CACHE": "1", "FAKETIME_DONT_FAKE_MONOTONIC": "1", "COLUMNS": "400"}
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "chorus.server.cli", "serve", "--data-dir", str(data_dir),
                                 "--config", str(config), "--listen", "127.0.0.1:0"],
                                stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 60
        while not (ready := READY.search(log.read_text(errors="replace"))):
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text(errors="replace")
            time.sleep(0.05)
        today = window_of(chorus.clock.now(), suite_config().policy.window_length).id
        with grpc.insecure_channel(ready[1]) as channel:
            report = ingest_pb2_grpc.IngestServiceStub(channel).Report
            as_ingest = (("authorization", f"Bearer {ingest}"),)

            def send(n: int) -> int:
                return sum(report(report_request(), metadata=as_ingest, timeout=10).accepted for _ in range(n))

            def state() -> int:
                windows = admin_pb2_grpc.AdminServiceStub(channel).ListWindows(
                    admin_pb2.AdminServiceListWindowsRequest(), metadata=(("authorization", f"Bearer {admin}"),),
                    timeout=10).windows
                return {w.id: w.state for w in windows}[today]  # type: ignore[no-any-return]

            assert send(3) == 3
            offset.write_text("+3d\n")  # the server's wall clock jumps 3 days ahead, past the grace
            deadline = time.monotonic() + 30
            while "clock anomaly" not in log.read_text(errors="replace"):
                assert time.monotonic() < deadline, log.read_text(errors="replace")
                time.sleep(0.2)
            time.sleep(3)  # three closer passes with the clock ahead
            assert state() == common_pb2.WINDOW_STATE_OPEN
            offset.write_text("+0\n")  # the clock comes back
            time.sleep(1.5)
            assert send(5) == 5  # today's real-time contributions still count
            assert state() == common_pb2.WINDOW_STATE_OPEN
        text = log.read_text(errors="replace")
        assert re.search(r"clock anomaly: the wall clock is \d+ s ahead of monotonic time", text), text
        assert "closed window" not in text
    finally:
        proc.kill()
        proc.wait(10)
        print(log.read_text(errors="replace"))
