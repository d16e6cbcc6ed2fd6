"""bench/bench_accuracy.py at a small size, so the benchmark cannot silently break."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow  # a process
def test_the_accuracy_bench_prints_every_figure_for_both_policies() -> None:
    result = subprocess.run([sys.executable, str(ROOT / "bench/bench_accuracy.py"), "--runs", "5", "--orgs", "2"],
                            capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    for figure in ("yearly bound per person (delta 1e-8)", "company adoption, one week", "org adoption (100 people)",
                   "team adoption over 8 weeks, 25-person team", "company adoption slope over 8 weeks",
                   '"growing" detected', "company token total, one week",
                   "company mean of ai.tokens per person using them, one week",
                   "team mean of ai.tokens, 60-person team, one week", "company edit acceptance (ratio), one week",
                   "org edit acceptance (ratio, 100 people), one week"):
        assert figure in result.stdout
    assert "| 29.78 " in result.stdout and "| 162.00 " in result.stdout  # the yearly bounds, new and old
    ratio = next(line for line in result.stdout.splitlines() if line.startswith("company edit acceptance"))
    assert [cell.strip() for cell in ratio.split("|")][-3:] == ["-", "", ""]  # the old policy had no ratio
