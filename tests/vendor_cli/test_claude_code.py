"""Claude Code (npm @anthropic-ai/claude-code, pinned) exports to `chorus serve` with its own
telemetry settings; Chorus holds exactly what the stand-in Anthropic API served.

Settings are Claude Code's documented environment (CLAUDE_CODE_ENABLE_TELEMETRY,
OTEL_METRICS_EXPORTER, OTEL_EXPORTER_OTLP_*, OTEL_RESOURCE_ATTRIBUTES for the roster id), over
every protocol it supports (gRPC, HTTP/protobuf, HTTP/JSON) and both temporalities.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ._model_apis import EDIT_FILE, USAGE, ModelApis
from .conftest import PERSON, VERSIONS, Chorus, export_errors, run_tool, tool

pytestmark = pytest.mark.slow
PROMPT = "chorus-probe-prompt-claude: say hello"
PROTOCOLS = {"grpc": "grpc", "http-protobuf": "http/protobuf", "http-json": "http/json"}


def claude(chorus: Chorus, apis: ModelApis, home: Path, work: Path, protocol: str, temporality: str,
           *extra: str) -> tuple[str, str]:
    endpoint = f"http://{chorus.grpc_address if protocol == 'grpc' else chorus.http_address}"
    done = run_tool([tool("claude"), "-p", PROMPT, "--output-format", "json", *extra], home, work, {
        "ANTHROPIC_BASE_URL": apis.url, "ANTHROPIC_API_KEY": "sk-standin",
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "CLAUDE_CODE_ENABLE_TELEMETRY": "1", "OTEL_METRICS_EXPORTER": "otlp", "OTEL_LOGS_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_PROTOCOL": protocol, "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
        "OTEL_EXPORTER_OTLP_HEADERS": f"Authorization=Bearer {chorus.ingest_token}",
        "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE": temporality,
        "OTEL_METRIC_EXPORT_INTERVAL": "1000", "OTEL_RESOURCE_ATTRIBUTES": f"user.email={PERSON}"})
    assert done.returncode == 0, done.stderr
    assert export_errors(done) == []
    session = json.loads(done.stdout)["session_id"]
    return session, (home / ".claude.json").read_text() if (home / ".claude.json").exists() else ""


def check_disk(chorus: Chorus, session: str, settings: str, home: Path, work: Path) -> None:
    needles = {"session id": session, "prompt": PROMPT, "work dir": str(work), "home": str(home),
               "model": "claude-opus", "service": "claude-code"}
    user_id = json.loads(settings).get("userID") if settings else None
    if user_id:
        needles["user.id"] = user_id
    assert chorus.disk_holds(needles) == []


@pytest.mark.parametrize("temporality", ["delta", "cumulative"])
@pytest.mark.parametrize("protocol", sorted(PROTOCOLS))
def test_a_headless_run_is_counted_exactly(chorus_server: Chorus, tmp_path: Path, protocol: str,
                                           temporality: str) -> None:
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    work.mkdir()
    with ModelApis() as apis:
        session, settings = claude(chorus_server, apis, home, work, PROTOCOLS[protocol], temporality)
    answers = apis.served["anthropic"]
    assert answers >= 1
    totals = chorus_server.totals()
    active = totals.pop("ai.active_seconds", 0)
    assert 0 <= active <= 60  # Claude Code's own measure of its active time, rounded per export
    # Input excludes cache reads and writes (the preset's rule); no request counter exists.
    assert totals == {"ai.tokens": answers * (USAGE["input"] + USAGE["output"]), "ai.sessions": 1}
    check_disk(chorus_server, session, settings, home, work)


def test_an_edit_under_a_permission_mode_counts_lines_but_no_persons_decision(chorus_server: Chorus,
                                                                            tmp_path: Path) -> None:
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    work.mkdir()
    with ModelApis(edit=True, workdir=work) as apis:
        session, settings = claude(chorus_server, apis, home, work, "grpc", "delta",
                                   "--permission-mode", "acceptEdits")
    assert (work / EDIT_FILE).exists()
    answers = apis.served["anthropic"]
    totals = chorus_server.totals()
    totals.pop("ai.active_seconds", None)
    # Accepted by the acceptEdits mode (source "config"): not an edit a person accepted.
    assert totals == {"ai.tokens": answers * (USAGE["input"] + USAGE["output"]), "ai.sessions": 1,
                      "ai.lines_added": 3}
    check_disk(chorus_server, session, settings, home, work)


def test_the_pinned_version_is_the_one_run(tmp_path: Path) -> None:
    done = run_tool([tool("claude"), "--version"], tmp_path, tmp_path, {})
    assert done.stdout.startswith(VERSIONS["claude"])
