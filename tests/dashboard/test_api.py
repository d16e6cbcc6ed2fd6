"""The dashboard's JSON API over real HTTP, as a Grafana data source reads it: a bearer token,
paged records, the same numbers as `chorus report --format json`, and nothing spent."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from typer.testing import CliRunner

from chorus.server.cli import app as cli
from chorus.server.dashboard import create_app
from chorus.server.dashboard.wsgi_server import DashboardServer
from chorus.server.model.roles import Role

from .conftest import DAYS, LATEST, Stack

pytestmark = pytest.mark.slow  # a gRPC server and an HTTP server on sockets


@pytest.fixture
def base(stack: Stack) -> Iterator[str]:
    server = DashboardServer(create_app(stack.gateway()), "127.0.0.1:0")
    server.start()
    yield server.url
    server.stop()


def get(url: str, token: str | None) -> tuple[int, Any]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def every_page(url: str, token: str) -> list[dict[str, Any]]:
    found, page = [], ""
    while True:
        status, body = get(f"{url}&page_token={page}" if page else url, token)
        assert status == 200, body
        found += body["records"]
        page = body["next_page_token"]
        if not page:
            return found


def report_json(stack: Stack, *args: str) -> list[dict[str, Any]]:
    result = CliRunner().invoke(cli, ["report", "--server", stack.server.address, "--token",
                                      stack.tokens[Role.ANALYST], "--format", "json", *args])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@pytest.mark.parametrize("query, args", [
    ("", []),
    (f"window={DAYS[0]}&statistic=mean&statistic=count&metric=ai.tokens",
     ["--window", DAYS[0], "--statistic", "mean", "--statistic", "count", "--metric", "ai.tokens"]),
    ("team=team-red&statistic=histogram&metric=ai.requests",
     ["--team", "team-red", "--statistic", "histogram", "--metric", "ai.requests"]),
])
def test_the_api_answers_what_chorus_report_json_prints(base: str, stack: Stack, query: str,
                                                        args: list[str]) -> None:
    before = (stack.budgets(), stack.ledger_size())
    token = stack.tokens[Role.ANALYST]
    paged = every_page(f"{base}/api/v1/report?{query}&page_size=2", token)
    assert paged == report_json(stack, *args)
    assert len(paged) > 2  # more than one page was read
    assert (stack.budgets(), stack.ledger_size()) == before  # reading it spends nothing


def test_the_api_lists_windows_and_keeps_the_dashboards_rules(base: str, stack: Stack) -> None:
    status, body = get(f"{base}/api/v1/windows", stack.tokens[Role.ANALYST])
    assert status == 200 and [w["id"] for w in body["windows"]] == [LATEST, *reversed(DAYS[:-1])]
    assert get(f"{base}/api/v1/report", None)[0] == 401
    status, body = get(f"{base}/api/v1/report", stack.tokens[Role.AUDITOR])
    assert status == 403 and "analyst" in body["error"]
    assert get(f"{base}/api/v1/report", "chorus_not-a-token")[0] == 401
    status, body = get(f"{base}/api/v1/report?page_size=0", stack.tokens[Role.ANALYST])
    assert status == 400 and body["error"] == "page_size='0' must be a whole number from 1 to 5000"
    status, body = get(f"{base}/api/v1/report?statistic=median", stack.tokens[Role.ANALYST])
    assert status == 400 and body["error"].startswith("statistic='median' is not one of: ")
    status, body = get(f"{base}/api/v1/report?window=2030-01-01", stack.tokens[Role.ANALYST])
    assert status == 404 and "2030-01-01" in body["error"]
