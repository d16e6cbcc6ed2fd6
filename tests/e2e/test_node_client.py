"""The Node.js example client (examples/node, @grpc/grpc-js) against a real server: a third-party
SDK written from the .proto files and docs/api.md reports, releases, decodes the structured
error details and hands the streamed ledger to a verifier, without any Python on its side."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from chorus.server.model.roles import Role

from .conftest import ROSTER, Running

pytestmark = pytest.mark.slow  # a Node.js process

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "node"
NODE = shutil.which("node")
NPM = shutil.which("npm")

if NODE is None or NPM is None:
    if os.environ.get("CI"):
        pytest.fail("node and npm are missing: CI must install nodejs (apt-get install nodejs npm)", pytrace=False)
    pytest.skip("node and npm are not installed (apt-get install nodejs npm)", allow_module_level=True)


def installed() -> Path:
    """examples/node with its locked dependencies, installed from the npm registry when missing."""
    if not (EXAMPLE / "node_modules" / "@grpc" / "grpc-js").is_dir():
        assert NPM is not None
        subprocess.run([NPM, "ci", "--no-audit", "--no-fund"], cwd=EXAMPLE, check=True, timeout=600,
                       capture_output=True)
    return EXAMPLE


def test_the_node_client_reports_releases_and_decodes_errors(running: Running) -> None:
    now = running.chorus.clock.now()
    tokens = {role: running.chorus.tokens.create(role, f"node-{role.value}", now, "test")[0]
              for role in (Role.ANALYST, Role.AUDITOR)}
    example = installed()
    # The ledger verifier in JavaScript, run as `node verify-ledger.js LEDGER.jsonl KEY.pem`.
    verifier = example / "verify-ledger.js"
    result = subprocess.run(
        [NODE or "node", str(example / "client.js")], capture_output=True, text=True, timeout=120,
        env={**os.environ, "CHORUS_ADDRESS": running.address, "CHORUS_INGEST_TOKEN": running.ingest_token,
             "CHORUS_ADMIN_TOKEN": running.admin_token, "CHORUS_ANALYST_TOKEN": tokens[Role.ANALYST],
             "CHORUS_AUDITOR_TOKEN": tokens[Role.AUDITOR], "CHORUS_USER": ROSTER[0][0],
             "CHORUS_METRIC": "ai.tokens",
             "CHORUS_VERIFIER": str(verifier) if verifier.exists() else ""})
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["bad_request"]["field"] == "contributions[0].event_time"
    assert [row[0] for row in summary["release"]] == ["STATISTIC_SUM", "STATISTIC_COUNT", "STATISTIC_MEAN",
                                                      "STATISTIC_ACTIVE", "STATISTIC_ADOPTION"]
    assert summary["quota_failure"]["team"] in {"team-red", "team-blue"}
    assert summary["ledger_entries"] > 5
    assert summary.get("verified", False) == verifier.exists()
