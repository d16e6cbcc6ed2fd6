"""A real OpenID Connect provider for the single sign-on tests (tests/oidc/provider/provider.mjs,
panva's certified `oidc-provider`, installed by .ci/run with its lockfile).

`IdentityProvider` writes the provider's JSON config (signing keys, clients, users and their
groups, access token lifetimes), starts `node provider.mjs` on a fixed loopback port and can
restart it with other keys (a rotation, as an IdP does it: a new key first, the old one still
published, then the old one removed), always at the same issuer URL. `sign_in` walks the
authorization-code flow with PKCE through the provider's own login form over HTTP, as a
browser would, with Authlib's client.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import requests
from authlib.common.security import generate_token
from authlib.integrations.requests_client import OAuth2Session
from joserfc.jwk import RSAKey

PROVIDER_DIR = Path(__file__).parent / "oidc" / "provider"
AUDIENCE = "urn:chorus"
OTHER_AUDIENCE = "urn:another-service"
#: A public client for the tests' own sign-ins (never followed: the code is read off the redirect).
TEST_CLIENT = "chorus-test"
TEST_REDIRECT = "http://127.0.0.1:9/callback"
#: The same, with access tokens that live 2 seconds.
SHORT_CLIENT = "chorus-test-short"
CLI_CLIENT = "chorus-cli"
DASHBOARD_CLIENT = "chorus-dashboard"
DASHBOARD_SECRET = "dashboard-secret-for-tests-only"
#: The people of the tests: one per mapped group, one in a group Chorus does not map, and one in two.
USERS = {
    "alice": {"email": "alice@example.com", "groups": ["chorus-leadership", "everyone"]},
    "olga": {"email": "olga@example.com", "groups": ["privacy-office", "everyone"]},
    "omar": {"email": "omar@example.com", "groups": ["chorus-operators"]},
    "ivan": {"email": "ivan@example.com", "groups": ["telemetry-senders"]},
    "nina": {"email": "nina@example.com", "groups": ["everyone"]},
}
#: The `[oidc.roles]` of the tests' server.
ROLE_GROUPS = {"analyst": ["chorus-leadership"], "auditor": ["privacy-office"],
               "admin": ["chorus-operators"], "ingest": ["telemetry-senders"]}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def new_key(kid: str) -> dict[str, Any]:
    return RSAKey.generate_key(2048, parameters={"kid": kid, "use": "sig", "alg": "RS256"}).as_dict(private=True)


def oidc_toml(issuer: str, *, jwks_cache_seconds: int = 300) -> str:
    roles = "\n".join(f"{role} = {json.dumps(groups)}" for role, groups in ROLE_GROUPS.items())
    return (f'[oidc]\nissuer = "{issuer}"\naudience = "{AUDIENCE}"\nroles_claim = "groups"\n'
            f'name_claim = "email"\njwks_cache_seconds = {jwks_cache_seconds}\n\n[oidc.roles]\n{roles}\n')


class IdentityProvider:
    """`node provider.mjs` at http://127.0.0.1:PORT, restartable with other signing keys."""

    def __init__(self, directory: Path, *, dashboard_redirect: str = "http://127.0.0.1:9/oidc/callback",
                 dashboard_ttl: int = 300) -> None:
        self.port = free_port()
        self.issuer = f"http://127.0.0.1:{self.port}"
        self._config_file = directory / "provider.json"
        self.keys = [new_key("key-1")]
        self._process: subprocess.Popen[str] | None = None
        self._clients = [
            {"client_id": TEST_CLIENT, "token_endpoint_auth_method": "none", "redirect_uris": [TEST_REDIRECT],
             "grant_types": ["authorization_code", "refresh_token"], "response_types": ["code"]},
            {"client_id": SHORT_CLIENT, "token_endpoint_auth_method": "none", "redirect_uris": [TEST_REDIRECT],
             "grant_types": ["authorization_code"], "response_types": ["code"]},
            {"client_id": CLI_CLIENT, "token_endpoint_auth_method": "none", "response_types": [],
             "grant_types": ["urn:ietf:params:oauth:grant-type:device_code", "refresh_token"]},
            {"client_id": DASHBOARD_CLIENT, "client_secret": DASHBOARD_SECRET,
             "redirect_uris": [dashboard_redirect], "post_logout_redirect_uris": [],
             "grant_types": ["authorization_code", "refresh_token"], "response_types": ["code"]},
        ]
        self._ttl = {"default": 300, SHORT_CLIENT: 2, DASHBOARD_CLIENT: dashboard_ttl}

    def start(self, keys: list[dict[str, Any]] | None = None) -> None:
        """(Re)start the provider publishing `keys` (the first signs); sessions start afresh."""
        self.stop()
        if keys is not None:
            self.keys = keys
        self._config_file.write_text(json.dumps({
            "issuer": self.issuer, "port": self.port, "keys": self.keys, "users": USERS,
            "resources": [AUDIENCE, OTHER_AUDIENCE], "clients": self._clients, "accessTokenTTL": self._ttl}))
        log = self._config_file.with_suffix(".log")
        with log.open("a") as stderr:  # its development-mode warnings
            self._process = subprocess.Popen(["node", str(PROVIDER_DIR / "provider.mjs"), str(self._config_file)],
                                             stdout=subprocess.PIPE, stderr=stderr, text=True)
        assert self._process.stdout is not None
        line = self._process.stdout.readline()
        if not line.startswith("ready "):
            raise RuntimeError(f"the OpenID Connect provider did not start: {line}{log.read_text()}")

    def stop(self) -> None:
        if self._process is not None:
            self._process.terminate()
            self._process.wait(timeout=10)
            self._process = None

    def metadata(self) -> dict[str, Any]:
        answer = requests.get(f"{self.issuer}/.well-known/openid-configuration", timeout=10)
        answer.raise_for_status()
        return dict(answer.json())

    def sign_in(self, user: str, *, client_id: str = TEST_CLIENT, resource: str = AUDIENCE) -> dict[str, Any]:
        """The token response of `user` signing in with the authorization-code flow and PKCE."""
        meta = self.metadata()
        client = OAuth2Session(client_id, redirect_uri=TEST_REDIRECT, scope="openid email chorus",
                               code_challenge_method="S256")
        verifier = generate_token(48)
        url, _state = client.create_authorization_url(meta["authorization_endpoint"], code_verifier=verifier,
                                                      resource=resource)
        browser = requests.Session()
        callback = _follow_login(browser, url, user)
        return dict(client.fetch_token(meta["token_endpoint"], authorization_response=callback,
                                       code_verifier=verifier, resource=resource))


def approve_device(url: str, user: str) -> str:
    """Confirm a device login's user code at `url` and sign in as `user`, as a person would in
    a browser; the provider's last page."""
    browser = requests.Session()
    answer = browser.get(url, timeout=10)
    for _ in range(10):
        form = re.search(r'<form[^>]*action="([^"]+)"[^>]*>(.*?)</form>', answer.text, re.S)
        if form is None:
            return answer.text
        fields = dict(re.findall(r'<input[^>]*name="([^"]+)"[^>]*value="([^"]*)"', form.group(2)))
        if 'name="login"' in form.group(2):
            fields.update(login=user, password="any")
        answer = browser.post(urljoin(answer.url, form.group(1)), data=fields, timeout=10)
    raise AssertionError(f"the device login did not finish; last at {answer.url}")


def _follow_login(browser: requests.Session, url: str, user: str) -> str:
    """Follow the provider's redirects and fill its login form; the redirect to the client."""
    for _ in range(10):
        answer = browser.get(url, allow_redirects=False, timeout=10)
        if answer.status_code in (302, 303):
            url = urljoin(url, answer.headers["Location"])
            if url.startswith(TEST_REDIRECT) or "code=" in urlsplit(url).query:
                return url
            continue
        form = re.search(r'<form[^>]*action="([^"]+)"[^>]*>(.*?)</form>', answer.text, re.S)
        assert form, answer.text[:500]
        fields = dict(re.findall(r'<input[^>]*name="([^"]+)"[^>]*value="([^"]*)"', form.group(2)))
        fields.update(login=user, password="any")
        posted = browser.post(urljoin(url, form.group(1)), data=fields, allow_redirects=False, timeout=10)
        url = urljoin(url, posted.headers["Location"])
    raise AssertionError(f"no redirect back to the client; last at {url}")

