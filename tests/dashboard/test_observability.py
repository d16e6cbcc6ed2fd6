"""The dashboard's own signals (docs/dashboard.md, "Operating the dashboard"): /healthz, metrics
by page and status, sign-ins, upstream errors, with no label naming a person, team or token;
and as a process, JSON logs through the server's log setup and a metrics listener."""

from __future__ import annotations

import http.cookiejar
import json
import re
import signal
import subprocess
import urllib.parse
import urllib.request

import pytest
from flask import Flask
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from chorus.server.dashboard import create_app, observability
from chorus.server.dashboard.sessions import SessionStore
from chorus.server.model.roles import Role

from .conftest import Stack, login
from .test_cli import READY, command

pytestmark = pytest.mark.slow  # a real Chorus gRPC server behind the dashboard

def samples(metrics: observability.DashboardMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(metrics.registry).decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


@pytest.fixture
def instrumented(stack: Stack, sessions: SessionStore) -> tuple[Flask, observability.DashboardMetrics]:
    app = create_app(stack.gateway(), sessions=sessions)
    app.testing = True
    return app, observability.install(app, stack.gateway())


def test_healthz_needs_no_session_and_follows_the_upstream(
        instrumented: tuple[Flask, observability.DashboardMetrics], stack: Stack) -> None:
    app, _ = instrumented
    reply = app.test_client().get("/healthz")
    assert reply.status_code == 200 and reply.get_json() == {"status": "ok", "upstream": "reachable"}
    stack.server.stop(grace=0)
    down = app.test_client().get("/healthz")
    assert down.status_code == 503 and down.get_json()["status"] == "unavailable"
    assert stack.server.address in down.get_json()["upstream"]


def test_requests_sign_ins_and_upstream_errors_are_counted(
        instrumented: tuple[Flask, observability.DashboardMetrics], stack: Stack) -> None:
    app, metrics = instrumented
    client = app.test_client()
    assert login(client, "chorus_not-a-real-token").status_code == 401
    assert login(client, stack.tokens[Role.ANALYST]).status_code == 303
    assert client.get("/overview").status_code == 200
    assert client.get("/no-such-page").status_code == 404
    stack.chorus.tokens.revoke(f"{Role.ANALYST.value}-dashboard-test", stack.clock.now(), actor="test")
    client.get("/trends")  # the server answers UNAUTHENTICATED: signed out
    got = samples(metrics)
    assert got[("chorus_dashboard_sign_ins_total", (("method", "token"), ("outcome", "refused")))] == 1
    assert got[("chorus_dashboard_sign_ins_total", (("method", "token"), ("outcome", "accepted")))] == 1
    assert got[("chorus_dashboard_requests_total", (("page", "/overview"), ("status", "200")))] == 1
    assert got[("chorus_dashboard_requests_total", (("page", "unmatched"), ("status", "404")))] == 1
    assert got[("chorus_dashboard_requests_total", (("page", "/login"), ("status", "200")))] == 2
    assert got[("chorus_dashboard_upstream_errors_total", (("code", "UNAUTHENTICATED"),))] >= 1
    assert got[("chorus_dashboard_request_seconds_count", (("page", "/overview"),))] == 1
    text = generate_latest(metrics.registry).decode()
    for secret in (stack.tokens[Role.ANALYST], "analyst-dashboard-test", "team-red", "user-"):
        assert secret not in text


def test_the_process_logs_json_and_serves_its_metrics(stack: Stack) -> None:
    proc = subprocess.Popen(command("--server", stack.server.address, "--listen", "127.0.0.1:0",
                                    "--metrics-listen", "127.0.0.1:0", "--log-format", "json"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        first, second = proc.stdout.readline(), proc.stdout.readline()
        metrics_url = re.search(r"dashboard metrics on (http://\S+/metrics)", first)
        ready = READY.search(second)
        assert metrics_url and ready, first + second
        with urllib.request.urlopen(ready[1] + "/healthz", timeout=10) as reply:
            assert reply.status == 200 and json.loads(reply.read())["status"] == "ok"
        browser = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
        with browser.open(ready[1] + "/login", timeout=10) as form:
            csrf = re.search(r'name="csrf" value="([^"]+)"', form.read().decode())[1]  # type: ignore[index]
        data = urllib.parse.urlencode({"csrf": csrf, "token": stack.tokens[Role.ANALYST]}).encode()
        with browser.open(ready[1] + "/login", data=data, timeout=30) as signed_in:
            assert signed_in.status == 200  # followed the 303 to the analyst's home page
        with urllib.request.urlopen(metrics_url[1], timeout=10) as reply:
            text = reply.read().decode()
        assert 'chorus_dashboard_requests_total{page="/healthz",status="200"} 1.0' in text
        assert 'chorus_dashboard_sign_ins_total{method="token",outcome="accepted"} 1.0' in text
        assert "chorus_build_info{" in text
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    records = [json.loads(line) for line in err.splitlines() if line.strip()]
    assert all({"time", "level", "logger", "message"} <= set(r) for r in records)
    assert any(r["message"].startswith("sign-in as analyst") for r in records)
    assert stack.tokens[Role.ANALYST] not in err
