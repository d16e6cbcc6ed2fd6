"""The dashboard in headless Chromium (Playwright): real sign-in, every page for each role, the
numbers on screen against the gRPC API, role separation, keyboard use, phone width, and no request
to any host but the dashboard. Screenshots go to test-artifacts/screenshots/."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from chorus.server.dashboard import create_app
from chorus.server.dashboard.wsgi_server import DashboardServer
from chorus.server.model.roles import Role
from chorus.v1 import common_pb2

from .conftest import ANALYST_PAGES, AUDITOR_PAGES, DAYS, LATEST, Stack, build_stack

pytestmark = pytest.mark.slow  # a real browser

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SCREENSHOTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "screenshots"
LAPTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}

if not CHROMIUM.exists():
    if os.environ.get("CI"):
        pytest.fail(f"{CHROMIUM} is missing: CI must install chromium (apt-get install chromium)",
                    pytrace=False)
    pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium)", allow_module_level=True)

@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    built = build_stack(tmp_path_factory.mktemp("browser") / "data")
    yield built
    built.close()


@pytest.fixture(scope="module")
def dashboard(stack: Stack) -> Iterator[str]:
    server = DashboardServer(create_app(stack.gateway()), "127.0.0.1:0")
    server.start()
    yield server.url
    server.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield launched
        launched.close()


class Visit:
    """A browser context that records every request it makes."""

    def __init__(self, browser: Browser, base: str, viewport: dict[str, int]) -> None:
        self.base = base
        self.context = browser.new_context(viewport=viewport)  # type: ignore[arg-type]
        self.requests: list[str] = []
        self.context.on("request", lambda request: self.requests.append(request.url))
        self.page = self.context.new_page()

    def open(self, path: str) -> Page:
        self.page.goto(self.base + path)
        return self.page

    def sign_in(self, token: str) -> None:
        page = self.open("/login")
        page.get_by_label("Token").fill(token)
        page.get_by_role("button", name="Sign in").click()
        page.wait_for_load_state()

    def shot(self, name: str) -> None:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)

    def foreign_requests(self) -> list[str]:
        own = urlsplit(self.base).netloc
        return [url for url in self.requests if urlsplit(url).netloc != own]


@pytest.fixture
def visits(browser: Browser, dashboard: str) -> Iterator[list[Visit]]:
    """Browser contexts for one test; afterwards, none of them may have left the dashboard."""
    opened: list[Visit] = []
    yield opened
    for visit in opened:
        assert visit.requests, "the test made no request at all"
        assert visit.foreign_requests() == []
        visit.context.close()


def visit(visits: list[Visit], browser: Browser, dashboard: str,
          viewport: dict[str, int] = LAPTOP) -> Visit:
    opened = Visit(browser, dashboard, viewport)
    visits.append(opened)
    return opened


def table_rows(page: Page, caption: str) -> dict[str, dict[str, str]]:
    """A table's body, keyed by its row header, each row as {column name: its text} (tables sit
    behind a "The numbers as a table" disclosure, so the text is read whether it is open or not)."""
    table = page.locator("table", has=page.locator("caption", has_text=caption))
    rows: dict[str, dict[str, str]] = {}
    for row in table.locator("tbody tr").all():
        cells = {cell.get_attribute("data-column") or "": (cell.text_content() or "").strip()
                 for cell in row.locator("td").all()}
        rows[(row.locator("th").text_content() or "").strip()] = cells
    return rows


def overflowing(page: Page) -> list[str]:
    """Elements reaching past the right edge of the screen, other than inside a scrollable table."""
    return page.evaluate("""() => {
        const edge = document.documentElement.clientWidth + 1;
        return [...document.querySelectorAll("body *")]
            .filter(e => e.getBoundingClientRect().right > edge && !e.parentElement.closest(".table-wrap"))
            .map(e => `${e.tagName}.${e.className}: ${Math.round(e.getBoundingClientRect().right)}`);
    }""")


def shows(text: str, value: float) -> bool:
    """Whether `text` (as the page formats numbers) is `value` rounded to the digits shown."""
    percent = text.endswith("%")
    digits = text.rstrip("%").replace(",", "")
    decimals = len(digits.partition(".")[2])
    number = float(digits) / (100 if percent else 1)
    tolerance = 0.5 * 10 ** -decimals / (100 if percent else 1) + 1e-12
    return abs(number - value) <= tolerance


def test_the_vps_journey_from_sign_in_to_the_change_between_two_windows(
        browser: Browser, dashboard: str, stack: Stack, visits: list[Visit]) -> None:
    """A VP signs in and lands on the planned numbers of the latest window: headline tiles with the
    change since the window before and its interval, team comparisons that say whether they rank,
    then an earlier window. Nothing of it spends budget."""
    before = (stack.budgets(), stack.ledger_size())
    laptop = visit(visits, browser, dashboard)
    laptop.sign_in(stack.tokens[Role.ANALYST])
    page = laptop.page
    page.wait_for_url(f"{dashboard}/overview")
    assert page.get_by_role("heading", level=1).inner_text() == f"Overview: window {LATEST}"
    nav = page.get_by_role("navigation", name="Dashboard pages")
    assert nav.get_by_role("link").all_inner_texts() == ["Overview", "Organisation", "Trends", "Distribution",
                                                      "Release more"]
    laptop.shot("vp-overview-desktop")

    tiles = page.locator(".tile")
    adoption_tile = tiles.filter(has=page.get_by_role("heading", name="Company adoption"))
    assert adoption_tile.locator(".tile-value").inner_text().endswith("%")
    assert f"since {DAYS[1]}" in adoption_tile.locator(".tile-change").inner_text()
    assert adoption_tile.locator(".tile-interval").nth(1).inner_text().startswith("95% interval of the change")
    assert adoption_tile.locator(".tile-verdict").inner_text() in (
        "up by more than the noise: a real change at 95%", "down by more than the noise: a real change at 95%",
        "within the noise: this could be no change at all")
    assert tiles.filter(has=page.get_by_role("heading", name="Company total of ai.tokens")).count() == 1
    assert page.get_by_text("How to read this:").count() == 1

    released = {t.team: t for t in stack.release(LATEST, [common_pb2.STATISTIC_ADOPTION,
                                                          common_pb2.STATISTIC_SUM]).teams}
    adoption = table_rows(page, "Adoption per team, window")
    tokens = table_rows(page, "Total of ai.tokens per team")
    for team in ("team-red", "team-blue"):
        estimates = {(e.metric, e.statistic): e for e in released[team].estimates}
        assert all(e.cached for e in estimates.values())  # released by the plan when the window closed
        share = estimates[("", common_pb2.STATISTIC_ADOPTION)]
        assert shows(adoption[team]["value"], share.value), (adoption[team], share)
        assert shows(adoption[team]["ci95"], share.ci95)
        total = estimates[("ai.tokens", common_pb2.STATISTIC_SUM)]
        assert shows(tokens[team]["value"], total.value) and shows(tokens[team]["ci95"], total.ci95)
    assert adoption["team-tiny"]["outcome"].startswith("suppressed: team team-tiny has 3 people")
    page.locator("#adoption summary").first.click()  # team detail is behind its title on the landing page
    # Teams of 5 and 6 at epsilon 0.05 are too few people for a weekly number: averaged instead.
    assert "Too few people for a weekly number" in page.locator("#adoption figcaption").inner_text()
    page.locator("#adoption-average summary").first.click()
    ranking = page.locator("#adoption-average .ranking").inner_text()
    assert "rank" in ranking
    # Charts use the page width: the wide drawing is the one shown on a laptop.
    chart = page.locator("#adoption svg.chart-wide")
    assert chart.is_visible() and not page.locator("#adoption svg.chart-narrow").is_visible()
    main = page.locator("main").bounding_box()
    box = chart.bounding_box()
    assert main is not None and box is not None and box["width"] >= 0.9 * (main["width"] - 32)

    page.get_by_label("Window", exact=True).select_option(DAYS[1])
    page.get_by_role("button", name="Show").click()
    page.wait_for_url(re.compile(f".*window={DAYS[1]}.*"))  # the form's navigation is asynchronous
    assert f"since {DAYS[0]}" in page.locator(".tile-change").first.inner_text()
    laptop.shot("vp-change-between-windows-desktop")

    laptop.open("/trends?statistic=sum&metric=ai.tasks_completed")
    laptop.shot("vp-trends-desktop")
    trend = page.locator("table", has=page.locator("caption", has_text="per team over the last 3 closed"))
    assert trend.locator("tbody tr").count() == 3 * len(DAYS)
    assert page.locator("#trend-scope svg[role=img]:visible").count() == 1  # the company first
    # Teams of 5 and 6 people say nothing in a week: named, counted in the company, and averaged;
    # the suppressed team keeps its panel with the reason.
    assert page.locator("#trend .chart-notes").inner_text() == (
        "Too few people for a weekly number, counted in the company: team-blue, team-red")
    assert page.locator("#trend svg[role=img]:visible").count() == 1
    assert "suppressed" in (page.locator("#trend svg[role=img]:visible").text_content() or "")
    assert page.locator("#average svg[role=img]:visible").count() == 1
    laptop.open(f"/histogram?window={DAYS[0]}&team=team-red&metric=ai.requests")
    assert page.get_by_role("heading", name="Not released").is_visible()
    laptop.shot("vp-histogram-not-released-desktop")
    for path in AUDITOR_PAGES:
        laptop.open(path)
        assert page.get_by_role("heading", level=1).inner_text().startswith("Not your page"), path

    phone = visit(visits, browser, dashboard, PHONE)
    phone.sign_in(stack.tokens[Role.ANALYST])
    for path in (*ANALYST_PAGES, f"/overview?window={DAYS[1]}"):
        phone.open(path)
        assert overflowing(phone.page) == [], path
        assert phone.page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"], path
        phone.shot(f"analyst-{path.strip('/').split('?')[0]}{'-previous' if '?' in path else ''}-phone")
    phone.open("/overview")
    phone.page.locator("#adoption summary").first.click()
    assert phone.page.locator("#adoption svg.chart-narrow").is_visible()
    phone.shot("vp-overview-phone")
    phone.open("/trends?statistic=sum&metric=ai.tasks_completed")
    phone.shot("vp-trends-phone")
    assert (stack.budgets(), stack.ledger_size()) == before


def test_the_explicit_spend_journey_with_preview_and_confirmation(
        browser: Browser, dashboard: str, stack: Stack, visits: list[Visit]) -> None:
    """A distribution nobody planned: the page prices it, the preview shows the cost per team, an
    overspend is refused before sending, and only the confirmation (stating the cost) spends."""
    laptop = visit(visits, browser, dashboard)
    laptop.sign_in(stack.tokens[Role.ANALYST])
    page = laptop.open(f"/histogram?window={LATEST}&team=team-red&metric=ai.requests")
    before = {b.team: b.spent for b in stack.budgets(LATEST)}
    link = page.locator(".not-released li", has_text="distribution of ai.requests").get_by_role("link")
    assert link.inner_text().startswith("Preview releasing it")
    link.click()
    page.get_by_role("heading", name=f"Preview: histogram of ai.requests for team team-red, window {LATEST}"
                     ).wait_for()
    rows = table_rows(page, "Cost for team team-red")
    assert set(rows) == {"team team-red"}  # the link named team-red: only team-red is previewed
    red = rows["team team-red"]
    assert red["epsilon"] == "0.05" and red["remaining"] == "0.7"
    assert red["remaining_after"] == "0.65" and float(red["interval"]) > 0
    assert page.get_by_role("checkbox", name="team team-red").is_checked()
    assert not page.get_by_role("checkbox", name="team team-blue").is_checked()
    laptop.shot("spend-preview-desktop")
    assert {b.team: b.spent for b in stack.budgets(LATEST)} == before  # previews are free

    # Asking for more than is left says so, and offers nothing to confirm.
    page.get_by_label("Epsilon per team").fill("0.9")
    page.get_by_role("button", name="Preview the cost").click()
    page.wait_for_url(re.compile(r".*epsilon=0\.9.*"))
    assert "would overspend the privacy budget" in page.get_by_role("alert").inner_text()
    assert page.get_by_role("button", name=re.compile("^Release for")).count() == 0
    laptop.shot("spend-overspend-desktop")
    phone = visit(visits, browser, dashboard, PHONE)
    phone.sign_in(stack.tokens[Role.ANALYST])
    phone.open(page.url.removeprefix(dashboard))
    assert overflowing(phone.page) == []
    phone.shot("spend-overspend-phone")

    page.get_by_label("Epsilon per team").fill("")
    page.get_by_role("button", name="Preview the cost").click()
    page.wait_for_url(re.compile(r".*epsilon=(&.*)?$"))
    phone.open(page.url.removeprefix(dashboard))
    phone.shot("spend-preview-phone")
    page.get_by_role("button", name="Release for team team-red and spend epsilon 0.05 per team").click()
    page.get_by_role("heading", level=1, name="Released").wait_for()
    laptop.shot("spend-done-desktop")
    after = {b.team: b.spent for b in stack.budgets(LATEST)}
    assert after == {**before, "team-red": "0.35"}  # the one team the link named, and no other
    page.get_by_role("link", name="See the numbers").click()
    page.wait_for_url(re.compile(r".*/histogram\?.*"))
    page.get_by_label("Team", exact=True).select_option("team-red")
    page.get_by_role("button", name="Show").click()
    page.wait_for_url(re.compile(r".*team=team-red.*"))
    buckets = table_rows(page, "People per ai.requests range in team team-red")
    assert list(buckets) == ["under 50", "50-200", "200-500", "500-1K", "1K+"]
    histogram = stack.release(LATEST, [common_pb2.STATISTIC_HISTOGRAM], teams=("team-red",),
                              metrics=("ai.requests",)).teams[0].estimates[0]
    assert [int(row["value"].replace(",", "")) for row in buckets.values()] == list(histogram.bucket_counts)
    laptop.shot("distribution-desktop")
    phone.open(page.url.removeprefix(dashboard))
    assert overflowing(phone.page) == []
    phone.shot("distribution-phone")
    assert {b.team: b.spent for b in stack.budgets(LATEST)} == after  # reading it is free


def test_privacy_officer_sees_budgets_ledger_policies_and_statement(
        browser: Browser, dashboard: str, stack: Stack, visits: list[Visit]) -> None:
    stack.release(DAYS[1], [common_pb2.STATISTIC_COUNT], metrics=("ai.tokens",))
    laptop = visit(visits, browser, dashboard)
    laptop.sign_in(stack.tokens[Role.AUDITOR])
    page = laptop.page
    assert page.url == f"{dashboard}/budget"
    nav = page.get_by_role("navigation", name="Dashboard pages")
    assert nav.get_by_role("link").all_inner_texts() == ["Budget", "Ledger", "Policies", "Privacy statement"]

    laptop.open(f"/budget?window={DAYS[1]}")
    laptop.shot("auditor-budget-laptop")
    shown = table_rows(page, f"Privacy budget per team, window {DAYS[1]}")
    on_screen = {team: (row["window"], row["cap"], row["spent"], row["remaining"], row["releases"])
                 for team, row in shown.items()}
    assert on_screen == {b.team: (b.window, b.cap, b.spent, b.remaining, str(b.releases))
                         for b in stack.budgets(DAYS[1])}
    assert shown["team-red"]["spent"] != "0" and shown["team-tiny"]["spent"] == "0"

    laptop.open("/ledger")
    laptop.shot("auditor-ledger-laptop")
    assert page.get_by_role("heading", name="Chain verification: verified").is_visible()
    kinds = page.locator("table.ledger tbody td code").all_inner_texts()
    assert "release" in kinds and "window_close" in kinds
    payload = page.locator("table.ledger pre").first
    assert not payload.is_visible()
    page.get_by_text("Show payload").first.click()  # <details> opens without JavaScript
    assert payload.is_visible() and payload.inner_text().startswith("{")

    laptop.open("/policies")
    laptop.shot("auditor-policies-laptop")
    page.get_by_role("link", name=DAYS[0]).click()
    page.get_by_role("heading", name=f"Policy of window {DAYS[0]}").wait_for()  # navigation is asynchronous
    assert page.get_by_role("heading", name=f"Policy of window {DAYS[0]}").is_visible()

    laptop.open("/statement")
    laptop.shot("auditor-statement-laptop")
    assert page.get_by_role("heading", name="What nobody can see").is_visible()

    for path in ANALYST_PAGES:
        laptop.open(path)
        assert page.get_by_role("heading", level=1).inner_text().startswith("Not your page"), path

    phone = visit(visits, browser, dashboard, PHONE)
    phone.sign_in(stack.tokens[Role.AUDITOR])
    for path in AUDITOR_PAGES:
        phone.open(path)
        assert overflowing(phone.page) == [], path
        assert phone.page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"], path
        phone.shot(f"auditor-{path.strip('/')}-phone")


def test_keyboard_only_use_sign_in_skip_link_and_sign_out(browser: Browser, dashboard: str,
                                                         stack: Stack, visits: list[Visit]) -> None:
    laptop = visit(visits, browser, dashboard)
    page = laptop.open("/login")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.textContent") == "Skip to main content"
    outline = page.evaluate("getComputedStyle(document.activeElement).outlineStyle")
    assert outline != "none"  # the focused element shows where it is
    page.keyboard.press("Enter")
    page.wait_for_url(re.compile(r".*/login#main$"))  # the jump is asynchronous under load
    page.get_by_label("Token").focus()
    page.keyboard.type(stack.tokens[Role.ANALYST])
    page.keyboard.press("Enter")
    page.wait_for_url(f"{dashboard}/overview")
    laptop.shot("keyboard-signed-in")

    # Tab order reaches the navigation and the sign-out button, which works from the keyboard.
    for _ in range(20):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.textContent") == "Sign out":
            break
    else:
        pytest.fail("Tab never reached the Sign out button")
    page.keyboard.press("Enter")
    page.wait_for_url(re.compile(r".*/login$"))
    laptop.open("/overview")
    assert urlsplit(page.url).path == "/login"


def test_a_wrong_token_shows_an_alert_and_no_session(browser: Browser, dashboard: str,
                                                     visits: list[Visit]) -> None:
    laptop = visit(visits, browser, dashboard)
    laptop.sign_in("chorus_" + "0" * 43)
    alert = laptop.page.get_by_role("alert")
    assert "unknown or revoked token" in alert.inner_text()
    assert all(c["name"] != "chorus_session" for c in laptop.context.cookies())
