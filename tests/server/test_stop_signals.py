"""SIGTERM stops `chorus serve` wherever it lands (issue 22: twice in ~1,500 starts a server never
exited on SIGTERM). The cause was a `threading.Event` set from the signal handler: a signal
landing while the main thread held the event's lock inside `wait` deadlocked the handler.
transport/signals.py says why `StopEvent` cannot; the first test lands the signal on each line
the waiting thread runs, which a `threading.Event` fails (lines 5 to 18 of its wait)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

#: One process: for k = 1, 2, ..., the k-th traced event of the waiting main thread sends SIGTERM
#: (or, once the wait blocks before k events, a thread sends it a moment later).
_EVERY_LINE = """
import os, signal, sys, threading, time
from chorus.server.transport.signals import StopEvent, stop_on_signals

for k in range(1, {rounds} + 1):
    stop = StopEvent()
    stop_on_signals(stop)
    fired = threading.Event()
    seen = 0
    def tracer(frame, event, arg):
        global seen
        seen += 1
        if seen == k and not fired.is_set():
            fired.set()
            os.kill(os.getpid(), signal.SIGTERM)
        return tracer
    def later():
        time.sleep(0.05)
        if not fired.is_set():
            fired.set()
            os.kill(os.getpid(), signal.SIGTERM)
    threading.Thread(target=later, daemon=True).start()
    sys.settrace(tracer)
    stop.wait()
    sys.settrace(None)
    print(k, flush=True)
"""


def test_a_stop_signal_on_any_line_of_the_wait_stops_it() -> None:
    rounds = 60
    run = subprocess.run([sys.executable, "-c", _EVERY_LINE.format(rounds=rounds)], capture_output=True,
                         text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == [str(k) for k in range(1, rounds + 1)]


def _serve(tmp_path: Path, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "chorus.server.cli", "serve", "--data-dir", str(tmp_path / "d"),
                             "--listen", "127.0.0.1:0", "--otlp-http-listen", "127.0.0.1:0",
                             "--metrics-listen", "127.0.0.1:0", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "COLUMNS": "200"})


@pytest.mark.parametrize("workers", ["1", "2"])
def test_sigterm_at_the_ready_line_stops_chorus_serve(tmp_path: Path, workers: str) -> None:
    """With every listener on, a few times: SIGTERM as soon as the ready line is out (when both
    reported hangs came); each exits 0 within seconds. With 2 workers the parent's loop waits on
    its stop event ten times a second, so a signal often lands inside a wait."""
    for _ in range(3):
        proc = _serve(tmp_path, "--workers", workers)
        assert proc.stdout is not None
        for line in proc.stdout:
            if "chorus serving on" in line:
                break
        proc.send_signal(signal.SIGTERM)
        try:
            assert proc.wait(30) == 0, proc.stdout.read()
        finally:
            proc.kill()
            proc.stdout.close()


def test_sigterm_while_starting_stops_chorus_serve(tmp_path: Path) -> None:
    """Before it listens the default action ends it at once (nothing was bound or acknowledged);
    after, it stops gracefully once it serves. Either way it exits within seconds."""
    for _ in range(3):
        proc = _serve(tmp_path)
        assert proc.stdout is not None
        proc.stdout.readline()  # the process is up, the server not serving yet
        proc.send_signal(signal.SIGTERM)
        try:
            assert proc.wait(30) in (0, -signal.SIGTERM), proc.stdout.read()
        finally:
            proc.kill()
            proc.stdout.close()
