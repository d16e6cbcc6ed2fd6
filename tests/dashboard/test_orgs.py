"""The organisation page: company -> org -> team drill-down over real gRPC, consistent numbers,
node charges, small teams counted in their org."""

from __future__ import annotations

import csv
import html
import io
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask.testing import FlaskClient

from chorus.server.dashboard import create_app
from chorus.server.dashboard.sessions import SessionStore
from chorus.server.model.roles import Role
from chorus.v1 import common_pb2

from .conftest import LATEST, Stack, build_stack, login

#: Every test here starts a server, a process or a browser (tests/conftest.py, the fast lane).
pytestmark = pytest.mark.slow

ORGS = {"team-red": "engineering", "team-tiny": "engineering", "team-blue": "sales"}


@pytest.fixture
def org_stack(tmp_path: Path) -> Iterator[Stack]:
    built = build_stack(tmp_path / "data", orgs=ORGS)
    yield built
    built.close()


@pytest.fixture
def org_client(org_stack: Stack) -> FlaskClient:
    app = create_app(org_stack.gateway(), sessions=SessionStore(org_stack.clock))
    app.testing = True
    client = app.test_client()
    login(client, org_stack.tokens[Role.ANALYST])
    return client


def rows(client: FlaskClient, path: str) -> dict[str, dict[str, str]]:
    response = client.get(path)
    assert response.status_code == 200, path
    return {r["node"]: r for r in csv.DictReader(io.StringIO(response.get_data(as_text=True)))}


def release_nodes(stack: Stack, *nodes: str) -> None:
    """What `chorus report --level org --release` does: the page itself only reads."""
    stack.release(LATEST, [common_pb2.STATISTIC_ADOPTION, common_pb2.STATISTIC_SUM], nodes=nodes)


def test_the_page_reads_only_and_shows_what_the_overview_shows(org_client: FlaskClient, org_stack: Stack) -> None:
    """An org nobody released at its node is its teams' releases added up, as on the overview (never
    "not released" for a number another page shows); reading it spends nothing."""
    before = {b.team: b.spent for b in org_stack.budgets(LATEST)}
    table = rows(org_client, f"/orgs.csv?window={LATEST}&chart=adoption")
    engineering = table["engineering"]
    assert engineering["outcome"].startswith("from its ") and engineering["release"] == "post-processing"
    assert not engineering["outcome"].startswith("not released") and table["sales"]["outcome"].startswith("from its ")
    overview = {r["org"]: r for r in csv.DictReader(io.StringIO(org_client.get(
        f"/overview.csv?window={LATEST}&chart=orgs").get_data(as_text=True)))}
    assert float(engineering["value"]) == pytest.approx(float(overview["engineering"]["value"]))
    assert {b.team: b.spent for b in org_stack.budgets(LATEST)} == before


def test_the_company_page_links_down_to_each_org_and_charges_every_team_below(
        org_client: FlaskClient, org_stack: Stack) -> None:
    release_nodes(org_stack, "/", "engineering", "sales")
    body = org_client.get("/orgs").get_data(as_text=True)
    assert f"Organisation: Company, window {LATEST}" in body
    assert f'href="/orgs?window={LATEST}&amp;statistic=sum&amp;node=engineering">engineering</a> (9 people)' in body
    table = rows(org_client, f"/orgs.csv?window={LATEST}&chart=adoption")
    assert list(table) == ["Company", "engineering", "sales"]
    assert table["engineering"]["level"] == "org" and table["engineering"]["roster_size"] == "9"
    # Released at the nodes now: still the overview's numbers (the node's own release).
    overview = {r["org"]: r for r in csv.DictReader(io.StringIO(org_client.get(
        f"/overview.csv?window={LATEST}&chart=orgs").get_data(as_text=True)))}
    for org in ("engineering", "sales"):
        assert table[org]["outcome"] == "released for the org itself"
        assert float(table[org]["value"]) == pytest.approx(float(overview[org]["value"]))
    spent = {b.team: b.spent for b in org_stack.budgets(LATEST)}
    assert spent["team-tiny"] != "0"  # below k, never released alone, charged through its org


def test_drilling_into_an_org_shows_its_teams_consistent_and_its_small_team_inside_it(
        org_client: FlaskClient, org_stack: Stack) -> None:
    release_nodes(org_stack, "/", "engineering", "sales", "team-red")
    body = org_client.get(f"/orgs?window={LATEST}&node=engineering").get_data(as_text=True)
    assert f'<a href="/orgs?window={LATEST}&amp;statistic=sum&amp;node=/">Company</a>' in body
    table = rows(org_client, f"/orgs.csv?window={LATEST}&node=engineering&chart=total-of-ai-tokens")
    assert list(table) == ["engineering", "team-red", "team-tiny"]
    assert table["team-tiny"]["outcome"].startswith("suppressed: team team-tiny has 3 people")
    # team-red, engineering and the company all hold ai.tokens sums: the numbers shown are consistent
    assert table["team-red"]["consistent"] == table["engineering"]["consistent"] == "yes"
    assert table["engineering"]["consistent_value"] and table["engineering"]["raw"]  # both, in the CSV
    again = rows(org_client, f"/orgs.csv?window={LATEST}&node=engineering&chart=total-of-ai-tokens")
    assert again == table  # reads answer the stored releases, identically


def test_an_unknown_node_is_a_bad_request(org_client: FlaskClient) -> None:
    response = org_client.get(f"/orgs?window={LATEST}&node=marketing")
    assert response.status_code == 400
    assert f"node='marketing' is not in the organisation tree of window {LATEST}" in html.unescape(
        response.get_data(as_text=True))
