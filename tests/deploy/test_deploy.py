"""The files in deploy/: Prometheus alerting rules and the systemd unit.

`promtool check rules` and `systemd-analyze verify` run where installed; locally a missing tool
skips its test with the reason shown, in CI (`CI` set; .ci/run installs both) it fails.
Independently of promtool, every metric the rules name must exist in a real server's scrape.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from chorus.server.root import Chorus
from chorus.server.transport.grpc_server import Server
from chorus.v1 import admin_pb2, admin_pb2_grpc
from tests._policy import suite_config

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
RULES = DEPLOY / "prometheus-rules.yml"
UNIT = DEPLOY / "chorus.service"


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{name} is required in CI (.ci/run installs it)")
        package = "prometheus" if name == "promtool" else "systemd"
        pytest.skip(f"{name} is not installed (Debian: apt-get install {package})")
    return path


@pytest.mark.slow
def test_rules_pass_promtool() -> None:
    result = subprocess.run([tool("promtool"), "check", "rules", str(RULES)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


@pytest.mark.slow
def test_alerts_fire_on_the_series_they_watch() -> None:
    """deploy/prometheus-rules.test.yml: shred pending, store unavailable, rejections rising and
    budget exhausted fire (and shred pending not before its 15 minutes)."""
    result = subprocess.run([tool("promtool"), "test", "rules", str(DEPLOY / "prometheus-rules.test.yml")],
                            capture_output=True, text=True)
    assert result.returncode == 0 and "SUCCESS" in result.stdout, result.stdout + result.stderr


def alerting_rules() -> list[dict[str, object]]:
    document = yaml.safe_load(RULES.read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def test_rules_cover_the_documented_alerts() -> None:
    rules = alerting_rules()
    for rule in rules:
        assert set(rule) >= {"alert", "expr", "labels", "annotations"}, rule
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}  # type: ignore[index]
        assert rule["annotations"]["summary"]  # type: ignore[index]
    names = {rule["alert"] for rule in rules}
    # docs/deployment.md, "Monitoring": shred pending, store unavailable, budget exhausted early,
    # ingest rejections rising.
    assert {"ChorusShredPending", "ChorusStoreUnavailable", "ChorusBudgetExhaustedEarly",
            "ChorusIngestRejectionsRising"} <= names
    documented = set(re.findall(r"`(Chorus[A-Za-z]+)`", (DEPLOY.parent / "docs" / "deployment.md").read_text()))
    assert names == documented


@pytest.fixture
def scraped(tmp_path: Path) -> Iterator[set[str]]:
    """Every sample name a fresh server with --metrics-listen exposes after one RPC."""
    chorus = Chorus(suite_config(), tmp_path / "data")
    server = Server(chorus, "127.0.0.1:0", metrics_listen="127.0.0.1:0")
    server.start()
    try:
        with grpc.insecure_channel(server.address) as channel, pytest.raises(grpc.RpcError):
            admin_pb2_grpc.AdminServiceStub(channel).GetStats(admin_pb2.GetStatsRequest(), timeout=10)
        with urllib.request.urlopen(f"http://{server.metrics_address}/metrics", timeout=10) as reply:
            text = reply.read().decode()
    finally:
        server.stop(grace=1)
    names = set()
    for family in text_string_to_metric_families(text):
        suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum")}.get(family.type, ("",))
        names |= {family.name + suffix for suffix in suffixes}
    yield names


@pytest.mark.slow
def test_rules_name_only_metrics_the_server_exposes(scraped: set[str]) -> None:
    """chorus_worker_* exist only with --workers: tests/deploy/test_prometheus.py scrapes those."""
    named = {m for rule in alerting_rules() for m in re.findall(r"\bchorus_[a-z_]+", str(rule["expr"]))}
    assert named and named - {"chorus_worker_restarts_total"} <= scraped, named - scraped
    assert "chorus_build_info" in scraped


DOC_URL = "https://github.com/chorus-telemetry/chorus/blob/main/docs/deployment.md#"


def runbook_sections() -> dict[str, str]:
    """GitHub anchor -> text of every `####` section of docs/deployment.md's Runbooks."""
    text = (DEPLOY.parent / "docs" / "deployment.md").read_text()
    runbooks = text.split("\n### Runbooks\n", 1)[1].split("\n### ", 1)[0]
    sections = re.split(r"^#### (.+)$", runbooks, flags=re.M)[1:]
    return {re.sub(r"[^a-z0-9 -]", "", title.lower()).replace(" ", "-"): body.strip()
            for title, body in zip(sections[::2], sections[1::2], strict=True)}


def test_every_alert_links_a_runbook_section_that_says_what_to_do() -> None:
    sections = runbook_sections()
    for rule in alerting_rules():
        url = rule["annotations"]["runbook_url"]  # type: ignore[index]
        assert url.startswith(DOC_URL), url
        anchor = url.removeprefix(DOC_URL)
        assert anchor == str(rule["alert"]).lower() and anchor in sections, url
        assert len(sections[anchor]) > 200, (anchor, sections[anchor])
    assert set(sections) == {str(rule["alert"]).lower() for rule in alerting_rules()}


def unit_lines() -> list[str]:
    return [line.strip() for line in UNIT.read_text().replace("\\\n", " ").splitlines()]


def test_unit_has_the_documented_hardening() -> None:
    lines = set(unit_lines())
    for directive in ("User=chorus", "StateDirectory=chorus", "StateDirectoryMode=0700", "ProtectSystem=strict",
                      "NoNewPrivileges=yes", "PrivateTmp=yes", "ProtectHome=yes", "CapabilityBoundingSet=",
                      "UMask=0077", "KillSignal=SIGTERM", "Restart=on-failure", "Type=notify",
                      "NotifyAccess=main"):
        assert directive in lines, directive
    start = next(line for line in lines if line.startswith("ExecStart="))
    assert "--metrics-listen 127.0.0.1:" in start and "--log-format json" in start
    assert "--data-dir ${STATE_DIRECTORY}" in start


@pytest.mark.slow
def test_unit_passes_systemd_analyze(tmp_path: Path) -> None:
    analyze = tool("systemd-analyze")
    chorus = Path(sys.executable).with_name("chorus")  # verify checks that ExecStart's binary exists
    unit = tmp_path / "chorus.service"
    unit.write_text(UNIT.read_text().replace("/opt/chorus/bin/chorus", str(chorus)))
    verify = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True)
    assert verify.returncode == 0 and not (verify.stdout + verify.stderr).strip(), verify.stdout + verify.stderr
    # systemd's exposure score, 0 (locked down) .. 10 (unprotected), times ten: at most 2.0.
    security = subprocess.run([analyze, "security", "--offline=yes", "--threshold=20", str(unit)],
                              capture_output=True, text=True)
    assert security.returncode == 0, security.stdout + security.stderr
