"""Codex (npm @openai/codex, pinned; a Rust binary inside the package) exports to `chorus serve`
with its own telemetry settings (`[otel]` in ~/.codex/config.toml), over OTLP/gRPC and
OTLP/HTTP (binary and JSON), delta (its default) and cumulative; Chorus holds exactly what the
stand-in Responses API served: input without cached input, plus output, never `total`.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ._model_apis import EDIT_FILE, EDIT_TEXT, USAGE, ModelApis
from .conftest import PERSON, VERSIONS, Chorus, export_errors, run_tool, tool

pytestmark = pytest.mark.slow
PROMPT = "chorus-probe-prompt-codex: say hello"
PER_ANSWER = USAGE["input"] + USAGE["output"] + USAGE["reasoning"]
EXPORTERS = {
    "grpc": 'otlp-grpc = {{ endpoint = "http://{grpc}", headers = {{ authorization = "Bearer {token}" }} }}',
    "http-binary": 'otlp-http = {{ endpoint = "http://{http}/v1/{signal}", protocol = "binary", '
                   'headers = {{ authorization = "Bearer {token}" }} }}',
    "http-json": 'otlp-http = {{ endpoint = "http://{http}/v1/{signal}", protocol = "json", '
                 'headers = {{ authorization = "Bearer {token}" }} }}',
}


def codex(chorus: Chorus, apis: ModelApis, home: Path, work: Path, protocol: str, temporality: str,
          sandbox: str = "read-only") -> str:
    def exporter(signal: str) -> str:
        return "{ " + EXPORTERS[protocol].format(grpc=chorus.grpc_address, http=chorus.http_address,
                                                 token=chorus.ingest_token, signal=signal) + " }"

    (home / ".codex").mkdir(parents=True)
    (home / ".codex" / "config.toml").write_text(f'''
model = "gpt-standin"
model_provider = "standin"

[model_providers.standin]
name = "standin"
base_url = "{apis.url}/v1"
wire_api = "responses"
env_key = "STANDIN_API_KEY"

[otel]
log_user_prompt = false
exporter = {exporter("logs")}
trace_exporter = {exporter("traces")}
metrics_exporter = {exporter("metrics")}
''')
    done = run_tool([tool("codex"), "exec", "--skip-git-repo-check", "-s", sandbox, PROMPT], home, work, {
        "STANDIN_API_KEY": "standin", "OTEL_RESOURCE_ATTRIBUTES": f"user.email={PERSON}",
        "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE": temporality})
    assert done.returncode == 0, done.stderr
    assert export_errors(done) == []
    session = re.search(r"session id: (\S+)", done.stdout + done.stderr)
    return session[1] if session else ""


@pytest.mark.parametrize("temporality", ["delta", "cumulative"])
@pytest.mark.parametrize("protocol", sorted(EXPORTERS))
def test_a_headless_run_is_counted_exactly(chorus_server: Chorus, tmp_path: Path, protocol: str,
                                           temporality: str) -> None:
    home, work = tmp_path / "home", tmp_path / "work"
    work.mkdir()
    with ModelApis() as apis:
        session = codex(chorus_server, apis, home, work, protocol, temporality)
    answers = apis.served["openai"]
    assert answers >= 1 and session
    assert chorus_server.totals() == {"ai.tokens": answers * PER_ANSWER, "ai.requests": answers,
                                      "ai.tasks_completed": 1}
    assert chorus_server.disk_holds({"session id": session, "prompt": PROMPT, "work dir": str(work),
                                     "home": str(home), "model": "gpt-standin", "service": "codex_exec"}) == []


def test_an_edit_run_applies_the_patch_and_counts_exactly(chorus_server: Chorus, tmp_path: Path) -> None:
    """The stand-in answers with a patch that adds a file (an `apply_patch` heredoc through Codex's
    shell tool: Codex offers no apply_patch tool to a model it does not know); Codex applies it
    in its workspace-write sandbox and sends the result back (a second model answer)."""
    home, work = tmp_path / "home", tmp_path / "work"
    work.mkdir()
    with ModelApis(edit=True, workdir=work) as apis:
        session = codex(chorus_server, apis, home, work, "http-binary", "delta", sandbox="workspace-write")
    assert (work / EDIT_FILE).read_text().splitlines() == EDIT_TEXT.splitlines()
    answers = apis.served["openai"]
    assert answers >= 2 and session  # the patch, then the answer to its result
    assert chorus_server.totals() == {"ai.tokens": answers * PER_ANSWER, "ai.requests": answers,
                                      "ai.tasks_completed": 1}
    assert chorus_server.disk_holds({"session id": session, "prompt": PROMPT, "work dir": str(work),
                                     "home": str(home), "model": "gpt-standin", "service": "codex_exec",
                                     "file": EDIT_FILE, "patch": "*** Begin Patch"}) == []


def test_the_pinned_version_is_the_one_run(tmp_path: Path) -> None:
    done = run_tool([tool("codex"), "--version"], tmp_path, tmp_path, {})
    assert done.stdout.strip().endswith(VERSIONS["codex"])
