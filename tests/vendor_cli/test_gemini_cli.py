"""Gemini CLI (npm @google/gemini-cli, pinned) exports to `chorus serve` with its own telemetry
settings (~/.gemini/settings.json `telemetry`), over gRPC (its default) and HTTP; Chorus holds
exactly what the stand-in Gemini API served, counted once (not again through the GenAI
convention's `gen_ai.client.token.usage`, which Gemini CLI exports too).

Gemini CLI sends traces and logs to the same endpoint with no setting to turn them off;
Chorus accepts and drops them, so its shutdown flushes the metrics and exits cleanly.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ._model_apis import EDIT_FILE, USAGE, ModelApis
from .conftest import PERSON, VERSIONS, Chorus, export_errors, run_tool, tool

pytestmark = pytest.mark.slow
PROMPT = "chorus-probe-prompt-gemini: say hello"
#: What ai.tokens counts per answer: input without cached tokens, output with thoughts.
PER_ANSWER = USAGE["input"] + USAGE["output"] + USAGE["reasoning"]


def gemini(chorus: Chorus, apis: ModelApis, home: Path, work: Path, protocol: str, *extra: str) -> str:
    endpoint = f"http://{chorus.grpc_address if protocol == 'grpc' else chorus.http_address}"
    (home / ".gemini").mkdir(parents=True)
    (home / ".gemini" / "settings.json").write_text(json.dumps({
        "security": {"auth": {"selectedType": "gemini-api-key"}},
        "telemetry": {"enabled": True, "target": "local", "otlpEndpoint": endpoint, "otlpProtocol": protocol,
                      "logPrompts": False}}))
    done = run_tool([tool("gemini"), "-m", "gemini-2.5-flash", "-p", PROMPT, *extra], home, work, {
        "GEMINI_API_KEY": "standin", "GOOGLE_GEMINI_BASE_URL": apis.url, "GEMINI_CLI_TRUST_WORKSPACE": "true",
        "OTEL_EXPORTER_OTLP_HEADERS": f"Authorization=Bearer {chorus.ingest_token}",
        "OTEL_RESOURCE_ATTRIBUTES": f"user.email={PERSON}"})
    assert done.returncode == 0, done.stderr
    assert export_errors(done) == []
    installation = home / ".gemini" / "installation_id"
    return installation.read_text().strip() if installation.exists() else ""


def check_disk(chorus: Chorus, installation: str, home: Path, work: Path) -> None:
    needles = {"prompt": PROMPT, "work dir": str(work), "home": str(home), "model": "gemini-2.5",
               "served model": "gemini-standin", "service": "gemini-cli"}
    if installation:
        needles["installation id"] = installation
    assert chorus.disk_holds(needles) == []


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_a_headless_run_is_counted_exactly_and_once(chorus_server: Chorus, tmp_path: Path, protocol: str) -> None:
    home, work = tmp_path / "home", tmp_path / "work"
    work.mkdir()
    with ModelApis() as apis:
        installation = gemini(chorus_server, apis, home, work, protocol)
    answers = apis.served["gemini"]
    assert answers >= 1
    assert chorus_server.totals() == {"ai.tokens": answers * PER_ANSWER, "ai.requests": answers,
                                      "ai.sessions": 1}
    check_disk(chorus_server, installation, home, work)


def test_an_edit_counts_its_lines(chorus_server: Chorus, tmp_path: Path) -> None:
    home, work = tmp_path / "home", tmp_path / "work"
    work.mkdir()
    with ModelApis(edit=True, workdir=work) as apis:
        installation = gemini(chorus_server, apis, home, work, "grpc", "--approval-mode", "yolo")
    assert (work / EDIT_FILE).exists()
    answers = apis.served["gemini"]
    totals = chorus_server.totals()
    # Under --approval-mode yolo Gemini CLI reports the write as decision "accept", exactly as
    # when a person accepts it once: its telemetry cannot tell them apart (docs/otlp.md).
    assert totals == {"ai.tokens": answers * PER_ANSWER, "ai.requests": answers, "ai.sessions": 1,
                      "ai.lines_added": 3, "ai.suggestions_accepted": 1}
    check_disk(chorus_server, installation, home, work)


def test_the_pinned_version_is_the_one_run(tmp_path: Path) -> None:
    done = run_tool([tool("gemini"), "--version"], tmp_path, tmp_path, {})
    assert done.stdout.strip() == VERSIONS["gemini"]
