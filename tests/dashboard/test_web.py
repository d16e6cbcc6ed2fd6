"""The dashboard through Flask's test client against a real gRPC server: sign-in, sessions, CSRF,
role separation, CSV downloads, release-once caching and the security headers."""

from __future__ import annotations

import csv
import html
import io
import logging
import re
import tomllib
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.datastructures import MultiDict

from chorus.server.dashboard import Gateway, create_app
from chorus.server.dashboard.sessions import SessionStore
from chorus.server.dashboard.web import LOGIN_CSRF_COOKIE, SESSION_COOKIE
from chorus.server.front.statement import yearly_bound
from chorus.server.model import config
from chorus.server.model.roles import Role
from chorus.v1 import common_pb2

from .conftest import (
    ANALYST_PAGES,
    AUDITOR_PAGES,
    DASHBOARD_TOML,
    DAYS,
    LATEST,
    PLAN_COST,
    Stack,
    build_stack,
    csrf_of,
    login,
)

#: Every test here starts a server, a process or a browser (tests/conftest.py, the fast lane).
pytestmark = pytest.mark.slow

ADOPTION, SUM = common_pb2.STATISTIC_ADOPTION, common_pb2.STATISTIC_SUM


def cookie_header(response, name: str) -> str:  # type: ignore[no-untyped-def]
    return next(h for h in response.headers.getlist("Set-Cookie") if h.startswith(f"{name}="))


def csv_rows(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


# Sign-in and sessions

def test_sign_in_with_an_analyst_token_starts_a_session_with_a_strict_http_only_cookie(
        client: FlaskClient, stack: Stack, sessions: SessionStore) -> None:
    response = login(client, stack.tokens[Role.ANALYST])
    assert response.status_code == 303
    assert response.headers["Location"] == "/overview"
    cookie = cookie_header(response, SESSION_COOKIE)
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie
    assert "Secure" not in cookie  # plain http on loopback
    assert len(sessions) == 1
    # The session id is random, and the token itself never reaches the browser.
    assert stack.tokens[Role.ANALYST] not in cookie
    page = client.get("/overview")
    assert page.status_code == 200
    assert stack.tokens[Role.ANALYST] not in page.get_data(as_text=True)


def test_cookies_are_secure_when_served_over_https(app: Flask, stack: Stack) -> None:
    client = app.test_client()
    form = client.get("/login", base_url="https://dashboard.example")
    assert "Secure" in cookie_header(form, LOGIN_CSRF_COOKIE)
    response = client.post("/login", base_url="https://dashboard.example",
                           data={"csrf": csrf_of(form), "token": stack.tokens[Role.AUDITOR]})
    assert response.status_code == 303
    assert "Secure" in cookie_header(response, SESSION_COOKIE)


def test_auditor_lands_on_the_budget_page(client: FlaskClient, stack: Stack) -> None:
    assert login(client, stack.tokens[Role.AUDITOR]).headers["Location"] == "/budget"


@pytest.mark.parametrize(("token", "message"), [
    ("chorus_" + "x" * 43, "unknown or revoked token"),
    ("not a token", "not a Chorus token"),
    ("", "not a Chorus token"),
])
def test_bad_tokens_are_refused_without_a_session(client: FlaskClient, sessions: SessionStore, token: str,
                                                  message: str) -> None:
    response = login(client, token)
    assert response.status_code == 401
    assert message in response.get_data(as_text=True)
    assert not any(h.startswith(f"{SESSION_COOKIE}=") for h in response.headers.getlist("Set-Cookie"))
    assert len(sessions) == 0


@pytest.mark.parametrize("role", [Role.ADMIN, Role.INGEST])
def test_admin_and_ingest_tokens_cannot_sign_in(client: FlaskClient, stack: Stack, sessions: SessionStore,
                                                role: Role) -> None:
    response = login(client, stack.tokens[role])
    assert response.status_code == 401
    assert len(sessions) == 0
    assert "sign in with an analyst or auditor token" in response.get_data(as_text=True)


def test_sign_in_without_the_login_csrf_token_is_refused(client: FlaskClient, stack: Stack,
                                                         sessions: SessionStore) -> None:
    client.get("/login")
    response = client.post("/login", data={"csrf": "forged", "token": stack.tokens[Role.ANALYST]})
    assert response.status_code == 400
    fresh = FlaskClient(client.application)  # no login-CSRF cookie at all
    response = fresh.post("/login", data={"csrf": "", "token": stack.tokens[Role.ANALYST]})
    assert response.status_code == 400
    assert len(sessions) == 0


def test_sign_in_issues_a_new_session_id_rather_than_a_planted_one(client: FlaskClient, stack: Stack) -> None:
    client.set_cookie(SESSION_COOKIE, "planted-by-an-attacker")
    response = login(client, stack.tokens[Role.ANALYST])
    assert "planted-by-an-attacker" not in cookie_header(response, SESSION_COOKIE)


def test_pages_need_a_session_and_remember_where_you_were_going(client: FlaskClient, stack: Stack) -> None:
    for path in (*ANALYST_PAGES, *AUDITOR_PAGES, "/overview.csv?chart=adoption", "/statement.md"):
        response = client.get(path)
        assert response.status_code == 302, path
        assert response.headers["Location"].startswith("/login?next=")
    response = login(client, stack.tokens[Role.ANALYST], next_path="/trends?n=4")
    assert response.headers["Location"] == "/trends?n=4"


@pytest.mark.parametrize("target", ["//evil.example/", "https://evil.example/", "/\\evil.example"])
def test_sign_in_never_redirects_to_another_site(client: FlaskClient, stack: Stack, target: str) -> None:
    assert login(client, stack.tokens[Role.ANALYST], next_path=target).headers["Location"] == "/overview"


def test_sign_out_needs_the_csrf_token_and_ends_the_session(client: FlaskClient, stack: Stack,
                                                            sessions: SessionStore) -> None:
    login(client, stack.tokens[Role.ANALYST])
    page = client.get("/overview")
    assert client.post("/logout", data={"csrf": "forged"}).status_code == 400
    assert client.get("/overview").status_code == 200  # still signed in
    response = client.post("/logout", data={"csrf": csrf_of(page)})
    assert response.status_code == 303
    assert len(sessions) == 0
    assert client.get("/overview").status_code == 302


def test_a_session_expires_after_the_idle_timeout(app: Flask, stack: Stack) -> None:
    client = app.test_client()
    login(client, stack.tokens[Role.ANALYST])
    stack.clock.advance(timedelta(minutes=29))
    assert client.get("/overview").status_code == 200
    stack.clock.advance(timedelta(minutes=31))
    assert client.get("/overview").status_code == 302


def test_a_token_revoked_after_sign_in_ends_the_session(client: FlaskClient, stack: Stack,
                                                        sessions: SessionStore) -> None:
    login(client, stack.tokens[Role.AUDITOR])
    stack.chorus.tokens.revoke(f"{Role.AUDITOR.value}-dashboard-test", stack.clock.now(), actor="test")
    response = client.get("/budget")
    assert response.status_code == 302
    assert response.headers["Location"] == "/login?reason=revoked"
    assert len(sessions) == 0
    assert "no longer valid" in client.get("/login?reason=revoked").get_data(as_text=True)


# Roles

@pytest.mark.parametrize(("role", "own", "foreign"), [
    (Role.ANALYST, ANALYST_PAGES, (*AUDITOR_PAGES, "/budget.csv?chart=budget", "/statement.md")),
    (Role.AUDITOR, AUDITOR_PAGES, (*ANALYST_PAGES, "/overview.csv?chart=adoption")),
])
def test_each_role_sees_only_its_own_pages(client: FlaskClient, stack: Stack, role: Role,
                                           own: tuple[str, ...], foreign: tuple[str, ...]) -> None:
    login(client, stack.tokens[role])
    for path in own:
        page = client.get(path)
        assert page.status_code == 200, path
        body = page.get_data(as_text=True)
        nav = body[body.index("<nav"):body.index("</nav>")]
        for other in foreign:
            assert f'href="{other}"' not in nav
        for mine in own:
            assert f'href="{mine}"' in nav
    for path in foreign:
        denied = client.get(path)
        assert denied.status_code == 403, path
        assert "Not your page" in denied.get_data(as_text=True)


def test_an_auditor_opening_an_analyst_page_releases_nothing(client: FlaskClient, stack: Stack) -> None:
    login(client, stack.tokens[Role.AUDITOR])
    before = stack.ledger_size()
    assert client.get("/overview").status_code == 403
    assert stack.ledger_size() == before


# Numbers, caching and CSV

def test_overview_reads_the_planned_numbers_and_opening_it_spends_nothing(
        client: FlaskClient, stack: Stack) -> None:
    before = (stack.budgets(), stack.ledger_size())
    login(client, stack.tokens[Role.ANALYST])
    first = client.get("/overview").get_data(as_text=True)
    second = client.get("/overview?statistic=count").get_data(as_text=True)
    for path in ("/trends", "/histogram", f"/overview.csv?window={LATEST}&chart=ai-tokens", "/spend?preview=1"):
        assert client.get(path).status_code == 200, path
    assert (stack.budgets(), stack.ledger_size()) == before
    assert {b.spent for b in stack.budgets() if b.team != "team-tiny"} == {PLAN_COST}
    assert f"Company, window {LATEST} compared with {DAYS[-2]}" in first
    assert "Company adoption" in first and "Company total of ai.tokens" in first
    assert "How to read this:" in first and first.count("How to read this:") == 1
    assert "Not released" not in first  # every sum is planned
    assert "suppressed: team team-tiny has 3 people on the roster" in first
    # Counts are not planned (but ai.tokens's, for its mean): shown as not released, with their
    # cost and a way to release them.
    assert "Not released" in second and "people using it of ai.requests</strong>, window" in second
    assert "would cost epsilon 0.05 per team" in second
    assert ("not released for teams team-blue and team-red; would cost epsilon 0.05 per team."
            in " ".join(second.split()))
    # The link names exactly those teams, so the form it opens previews and sends only them.
    assert (f"/spend?window={LATEST}&amp;statistic=count&amp;metric=ai.requests&amp;team=team-blue&amp;"
            "team=team-red&amp;preview=1") in second


def test_headline_tiles_state_the_change_and_its_interval(client: FlaskClient, stack: Stack) -> None:
    login(client, stack.tokens[Role.ANALYST])
    body = " ".join(html.unescape(client.get(f"/overview?window={DAYS[1]}").get_data(as_text=True)).split())
    assert f"since {DAYS[0]}" in body and "95% interval of the change" in body
    assert ("a real change at 95%" in body) or ("this could be no change at all" in body)
    oldest = client.get(f"/overview?window={DAYS[0]}").get_data(as_text=True)
    assert "No earlier released window to compare with." in oldest


def test_team_comparisons_say_when_intervals_do_not_allow_ranking(client: FlaskClient, stack: Stack) -> None:
    login(client, stack.tokens[Role.ANALYST])
    body = client.get("/overview").get_data(as_text=True)
    assert body.count('class="ranking"') >= 2
    said = [line.strip() for line in body.splitlines() if 'class="ranking"' in line]
    assert all(("do not rank them" in s) or ("can be ranked as shown" in s) or ("neighbouring pairs" in s)
               for s in said), said
    # Said once, briefly; which pairs overlap is behind a disclosure.
    assert all(len(s) < 200 for s in said) and '<details class="overlaps"><summary>Which neighbours overlap' in body


def test_csv_downloads_hold_the_released_numbers_at_full_precision(
        client: FlaskClient, stack: Stack) -> None:
    login(client, stack.tokens[Role.ANALYST])
    response = client.get(f"/overview.csv?window={LATEST}&chart=ai-tokens")
    assert response.status_code == 200
    assert response.mimetype == "text/csv"
    assert response.headers["Content-Disposition"] == (
        f'attachment; filename="overview-{LATEST}-ai-tokens.csv"')
    rows = {r["team"]: r for r in csv_rows(response.get_data(as_text=True))}
    api = {t.team: t for t in stack.release(LATEST, [ADOPTION, SUM]).teams}
    assert set(rows) == set(api) == {"team-red", "team-blue", "team-tiny"}
    for team in ("team-red", "team-blue"):
        estimate = next(e for e in api[team].estimates if e.metric == "ai.tokens" and e.statistic == SUM)
        assert estimate.cached  # released by the plan when the window closed
        assert float(rows[team]["value"]) == estimate.value
        assert float(rows[team]["ci95"]) == estimate.ci95
        assert float(rows[team]["low"]) == max(0.0, estimate.value - estimate.ci95)
        assert float(rows[team]["high"]) == estimate.value + estimate.ci95
        assert rows[team]["epsilon"] == estimate.epsilon
    assert rows["team-tiny"]["outcome"].startswith("suppressed")
    assert rows["team-tiny"]["value"] == ""


def test_every_chart_on_every_analyst_page_has_a_table_and_a_working_csv_link(
        client: FlaskClient, stack: Stack) -> None:
    stack.release(LATEST, [common_pb2.STATISTIC_HISTOGRAM], metrics=("ai.tokens",))
    login(client, stack.tokens[Role.ANALYST])
    for path in ("/overview", "/trends", "/histogram"):
        body = client.get(path).get_data(as_text=True)
        figures = body.count("<figure>")
        assert figures >= 1, path
        assert body.count("<table>") == figures, path
        assert body.count("How to read this:") == 1, path
        links = [html.unescape(part.split('"', 1)[0])
                 for part in body.split('href="')[1:] if ".csv?" in part.split('"', 1)[0]]
        assert len(links) == figures, path
        for link in links:
            download = client.get(link)
            assert download.status_code == 200, link
            assert len(csv_rows(download.get_data(as_text=True))) >= 1, link


def test_trends_cover_the_last_windows_and_histogram_buckets_are_ranges(
        client: FlaskClient, stack: Stack) -> None:
    login(client, stack.tokens[Role.ANALYST])
    rows = csv_rows(client.get("/trends.csv?chart=trend&statistic=sum&metric=ai.requests&n=2")
                    .get_data(as_text=True))
    assert sorted({r["window"] for r in rows}) == list(DAYS[-2:])
    assert all(r["value"] for r in rows if r["team"] != "team-tiny")
    page = client.get(f"/histogram?window={DAYS[0]}&team=team-red&metric=ai.tokens").get_data(as_text=True)
    assert "<figure>" not in page and "Not released" in page  # never released: priced, not spent
    released = stack.release(DAYS[0], [common_pb2.STATISTIC_HISTOGRAM], teams=("team-red",),
                             metrics=("ai.tokens",)).teams[0].estimates[0]
    histogram = csv_rows(client.get(f"/histogram.csv?chart=histogram&window={DAYS[0]}&team=team-red"
                                    "&metric=ai.tokens").get_data(as_text=True))
    assert [int(r["value"]) for r in histogram] == list(released.bucket_counts)
    assert [r["bucket"] for r in histogram] == ["under 10K", "10K-50K", "50K-100K", "100K-150K", "150K+"]


def test_a_single_window_trend_keeps_its_interval(client: FlaskClient, stack: Stack) -> None:
    """Only the latest window has a released count: its interval is a whisker, not a zero-width band."""
    stack.release(LATEST, [common_pb2.STATISTIC_COUNT], metrics=("ai.requests",))
    login(client, stack.tokens[Role.ANALYST])
    body = client.get("/trends?statistic=count&metric=ai.requests&n=3").get_data(as_text=True)
    panel = body[body.index("chart-scope-0"):body.index("</svg>", body.index("chart-scope-0"))]
    assert '<path class="ci"' in panel and "<polygon" not in panel


def test_auditor_pages_show_budgets_policies_the_verified_ledger_and_the_statement(
        client: FlaskClient, stack: Stack) -> None:
    # An analyst's release first, so there is a budget spent and a release in the ledger.
    stack.release(LATEST, [SUM], teams=("team-red",), metrics=("ai.tokens",))
    login(client, stack.tokens[Role.AUDITOR])
    budget = {r["team"]: r for r in csv_rows(client.get(f"/budget.csv?chart=budget&window={LATEST}")
                                             .get_data(as_text=True))}
    api = {b.team: b for b in stack.budgets(LATEST)}
    assert {t: (r["cap"], r["spent"], r["remaining"], r["releases"]) for t, r in budget.items()} == {
        t: (b.cap, b.spent, b.remaining, str(b.releases)) for t, b in api.items()}
    assert budget["team-red"]["spent"] == PLAN_COST
    page = client.get(f"/budget?window={LATEST}").get_data(as_text=True)
    assert "the epsilon spent on releases so far" in page  # GetBudget's unit: this stack's policy is Laplace
    ledger = client.get("/ledger").get_data(as_text=True)
    assert "Chain verification: verified" in ledger
    assert f"All {stack.ledger_size()} entries verified" in ledger
    assert "<code>release</code>" in ledger
    policies = client.get(f"/policies?window={DAYS[0]}").get_data(as_text=True)
    assert f"Policy of window {DAYS[0]}" in policies and "ai.tasks_completed" in policies
    statement = client.get("/statement").get_data(as_text=True)
    assert "What nobody can see" in statement and "teams of at least 5 people" in statement
    markdown = client.get(f"/statement.md?window={DAYS[0]}")
    assert markdown.mimetype == "text/markdown"
    assert markdown.get_data(as_text=True).startswith("# Chorus privacy statement")


def test_ledger_pages_through_the_entries(client: FlaskClient, stack: Stack) -> None:
    for day in DAYS:  # 18 release entries per day: enough for two pages
        stack.release(day, [SUM, common_pb2.STATISTIC_COUNT, common_pb2.STATISTIC_HISTOGRAM],
                      metrics=("ai.tokens", "ai.requests", "ai.tasks_completed"))
    total = stack.ledger_size()
    assert total > 50
    login(client, stack.tokens[Role.AUDITOR])
    latest = client.get("/ledger").get_data(as_text=True)
    assert f"Ledger entries {total - 49} to {total}" in latest
    first = client.get("/ledger?from=1").get_data(as_text=True)
    assert "Ledger entries 1 to 50" in first and 'href="/ledger?from=51"' in first
    assert client.get(f"/ledger?from={total + 1}").status_code == 400


def test_bad_query_arguments_are_a_400_naming_the_value(client: FlaskClient, stack: Stack) -> None:
    login(client, stack.tokens[Role.ANALYST])
    response = client.get("/overview?statistic=median")
    assert response.status_code == 400
    text = html.unescape(response.get_data(as_text=True))
    assert "statistic='median' is not one of: sum, count, mean" in text
    assert client.get("/overview?window=2026-01-01").status_code == 400
    assert client.get("/trends?n=500").status_code == 400
    assert client.get("/overview.csv?chart=nope").status_code == 404


def test_security_headers_keep_every_request_on_the_dashboard(client: FlaskClient, stack: Stack) -> None:
    login(client, stack.tokens[Role.ANALYST])
    response = client.get("/overview")
    csp = response.headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "style-src 'self'" in csp and "form-action 'self'" in csp
    assert "script-src" not in csp  # no script is allowed at all (default-src 'none')
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["X-Frame-Options"] == "DENY"
    assert response.headers["Referrer-Policy"] == "no-referrer"
    assert "<script" not in response.get_data(as_text=True)


def test_a_spent_budget_never_breaks_the_landing_page(tmp_path: Path) -> None:
    """The plan spends every team's whole budget: the pages still show what is released, price the
    rest, and the release page says the overspend before anything is sent."""
    stack = build_stack(tmp_path / "data", DASHBOARD_TOML.replace('epsilon_per_window = "1"',
                                                                  f'epsilon_per_window = "{PLAN_COST}"'))
    try:
        client = create_app(stack.gateway()).test_client()
        login(client, stack.tokens[Role.ANALYST])
        before = (stack.budgets(), stack.ledger_size())
        assert {b.remaining for b in before[0] if b.team != "team-tiny"} == {"0"}
        for path in ("/overview", "/overview?statistic=count", "/trends?statistic=count", "/histogram"):
            assert client.get(path).status_code == 200, path
        preview = client.get(f"/spend?window={LATEST}&statistic=count&metric=ai.requests&team=team-red&preview=1")
        body = " ".join(preview.get_data(as_text=True).split())
        assert preview.status_code == 200
        assert "This release would overspend the privacy budget, so it cannot be sent." in body
        assert "Team team-red in 2026-11-25 needs epsilon 0.05 but has 0 left of 0.3." in body
        assert "Release and spend epsilon" not in body
        assert (stack.budgets(), stack.ledger_size()) == before
    finally:
        stack.close()


def test_spending_needs_a_preview_of_its_cost_and_a_confirmation(client: FlaskClient, stack: Stack) -> None:
    login(client, stack.tokens[Role.ANALYST])
    before = {b.team: b.spent for b in stack.budgets(LATEST)}
    query = f"window={LATEST}&statistic=histogram&metric=ai.requests&epsilon=0.1&team=team-red&team=team-blue"
    preview = client.get(f"/spend?{query}&preview=1")
    page = preview.get_data(as_text=True)
    rows = {r.split("</th>")[0]: r for r in page.split('<tr><th scope="row">')[1:]}
    assert set(rows) == {"team team-red", "team team-blue"}  # team-tiny is below k: never released, never charged
    assert '<td class="num" data-column="epsilon">0.1</td>' in rows["team team-red"]
    assert '<td class="num" data-column="remaining">0.7</td>' in rows["team team-red"]
    assert '<td class="num" data-column="remaining_after">0.6</td>' in rows["team team-red"]
    assert 'data-column="interval">' in rows["team team-red"]
    assert "Release for teams team-red and team-blue and spend epsilon 0.1 per team" in page
    assert {b.team: b.spent for b in stack.budgets(LATEST)} == before  # a preview spends nothing
    assert client.post("/spend", data={"window": LATEST, "statistic": "histogram"}).status_code == 400  # no CSRF
    done = client.post("/spend", data={"csrf": csrf_of(preview), "window": LATEST, "statistic": "histogram",
                                       "metric": "ai.requests", "epsilon": "0.1", "team": ["team-red", "team-blue"]})
    assert done.status_code == 200 and "Released distribution of ai.requests" in done.get_data(as_text=True)
    after = {b.team: b.spent for b in stack.budgets(LATEST)}
    assert after == {**before, "team-red": "0.4", "team-blue": "0.4"}
    again = client.get(f"/spend?{query}&preview=1").get_data(as_text=True)
    assert "Everything asked for is already released" in again and "Release and spend" not in again
    shown = client.get(f"/histogram?window={LATEST}&team=team-red&metric=ai.requests").get_data(as_text=True)
    assert "<figure>" in shown


def test_the_server_being_down_is_a_503_that_names_it(tmp_path: Path) -> None:
    stack = build_stack(tmp_path / "data")
    gateway = Gateway(stack.server.address)
    try:
        client = create_app(gateway).test_client()
        login(client, stack.tokens[Role.ANALYST])
        stack.close()
        response = client.get("/overview")
        assert response.status_code == 503
        text = response.get_data(as_text=True)
        assert f"the Chorus server at {stack.server.address} did not answer" in text
    finally:
        gateway.close()


def _confirm_form(page: str) -> list[tuple[str, str]]:
    """The hidden fields of the release page's confirmation form, as the browser would post them."""
    form = page.split('class="confirm"', 1)[1].split("</form>", 1)[0]
    return [(html.unescape(k), html.unescape(v)) for k, v in re.findall(r'name="([^"]+)" value="([^"]*)"', form)]


def test_the_one_team_link_charges_one_team(client: FlaskClient, stack: Stack) -> None:
    """Distribution's "Preview releasing it" for team-red: the form shows team-red only, and confirming
    it charges team-red's budget and no other team's."""
    login(client, stack.tokens[Role.ANALYST])
    before = {b.team: b.spent for b in stack.budgets(LATEST)}
    page = client.get(f"/histogram?window={LATEST}&team=team-red&metric=ai.requests").get_data(as_text=True)
    link = html.unescape(re.search(r'href="(/spend\?[^"]+)"', page)[1])  # type: ignore[index]
    assert "team=team-red" in link and "team-blue" not in link and "not released for team team-red" in page
    preview = client.get(link)
    body = preview.get_data(as_text=True)
    assert 'value="team-red" checked' in body and 'value="team-blue">' in body  # shown, not ticked
    rows = [r.split("</th>")[0] for r in body.split('<tr><th scope="row">')[1:]]
    assert rows == ["team team-red"]
    fields = _confirm_form(body)
    assert [v for k, v in fields if k == "team"] == ["team-red"] and not [k for k, _ in fields if k == "node"]
    done = client.post("/spend", data=MultiDict(fields))
    assert done.status_code == 200, done.get_data(as_text=True)
    after = {b.team: b.spent for b in stack.budgets(LATEST)}
    assert {t for t in after if after[t] != before[t]} == {"team-red"}
    assert Decimal(after["team-red"]) - Decimal(before["team-red"]) == Decimal("0.05")


def test_a_release_names_its_teams_or_sends_nothing(client: FlaskClient, stack: Stack) -> None:
    """The release page opened from the menu ticks nothing; a preview without a team previews nothing
    and a post without one is refused, with nothing charged."""
    login(client, stack.tokens[Role.ANALYST])
    before = (stack.budgets(), stack.ledger_size())
    page = client.get(f"/spend?window={LATEST}&statistic=histogram&metric=ai.tokens&preview=1")
    body = page.get_data(as_text=True)
    assert "Tick the teams (or orgs) to release for" in body and 'class="confirm"' not in body
    refused = client.post("/spend", data={"csrf": csrf_of(page), "window": LATEST, "statistic": "histogram",
                                          "metric": "ai.tokens"})
    assert refused.status_code == 400 and "name at least one team or org" in refused.get_data(as_text=True)
    bad = client.get(f"/spend?window={LATEST}&statistic=histogram&team=team-nope&preview=1")
    assert bad.status_code == 400 and "team='team-nope' is not one of" in html.unescape(bad.get_data(as_text=True))
    assert (stack.budgets(), stack.ledger_size()) == before


def test_the_ledger_filters_by_kind_window_and_team(client: FlaskClient, stack: Stack) -> None:
    """The privacy officer's "everything released about team X": kind release and team X, every
    entry of it naming team X; a bad kind is a 400 naming it."""
    login(client, stack.tokens[Role.AUDITOR])
    body = html.unescape(client.get("/ledger?kind=release&team=team-red").get_data(as_text=True))
    assert "everything released about team team-red" in body
    shown = re.findall(r'<pre>(.*?)</pre>', body, re.S)
    assert shown and all('"team": "team-red"' in p and '"release_id"' in p for p in shown)
    # The plan's noisy parts (active, four sums, the count under the mean of ai.tokens) in each window.
    assert len(shown) == 6 * len(DAYS)
    one = html.unescape(client.get(f"/ledger?kind=release&team=team-red&window={LATEST}").get_data(as_text=True))
    assert len(re.findall(r"<pre>", one)) == 6
    assert all(f'"window": "{LATEST}"' in p for p in re.findall(r'<pre>(.*?)</pre>', one, re.S))
    closes = html.unescape(client.get("/ledger?kind=window_close").get_data(as_text=True))
    assert "3 entries match" in closes
    bad = client.get("/ledger?kind=nope")
    assert bad.status_code == 400 and "kind=&#39;nope&#39; is not one of" in bad.get_data(as_text=True)


@pytest.mark.slow
@pytest.mark.parametrize("role", [Role.ANALYST, Role.AUDITOR, Role.ADMIN, Role.INGEST])
def test_the_sign_in_role_probe_logs_no_denial(client: FlaskClient, stack: Stack, role: Role,
                                               caplog: pytest.LogCaptureFixture) -> None:
    """Signing in learns the token's role from the server without calling a service it may not
    call, so an alert on denials sees none from the dashboard (issue 23)."""
    caplog.set_level(logging.DEBUG)
    signed_in = login(client, stack.tokens[role])
    assert (signed_in.status_code == 303) == (role in (Role.ANALYST, Role.AUDITOR))
    assert not [r for r in caplog.records if "denied" in r.getMessage()]


def test_trends_and_the_statement_state_the_yearly_bound_the_statement_computes(
        client: FlaskClient, stack: Stack, app: Flask) -> None:
    """One computation (front.statement.yearly_bound of the frozen policy) on both pages: the
    trends page reads it from what a release answer says (its unit and a team-window's cap)."""
    policy = config.parse(tomllib.loads(DASHBOARD_TOML)).policy
    expected = html.escape(yearly_bound(policy.budget_per_window, policy.window_length).summary())
    assert expected.startswith("Over any twelve months, everything released reveals at most epsilon 367 about")
    login(client, stack.tokens[Role.ANALYST])
    assert expected in client.get("/trends").get_data(as_text=True)
    auditor = app.test_client()
    login(auditor, stack.tokens[Role.AUDITOR])
    statement = auditor.get("/statement").get_data(as_text=True)
    assert expected in statement and "367 days at epsilon 1 each" in html.unescape(statement)


def test_a_mean_released_for_the_company_is_its_trend(client: FlaskClient, stack: Stack) -> None:
    """A mean does not add up from teams: the company's line is its own release (a derived
    estimate, without a release id of its own), and only where there is one."""
    mean = stack.release(LATEST, [common_pb2.STATISTIC_MEAN], nodes=("/",), metrics=("ai.tokens",)).teams[0]
    released = next(e for e in mean.estimates if e.statistic == common_pb2.STATISTIC_MEAN)
    login(client, stack.tokens[Role.ANALYST])
    rows = {r["window"]: r for r in csv_rows(client.get(
        "/trends.csv?chart=trend-scope&statistic=mean&metric=ai.tokens&n=3").get_data(as_text=True))}
    assert float(rows[LATEST]["value"]) == pytest.approx(max(released.value, 0.0))
    assert rows[DAYS[0]]["value"] == ""  # nothing released for the company then
