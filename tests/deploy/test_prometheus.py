"""A real Prometheus (Debian's package) scraping a real `chorus serve --workers 2` with the shipped
rules loaded: every Grafana panel's query (deploy/grafana-dashboard.json) and every alerting
rule's expression returns data through Prometheus's HTTP API.

An alert's expression ends in a threshold (`> 0`) that filters out the healthy series; it is
evaluated with that comparison made `bool`, so it returns the 0/1 verdict of every series it
watches. Three rules watch series that exist only once their event happened (a store failure,
a server error status, a release refused for budget); for those, Prometheus must know the
family from the scrape (metadata) and evaluate the rule without error.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from chorus.server.model.roles import Role
from chorus.v1 import admin_pb2, admin_pb2_grpc, ingest_pb2_grpc
from tests._roster import report_request
from tests.deploy.test_deploy import DEPLOY, RULES, alerting_rules, tool
from tests.workers.test_workers import Served, metadata, provision, serve

pytestmark = pytest.mark.slow  # a Prometheus and a `chorus serve --workers 2`

DASHBOARD = DEPLOY / "grafana-dashboard.json"
#: What Grafana substitutes for $__rate_interval at a 1 s scrape interval is far less; 1m holds
#: the test's samples.
RATE_INTERVAL = "1m"
#: Alerts whose watched series appear only after their event (see the module docstring).
EVENT_ONLY = {"ChorusStoreErrors": "chorus_store_errors", "ChorusRpcServerErrors": "chorus_rpc_duration_seconds",
              "ChorusReleaseRefusedForBudget": "chorus_rpc_duration_seconds"}


def panel_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL with Grafana's variables substituted) of every panel target."""
    dashboard = json.loads(DASHBOARD.read_text())
    return [(panel["title"], target["expr"].replace("$__rate_interval", RATE_INTERVAL))
            for panel in dashboard["panels"] for target in panel.get("targets", [])]


def verdict(expr: str) -> str:
    """The alert expression with its final threshold comparison made `bool`."""
    made, count = re.subn(r"(==|!=|>=|<=|>|<)\s*(-?[0-9.e]+)\s*$", r"\1 bool \2", expr.strip())
    assert count == 1, expr
    return made


def test_dashboard_is_grafana_json_over_the_chorus_job() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "chorus-operations" and dashboard["templating"]["list"][0]["type"] == "datasource"
    queries = panel_queries()
    assert len(queries) >= 20
    for title, expr in queries:
        assert 'job="chorus"' in expr, title
        assert not re.search(r"team|user|person", expr), title  # no such label exists
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Prometheus:
    def __init__(self, base: str) -> None:
        self.base = base

    def get(self, path: str, **params: str) -> Any:
        url = f"{self.base}{path}?{urllib.parse.urlencode(params)}"
        with urllib.request.urlopen(url, timeout=10) as answer:
            body = json.loads(answer.read())
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        data = self.get("/api/v1/query", query=expr)
        return data["result"] if data["resultType"] == "vector" else [data["result"]]

    def until(self, what: str, check: Any, timeout: float = 90.0) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                got = check()
            except (OSError, ValueError):
                got = None
            if got:
                return got
            time.sleep(0.5)
        raise AssertionError(f"Prometheus: {what} within {timeout} s")


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[Served, str]]:
    tokens = provision(tmp_path / "data")
    served = serve(tmp_path, "--metrics-listen", "127.0.0.1:0", count=2)
    try:
        url = re.search(r"metrics on http://(127.0.0.1:\d+)/metrics", served.text())
        assert url is not None, served.text()
        traffic(served, tokens)
        yield served, url[1]
    finally:
        served.proc.terminate()
        served.proc.wait(30)


def traffic(served: Served, tokens: dict[str, str]) -> None:
    """Over fresh connections (spread over both workers): admin calls, applied, duplicate and
    partly rejected batches, and a call without a token."""
    for n in range(8):
        with served.channel() as channel:
            admin = admin_pb2_grpc.AdminServiceStub(channel)
            admin.ListTokens(admin_pb2.ListTokensRequest(), metadata=metadata(tokens, Role.ADMIN), timeout=10)
            ingest = ingest_pb2_grpc.IngestServiceStub(channel)
            batch = report_request(batch_id=f"prometheus-{n:02d}-{'x' * 20}")
            for _ in range(2):  # the second one is a duplicate
                ingest.Report(batch, metadata=metadata(tokens, Role.INGEST), timeout=10)
            unknown = report_request()
            unknown.contributions[0].user = "nobody-on-the-roster"
            ingest.Report(unknown, metadata=metadata(tokens, Role.INGEST), timeout=10)
            with pytest.raises(grpc.RpcError):
                admin.ListTokens(admin_pb2.ListTokensRequest(), timeout=10)


@pytest.fixture
def prometheus(tmp_path: Path, server: tuple[Served, str]) -> Iterator[Prometheus]:
    binary = tool("promtool") and shutil.which("prometheus")
    assert binary, "prometheus is installed with promtool (Debian package prometheus)"
    config = tmp_path / "prometheus.yml"
    config.write_text(json.dumps({  # JSON is YAML
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "1s"},
        "rule_files": [str(RULES)],
        "scrape_configs": [{"job_name": "chorus", "static_configs": [{"targets": [server[1]]}]}],
    }))
    port = free_port()
    log = (tmp_path / "prometheus.log").open("wb")
    proc = subprocess.Popen([binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                             f"--web.listen-address=127.0.0.1:{port}"], stdout=log, stderr=subprocess.STDOUT)
    try:
        yield Prometheus(f"http://127.0.0.1:{port}")
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()
        print((tmp_path / "prometheus.log").read_text()[-4000:])


def test_every_panel_and_rule_returns_data_from_a_real_scrape(prometheus: Prometheus) -> None:
    prom = prometheus
    targets = prom.until("the chorus target up", lambda: [
        t for t in prom.get("/api/v1/targets")["activeTargets"] if t["health"] == "up"])
    assert len(targets) == 1  # one target for both workers
    # Enough samples for rate(): a few scrapes after the traffic.
    prom.until("two workers in several scrapes", lambda: prom.query(
        'count_over_time(chorus_worker_up{job="chorus"}[1m]) >= 4'))
    assert {s["metric"]["worker"] for s in prom.query('chorus_worker_up{job="chorus"} == 1')} == {"0", "1"}

    empty = [(title, expr) for title, expr in panel_queries() if not prom.query(expr)]
    assert not empty, empty

    rules = prom.until("every rule evaluated", lambda: [
        r for g in prom.get("/api/v1/rules")["groups"] for r in g["rules"]
        if r["lastEvaluation"] and not r["lastEvaluation"].startswith("0001")]
        if all(r["lastEvaluation"] and not r["lastEvaluation"].startswith("0001")
               for g in prom.get("/api/v1/rules")["groups"] for r in g["rules"]) else None)
    assert {r["name"] for r in rules} == {str(r["alert"]) for r in alerting_rules()}
    for rule in rules:
        assert rule["health"] == "ok" and not rule.get("lastError"), rule
    known = prom.get("/api/v1/metadata")
    for rule in alerting_rules():
        name, expr = str(rule["alert"]), str(rule["expr"])
        if name in EVENT_ONLY:
            assert EVENT_ONLY[name] in known or f"{EVENT_ONLY[name]}_total" in known, (name, sorted(known))
            continue
        assert prom.query(verdict(expr)), (name, verdict(expr))
