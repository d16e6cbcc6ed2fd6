"""Every bench script runs at HEAD: each one with `--smoke` (tiny sizes), as its own process.

A config or API change that breaks a benchmark fails here, not months later when someone
re-measures the README's table. The figures of a smoke run mean nothing; only that the
script ran to the end (exit 0), printed the load average at the start and the end, and
printed at least one ratio against its anchor (every bench's contract, README: Benchmarks).
The list of scripts is read from bench/, so a new bench is covered by being added there.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.store.postgres_schema import require_postgres

pytestmark = pytest.mark.slow

BENCH = Path(__file__).resolve().parents[2] / "bench"
SCRIPTS = sorted(p.name for p in BENCH.glob("bench_*.py"))
#: What each bench prints as its ratio against the anchor measured in the same run.
RATIO = {"bench_accuracy.py": "width", "bench_count.py": "count() / Counter.add", "bench_auth.py": "ratio",
         "bench_close.py": "ratio",
         "bench_consistency.py": "x anchor", "bench_ingest.py": "/ bare random", "bench_ingest_pg.py": "x the bulk",
         "bench_metrics.py": "ratio", "bench_otlp.py": "ratio OTLP/HTTP / native",
         "bench_read_ingest.py": "median ratio",
         "bench_release.py": "x anchor",
         "bench_verify.py": "ratio"}
#: Seconds a smoke run may take on the shared 2-core machine (about 20 s when it is quiet).
LIMIT = 120


def test_every_bench_has_a_smoke_ratio() -> None:
    assert SCRIPTS and set(SCRIPTS) == set(RATIO)


@pytest.mark.parametrize("script", SCRIPTS)
def test_bench_runs_at_head(script: str) -> None:
    if script == "bench_ingest_pg.py":
        require_postgres()
    started = time.monotonic()
    result = subprocess.run([sys.executable, str(BENCH / script), "--smoke"], capture_output=True, text=True,
                            timeout=LIMIT, env={**os.environ, "COLUMNS": "200"})
    elapsed = time.monotonic() - started
    assert result.returncode == 0, f"{script} --smoke failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    lines = result.stdout.splitlines()
    assert lines[0].startswith("smoke run, load average "), lines[:1]
    assert lines[-1].startswith("end: load average "), lines[-1:]
    assert RATIO[script] in result.stdout, result.stdout[-2000:]
    print(f"{script}: {elapsed:.1f} s")
