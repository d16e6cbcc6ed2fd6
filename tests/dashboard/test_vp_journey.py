"""A VP's minute in the real Chromium, on a company that really grew (tests/dashboard/vp_data.py:
35 teams in 8 orgs, 8 weeks, adoption 30% -> 65%, the default configuration and plan).

From the page alone: the landing page states the growth as not noise, with its slope and the
change against 8 weeks ago; the org rows are sorted by the figure chosen (adoption, then its
change); the org filter travels to the other pages; and nothing of it spends. Every page is
shot at 1280 and 390 pixels (test-artifacts/screenshots/company-*.png).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from playwright.sync_api import Browser

from chorus.server.dashboard import Gateway, create_app
from chorus.server.dashboard.wsgi_server import DashboardServer
from chorus.server.model.roles import Role
from chorus.server.transport.grpc_server import Server
from chorus.v1 import audit_pb2, audit_pb2_grpc, common_pb2, release_pb2, release_pb2_grpc

from .test_browser import (  # noqa: F401
    LAPTOP,
    PHONE,
    Visit,
    browser,
    overflowing,
    shows,
    table_rows,
    visit,
    visits,
)
from .vp_data import ORGS, TEAMS, WEEKS, build, org_of

pytestmark = pytest.mark.slow  # a real browser and a gRPC server


class Company:
    def __init__(self, data: Path) -> None:
        self.chorus, self.clock, self.weeks = build(data)
        self.tokens = {role: self.chorus.tokens.create(role, f"{role.value}-vp", self.clock.now(), actor="test")[0]
                       for role in (Role.ANALYST, Role.AUDITOR)}
        self.server = Server(self.chorus, "127.0.0.1:0")
        self.server.start()
        self.channel = grpc.insecure_channel(self.server.address)

    def edits_accepted(self, window: str, node: str = "/") -> release_pb2.Estimate:
        """The node's share of edits accepted as the release path answers it (a read)."""
        ratio = release_pb2.StatisticRequest(statistic=common_pb2.STATISTIC_RATIO,
                                             denominator=["ai.suggestions_accepted", "ai.suggestions_rejected"])
        request = release_pb2.ReleaseRequest(window=window, nodes=[node], validate_only=True,
                                             metrics=["ai.suggestions_accepted"], statistics=[ratio])
        reply = release_pb2_grpc.ReleaseServiceStub(self.channel).Release(
            request, metadata=(("authorization", f"Bearer {self.tokens[Role.ANALYST]}"),), timeout=30)
        return next(e for t in reply.teams if t.team == node for e in t.estimates
                    if e.statistic == common_pb2.STATISTIC_RATIO)

    def spent(self) -> list[tuple[str, str, str]]:
        reply = audit_pb2_grpc.AuditServiceStub(self.channel).GetBudget(
            audit_pb2.GetBudgetRequest(page_size=1000),
            metadata=(("authorization", f"Bearer {self.tokens[Role.AUDITOR]}"),), timeout=30)
        return sorted((b.window, b.team, b.spent) for b in reply.budgets)


@pytest.fixture(scope="module")
def company(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Company]:
    built = Company(tmp_path_factory.mktemp("vp") / "data")
    yield built
    built.channel.close()
    built.server.stop(grace=0)


@pytest.fixture(scope="module")
def dashboard(company: Company) -> Iterator[str]:
    gateway = Gateway(company.server.address)
    server = DashboardServer(create_app(gateway), "127.0.0.1:0")
    server.start()
    yield server.url
    server.stop()
    gateway.close()


def test_the_vp_sees_growth_where_it_happens_and_spends_nothing(
        browser: Browser, dashboard: str, company: Company, visits: list[Visit]) -> None:  # noqa: F811
    before = company.spent()
    laptop = visit(visits, browser, dashboard)
    laptop.sign_in(company.tokens[Role.ANALYST])
    page = laptop.page
    page.wait_for_url(f"{dashboard}/overview")
    answer = page.locator("#answer-sentence").inner_text()
    assert re.fullmatch(r"Company adoption: growing about \d+\.\d points a week; this is not noise\.", answer), answer
    assert f"Slope over the {WEEKS} windows {company.weeks[0]} to {company.weeks[-1]}" in page.locator(
        ".answer-detail").inner_text()
    assert f"Against {company.weeks[0]}: +" in page.locator(".answer-detail").inner_text()
    assert page.locator("#company-adoption svg[role=img]:visible").count() == 1
    laptop.shot("company-landing-desktop")

    # Is it helping: the share of AI edits accepted next to adoption, with its interval, both as
    # the release path computed them (the plan released them at close), and last week's beside it.
    tile = page.locator(".tile", has=page.get_by_role("heading", name="Company edits accepted"))
    now, earlier = company.edits_accepted(company.weeks[-1]), company.edits_accepted(company.weeks[-2])
    assert shows(tile.locator(".tile-value").inner_text(), now.value)
    low, high = re.fullmatch(r"95% interval (\S+) to (\S+)", tile.locator(".tile-interval").first.inner_text()).groups()
    assert shows(low, max(now.value - now.ci95, 0)) and shows(high, min(now.value + now.ci95, 1))
    assert tile.locator(".tile-change").inner_text().startswith("was ") and company.weeks[-2] in tile.locator(
        ".tile-change").inner_text()
    assert shows(tile.locator(".tile-change").inner_text().split()[1], earlier.value)
    assert tile.locator(".tile-verdict").inner_text() in ("the two 95% intervals overlap: no clear change",
                                                          "the two 95% intervals do not overlap: a real change")
    assert [t.split("\n")[0] for t in page.locator(".tile h3").all_inner_texts()][:2] == [
        "Company adoption", "Company edits accepted"]
    height = page.evaluate("document.documentElement.scrollHeight")
    assert height <= 3.3 * LAPTOP["height"], height  # about three screens for 35 teams

    # Where: the orgs as rows, sorted by adoption (largest first), then by its change.
    rows = table_rows(page, "Adoption per org under Company")
    assert len(rows) == 8
    landing = {org: row["value"] for org, row in rows.items()}
    landing["Company"] = page.locator(".tile", has=page.get_by_role("heading", name="Company adoption")).locator(
        ".tile-value").inner_text()
    shares = [float(r["value"].rstrip("%")) for r in rows.values()]
    assert shares == sorted(shares, reverse=True)
    assert page.locator("#orgs .panel").count() == 8  # small multiples
    page.get_by_label("Sort orgs by").select_option("change")
    page.get_by_role("button", name="Show").click()
    page.wait_for_url(re.compile(r".*sort=change.*"))
    changes = [float(r["change"].split()[0]) for r in table_rows(page, "Adoption per org under Company").values()]
    assert changes == sorted(changes, reverse=True)
    assert page.get_by_role("heading", name=re.compile("^Where: adoption per org, sorted by change")).count() == 1

    # Teams too small for a weekly number are said to be, and averaged.
    page.locator("#adoption summary").first.click()  # team detail is one click away
    assert "Teams with too few people for a weekly number (a 95% interval wider than ±25 points)" in page.locator(
        "#adoption").inner_text()
    too_few = page.locator("#adoption .chart-notes li").all_inner_texts()
    assert len(too_few) == len(ORGS) and all(
        re.fullmatch(r"Too few people for a weekly number, counted in [a-z]+: [a-z0-9, -]+", line) for line in too_few)
    page.locator("#adoption-average summary").first.click()
    assert page.locator("#adoption-average svg[role=img]:visible").count() == 1
    averaged = table_rows(page, "Adoption per team over windows")  # the small teams' own releases
    assert set(averaged) == {t for line in too_few for t in line.split(": ")[1].split(", ")}
    laptop.shot("company-landing-teams-open-desktop")

    # One org: the filter carries to the other pages.
    page.get_by_label("Org", exact=True).select_option("engineering")
    page.get_by_role("button", name="Show").click()
    page.wait_for_url(re.compile(r".*org=engineering.*"))
    assert page.locator("#answer-sentence").inner_text().startswith("Org engineering adoption:")
    laptop.shot("company-landing-org-desktop")
    nav = page.get_by_role("navigation", name="Dashboard pages")
    for label in ("Organisation", "Trends"):
        assert "org=engineering" in (nav.get_by_role("link", name=label).get_attribute("href") or "")

    # Trends by org: the company's line, then each org on one scale, then the teams whose weekly
    # number says something; the others named, counted in their org, and averaged.
    laptop.open("/trends")
    assert page.get_by_role("heading", name=f"Company adoption over the last {WEEKS} windows").count() == 1
    latest = table_rows(page, "Adoption per org over")  # keyed by org: its last row is the latest window
    assert {row["window"] for row in latest.values()} == {company.weeks[-1]}
    assert page.locator("#trend-orgs .panel h3").all_inner_texts() == [
        f"{org}: {latest[org]['value']}" for org in sorted(ORGS)]
    drawn = set(page.locator("#trend .panel h3").all_inner_texts())
    lines = page.locator("#trend .chart-notes li").all_inner_texts()
    named = {t for line in lines for t in line.split(": ")[1].split(", ")}
    assert drawn and named and drawn | named == set(TEAMS) and not drawn & named
    assert all(f"counted in {org_of(t)}:" in next(line for line in lines if t in line.split(": ")[1].split(", "))
               for t in named)
    assert set(table_rows(page, "Adoption per team over windows")) == named  # the averaged view
    yearly = ("Privacy over a year: Over any twelve months, everything released reveals at most epsilon 29.8 "
              "(delta 1e-08) about any one person: 54 weeks at rho 0.138 each, every budget spent in full.")
    assert page.locator("#yearly-bound").inner_text() == yearly  # the default policy's (README)
    laptop.shot("company-trends-desktop")
    # Is it helping, over time: the same released ratio per window, for the company and each org.
    laptop.open("/trends?statistic=ratio")
    assert page.get_by_role("heading", name=f"Company edits accepted over the last {WEEKS} windows").count() == 1
    per_window = table_rows(page, "Company: Edits accepted per window")
    assert all(shows(per_window[w]["value"], company.edits_accepted(w).value) for w in company.weeks)
    assert page.locator("#trend-orgs .panel").count() == len(ORGS)
    assert page.get_by_text("Not released for any team in these windows.").count() == 1
    laptop.shot("company-trends-edits-accepted-desktop")
    laptop.open("/trends?org=engineering")
    assert page.get_by_role("heading", name=f"Org engineering adoption over the last {WEEKS} windows").count() == 1
    assert page.locator("#trend-orgs").count() == 0  # an org has no orgs below it here
    assert [line.split(":")[0] for line in page.locator("#trend .chart-notes li").all_inner_texts()] == [
        "Too few people for a weekly number, counted in engineering"]

    # The Organisation page: the landing page's numbers (never "not released" for them), the trend
    # of each org, the trail and the CSV; short.
    laptop.open("/orgs")
    shown = {node: row["value"] for node, row in table_rows(page, "Adoption under Company").items()}
    assert shown == landing
    assert page.locator("#org-trends .panel").count() == len(ORGS)
    assert page.locator("#adoption").get_by_text("not released").count() == 0
    assert page.get_by_role("link", name="Download these numbers as CSV").count() >= 2
    page.get_by_role("navigation", name="Orgs below Company").get_by_role("link", name="engineering").click()
    page.wait_for_url(re.compile(r".*node=engineering.*"))
    assert page.get_by_role("navigation", name="Organisation path").get_by_role("link", name="Company").count() == 1
    team_bars = table_rows(page, "Adoption under engineering")
    assert set(team_bars) == {"engineering", *(t for t in TEAMS if org_of(t) == "engineering")}

    phone = visit(visits, browser, dashboard, PHONE)
    phone.sign_in(company.tokens[Role.ANALYST])
    heights: dict[tuple[str, str], int] = {}
    for path in ("/overview", "/overview?org=engineering", "/orgs", "/trends", "/histogram", "/spend"):
        for who, viewport in (("desktop", laptop), ("phone", phone)):
            viewport.open(path)
            name = path.strip("/").replace("?", "-").replace("=", "-")
            viewport.shot(f"company-{name}-{who}")
            heights[(path, who)] = viewport.page.evaluate("document.documentElement.scrollHeight")
        assert overflowing(phone.page) == [], path
    # The Organisation page was about 7,700 pixels tall (ten laptop screens): now under four.
    assert heights[("/orgs", "desktop")] <= 4 * LAPTOP["height"], heights
    assert heights[("/orgs", "phone")] <= 6 * PHONE["height"], heights
    assert heights[("/overview", "desktop")] <= 3.3 * LAPTOP["height"], heights
    auditor = visit(visits, browser, dashboard)
    auditor.sign_in(company.tokens[Role.AUDITOR])
    auditor_phone = visit(visits, browser, dashboard, PHONE)
    auditor_phone.sign_in(company.tokens[Role.AUDITOR])
    auditor.open("/statement")
    assert auditor.page.locator("#yearly-bound").inner_text() == yearly
    for path in ("/budget", "/ledger", "/policies", "/statement"):
        auditor.open(path)
        auditor.shot(f"company-{path.strip('/')}-desktop")
        auditor_phone.open(path)
        auditor_phone.shot(f"company-{path.strip('/')}-phone")
        assert overflowing(auditor_phone.page) == [], path
    assert company.spent() == before  # reading every page spent nothing
