"""Demo step 4: a short-lived tool is SIGKILLed mid-flush and restarted; nothing is lost or doubled.

The tool runs in its own process with a spool directory. Its transport is wrapped so that
the process kills itself at the worst possible moment: right after the server committed and
answered a batch, before the SDK could record the acknowledgement. The restarted tool finds
the batch in its spool and sends it again with the same batch_id; the server recognises it
as a duplicate, so it counts once.

Run as a child process: python -m chorus.server.demo._killed_tool ENDPOINT SPOOL_DIR PHASE
(token in CHORUS_TOKEN; PHASE is "crash" or "restart").
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from rich.table import Table

from chorus.client import Client, GrpcTransport
from chorus.v1 import ingest_pb2

if TYPE_CHECKING:
    from chorus.server.demo import _Demo

TOOL = "cli-helper"
USER = "user-platform-04"
#: (metric, value) counted by the first run (killed) and by the restarted run.
PHASES = {"crash": [("ai.requests", 3), ("ai.tokens", 2_500)],
          "restart": [("ai.requests", 2), ("ai.tokens", 1_200)]}


class _DieAfterAck:
    """Passes sends through, then SIGKILLs its own process once the server has answered."""

    def __init__(self, inner: GrpcTransport) -> None:
        self._inner = inner

    def send(self, request: ingest_pb2.ReportRequest, timeout: float) -> ingest_pb2.ReportResponse:
        response = self._inner.send(request, timeout)
        print(json.dumps({"killed_after": request.batch_id, "accepted": response.accepted}), flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
        return response  # never reached

    def close(self) -> None:
        self._inner.close()


def _tool(endpoint: str, spool: Path, phase: str) -> None:
    token = os.environ["CHORUS_TOKEN"]
    transport = _DieAfterAck(GrpcTransport(endpoint, token)) if phase == "crash" else None
    client = Client(endpoint, token, source=TOOL, spool_dir=spool, flush_interval=3600, transport=transport)
    for metric, value in PHASES[phase]:
        client.count(metric, value, user=USER)
    client.close(timeout=30)
    stats = client.stats()
    print(json.dumps({"accepted": stats.accepted, "duplicates": stats.duplicates,
                      "sent_batches": stats.sent_batches}), flush=True)


def run(demo: _Demo) -> None:
    """Run both phases as real child processes and show what each saw."""
    demo.console.rule("[bold]4. A tool killed mid-flush, then restarted")
    env = {**os.environ, "CHORUS_TOKEN": demo.token("ingest", TOOL)}
    table = Table("run", "exit", "what the tool saw")
    # The tool's own spool, shared by its two runs and gone after: never beside the demo's directory.
    with tempfile.TemporaryDirectory(prefix="chorus-demo-spool-") as spool:
        runs = [(phase, subprocess.run([sys.executable, "-m", __name__, demo.server.address, spool, phase],
                                       env=env, capture_output=True, text=True, timeout=120))
                for phase in ("crash", "restart")]
    for phase, proc in runs:
        lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
        exit_text = "SIGKILL" if proc.returncode == -signal.SIGKILL else str(proc.returncode)
        if phase == "crash":
            seen = (f"server accepted batch {lines[0]['killed_after'][:8]}… ({lines[0]['accepted']} contributions); "
                    "the tool died before recording the answer" if lines else proc.stderr.strip()[-200:])
        else:
            last = lines[-1] if lines else {}
            seen = (f"resent the spooled batch: {last.get('duplicates', '?')} duplicate (counted once); "
                    f"{last.get('accepted', '?')} new contributions accepted")
        table.add_row(phase, exit_text, seen)
        for metric, value in PHASES[phase]:
            demo.world.truth[(USER, metric)] += value
    demo.console.print(table)


if __name__ == "__main__":
    _tool(sys.argv[1], Path(sys.argv[2]), sys.argv[3])
