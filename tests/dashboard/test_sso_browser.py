"""Single sign-on in the real Chromium: a person signs in through a real OpenID Connect
provider's login page (tests/_idp.py), the dashboard calls the API with their own access token,
and they see exactly what their group's role allows. People whose groups give no dashboard role
are refused with the server's reason; signing out ends the session; a session revoked at the
provider ends the dashboard session at the next renewal, and an active one is renewed."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from playwright.sync_api import Browser, BrowserContext, Page

from chorus.server.dashboard import create_app
from chorus.server.dashboard.sso import RENEW_BEFORE, Grant, SignOn, SsoSettings
from chorus.server.dashboard.wsgi_server import DashboardServer
from tests._idp import AUDIENCE, DASHBOARD_CLIENT, DASHBOARD_SECRET, USERS, IdentityProvider, free_port, oidc_toml
from tests._secrets import register

from .conftest import ANALYST_PAGES, AUDITOR_PAGES, DASHBOARD_TOML, Stack, build_stack
from .test_browser import browser  # noqa: F401  (the module's Chromium, a fixture)

pytestmark = pytest.mark.slow  # a real browser, a Node.js provider and servers on sockets

register(*(user["email"] for user in USERS.values()))  # people's names never reach the log

#: The dashboard's access tokens live this long, so a renewal is due a few seconds after sign-in.
TOKEN_SECONDS = int(RENEW_BEFORE.total_seconds()) + 4


class RecordingSignOn(SignOn):
    """The dashboard's real sign-on, remembering the last grant so a test can ask the provider
    about its refresh token."""

    last: Grant | None = None

    def finish(self, *args: Any, **kwargs: Any) -> tuple[Grant, str | None]:
        grant, next_page = super().finish(*args, **kwargs)
        register(*(t for t in (grant.access_token, grant.refresh_token) if t))  # never in a log record
        self.last = grant
        return grant, next_page


class Site:
    def __init__(self, idp: IdentityProvider, url: str, chorus: str, sso: RecordingSignOn) -> None:
        self.idp = idp
        self.url = url
        self.chorus = chorus
        self.sso = sso

    def refresh_token_active(self) -> bool:
        """The provider's own answer (token introspection, RFC 7662) about the last refresh token."""
        assert self.sso.last is not None and self.sso.last.refresh_token
        answer = requests.post(self.idp.metadata()["introspection_endpoint"], timeout=10,
                               data={"token": self.sso.last.refresh_token, "token_type_hint": "refresh_token"},
                               auth=(DASHBOARD_CLIENT, DASHBOARD_SECRET))
        answer.raise_for_status()
        return bool(answer.json()["active"])


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    directory = tmp_path_factory.mktemp("sso")
    port = free_port()
    idp = IdentityProvider(directory, dashboard_redirect=f"http://127.0.0.1:{port}/oidc/callback",
                           dashboard_ttl=TOKEN_SECONDS)
    idp.start()
    stack: Stack = build_stack(directory / "data", toml=DASHBOARD_TOML + "\n" + oidc_toml(idp.issuer))
    sso = RecordingSignOn(SsoSettings(idp.issuer, DASHBOARD_CLIENT, AUDIENCE, DASHBOARD_SECRET))
    server = DashboardServer(create_app(stack.gateway(), sso=sso), f"127.0.0.1:{port}")
    server.start()
    yield Site(idp, server.url, stack.server.address, sso)
    server.stop()
    stack.close()
    idp.stop()


@pytest.fixture
def context(browser: Browser) -> Iterator[BrowserContext]:  # noqa: F811 (the imported fixture)
    opened = browser.new_context()
    yield opened
    opened.close()


def sign_in(context: BrowserContext, site: Site, user: str, path: str = "/login", *, admitted: bool = True) -> Page:
    """From the dashboard's sign-in page through the provider's own login form and back: to a
    dashboard page if `admitted`, else to the callback's refusal."""
    page = context.new_page()
    page.goto(site.url + path)
    page.get_by_role("link", name="Sign in with your company account").click()
    page.wait_for_url(f"{site.idp.issuer}/**")
    page.locator("input[name=login]").fill(user)
    page.locator("input[name=password]").fill("any password: the test provider checks none")
    page.get_by_role("button", name="Sign-in").click()
    if admitted:  # the callback's page moves on by itself to the dashboard
        page.wait_for_url(lambda url: url.startswith(site.url) and "/oidc/callback" not in url)
    else:
        page.wait_for_url(f"{site.url}/oidc/callback**")
    page.wait_for_load_state()
    return page


def nav_links(page: Page) -> list[str]:
    return [a.get_attribute("href") or "" for a in page.locator("nav[aria-label='Dashboard pages'] a").all()]


@pytest.mark.parametrize(("user", "mine", "theirs"), [("alice", ANALYST_PAGES, AUDITOR_PAGES),
                                                      ("olga", AUDITOR_PAGES, ANALYST_PAGES)])
def test_a_person_signs_in_through_the_provider_and_sees_exactly_their_roles_pages(
        context: BrowserContext, site: Site, user: str, mine: tuple[str, ...], theirs: tuple[str, ...]) -> None:
    page = sign_in(context, site, user)
    assert page.url == site.url + mine[0]
    assert nav_links(page) == list(mine)
    for path in mine:
        assert page.goto(site.url + path).status == 200, path  # type: ignore[union-attr]
    for path in theirs:
        assert page.goto(site.url + path).status == 403, path  # type: ignore[union-attr]


def test_the_page_asked_for_is_where_sign_in_returns(context: BrowserContext, site: Site) -> None:
    page = sign_in(context, site, "olga", path="/ledger")
    assert page.url == site.url + "/ledger"


@pytest.mark.parametrize(("user", "reason"), [
    ("nina", "the signed-in user is in no group that [oidc.roles] maps to a role"),
    ("omar", "may not read releases or the audit trail"),  # admin: not a dashboard role
])
def test_people_without_a_dashboard_role_are_refused(context: BrowserContext, site: Site, user: str,
                                                     reason: str) -> None:
    page = sign_in(context, site, user, admitted=False)
    assert reason in page.locator("main").inner_text()
    assert page.goto(site.url + "/overview").url.startswith(site.url + "/login")  # type: ignore[union-attr]


def test_signing_out_ends_the_session_and_revokes_the_refresh_token(context: BrowserContext, site: Site) -> None:
    page = sign_in(context, site, "alice")
    assert site.refresh_token_active()
    cookies = context.cookies()
    page.get_by_role("button", name="Sign out").click()
    page.wait_for_url(f"{site.url}/login")
    assert not site.refresh_token_active()
    context.add_cookies(cookies)  # the old session cookie, replayed
    assert page.goto(site.url + "/overview").url.startswith(site.url + "/login")  # type: ignore[union-attr]


def test_an_active_session_is_renewed_before_its_token_expires(context: BrowserContext, site: Site) -> None:
    page = sign_in(context, site, "alice")
    time.sleep(TOKEN_SECONDS - RENEW_BEFORE.total_seconds() + 1)  # the renewal is due
    assert page.goto(site.url + "/trends").status == 200  # type: ignore[union-attr]
    time.sleep(TOKEN_SECONDS - RENEW_BEFORE.total_seconds() + 1)
    assert page.goto(site.url + "/overview").status == 200  # type: ignore[union-attr]


def test_a_session_ended_at_the_provider_ends_the_dashboard_session(context: BrowserContext, site: Site) -> None:
    page = sign_in(context, site, "alice")
    page.goto(f"{site.idp.issuer}/session/end")  # sign out at the provider: its grants are revoked
    page.get_by_role("button", name="Yes, sign me out").click()
    page.wait_for_load_state()
    time.sleep(TOKEN_SECONDS - RENEW_BEFORE.total_seconds() + 1)
    page.goto(site.url + "/overview")
    assert page.url.startswith(site.url + "/login")
    assert "Your single sign-on session has ended" in page.locator("main").inner_text()


def test_the_command_takes_the_single_sign_on_options(site: Site, tmp_path: Path) -> None:
    """`chorus dashboard --oidc-*` offers the provider's sign-in and sends people there with PKCE."""
    secret = tmp_path / "client-secret"
    secret.write_text(DASHBOARD_SECRET + "\n")
    proc = subprocess.Popen([sys.executable, "-m", "chorus.server.cli", "dashboard", "--server", site.chorus,
                             "--listen", "127.0.0.1:0", "--oidc-issuer", site.idp.issuer,
                             "--oidc-client-id", DASHBOARD_CLIENT, "--oidc-client-secret-file", str(secret),
                             "--oidc-audience", AUDIENCE], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert proc.stdout is not None
        ready = re.search(r"chorus dashboard on (http://127\.0\.0\.1:\d+)", proc.stdout.readline())
        assert ready
        login = requests.get(ready[1] + "/login", timeout=10)
        assert "Sign in with your company account" in login.text
        away = requests.get(ready[1] + "/login/sso", allow_redirects=False, timeout=10)
        assert away.status_code == 303
        target = urlsplit(away.headers["Location"])
        query = parse_qs(target.query)
        assert f"{target.scheme}://{target.netloc}" == site.idp.issuer
        assert query["client_id"] == [DASHBOARD_CLIENT] and query["code_challenge_method"] == ["S256"]
        assert query["resource"] == [AUDIENCE] and query["redirect_uri"] == [ready[1] + "/oidc/callback"]
        assert DASHBOARD_SECRET not in away.headers["Location"]
    finally:
        proc.terminate()
        proc.wait(timeout=15)
