"""Dashboard sign-in through the company's OpenID Connect provider: the authorization-code flow
with PKCE (S256), with Authlib's OAuth 2.0 client (docs/dashboard.md, "Single sign-on").

The dashboard is a confidential client (or a public one, without a secret) that asks the
provider for an access token for the Chorus server's audience (`resource`, RFC 8707) and calls
the API with it, so the server's role check and the ledger's `by` are the person's own. What
a sign-in in progress needs (state, PKCE verifier, the page to return to) stays in this
process, keyed by a random id in a cookie, for at most `PENDING_SECONDS`; the tokens stay in
the server-side session (`sessions.py`), never in the browser. An access token about to expire
is renewed with the refresh token; a refused renewal (the person signed out at the provider,
or their session there was revoked) ends the dashboard session. Signing out revokes the
refresh token at the provider (RFC 7009) where it offers revocation.
"""

from __future__ import annotations

import contextlib
import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import requests
from authlib.common.security import generate_token
from authlib.integrations.base_client.errors import OAuthError
from authlib.integrations.requests_client import OAuth2Session

from chorus.server.front.discovery import HTTP_TIMEOUT, DiscoveryError, provider_metadata

#: Seconds a person may take at the provider's login page.
PENDING_SECONDS = 600.0
#: Sign-ins in progress at most (a flood of abandoned ones evicts the oldest).
MAX_PENDING = 10_000
#: An access token this close to its expiry is renewed before the next call.
RENEW_BEFORE = timedelta(seconds=30)
SCOPE = "openid email"


class SsoError(Exception):
    """A sign-in or renewal failed; the message says why without a token or a claim."""


@dataclass(frozen=True, slots=True)
class SsoSettings:
    """The dashboard's registration at the provider; `audience` is the Chorus server's `[oidc]
    audience`, asked for as the resource indicator."""

    issuer: str
    client_id: str
    audience: str
    client_secret: str | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class Grant:
    """What a signed-in person holds: the access token for the API and how to renew it."""

    access_token: str = field(repr=False)
    refresh_token: str | None = field(repr=False)
    expires_at: datetime

    def due(self, now: datetime) -> bool:
        return now >= self.expires_at - RENEW_BEFORE


@dataclass(frozen=True, slots=True)
class _Pending:
    state: str
    verifier: str = field(repr=False)
    next: str | None
    started: float


class SignOn:
    """The provider's endpoints (discovered once) and the sign-ins in progress."""

    def __init__(self, settings: SsoSettings) -> None:
        self.settings = settings
        self._metadata: dict[str, Any] | None = None
        self._pending: OrderedDict[str, _Pending] = OrderedDict()
        self._lock = threading.Lock()

    def _endpoints(self) -> dict[str, Any]:
        if self._metadata is None:
            try:
                self._metadata = provider_metadata(self.settings.issuer)
            except DiscoveryError as exc:
                raise SsoError(str(exc)) from None
        return self._metadata

    def _client(self, redirect_uri: str, state: str | None = None) -> OAuth2Session:
        return OAuth2Session(self.settings.client_id, self.settings.client_secret, scope=SCOPE,
                             redirect_uri=redirect_uri, state=state, code_challenge_method="S256",
                             token_endpoint_auth_method="client_secret_basic" if self.settings.client_secret
                             else "none")

    def begin(self, redirect_uri: str, next_page: str | None) -> tuple[str, str]:
        """(the provider's authorization URL, the id of this sign-in for the browser's cookie)."""
        verifier = generate_token(64)
        url, state = self._client(redirect_uri).create_authorization_url(
            self._endpoints()["authorization_endpoint"], code_verifier=verifier, resource=self.settings.audience)
        key = secrets.token_urlsafe(32)
        now = time.monotonic()
        with self._lock:
            while self._pending and (len(self._pending) >= MAX_PENDING
                                     or now - next(iter(self._pending.values())).started > PENDING_SECONDS):
                self._pending.popitem(last=False)
            self._pending[key] = _Pending(state, verifier, next_page, now)
        return url, key

    def finish(self, key: str | None, redirect_uri: str, callback_url: str,
               now: datetime) -> tuple[Grant, str | None]:
        """The grant of the sign-in `key` from the provider's redirect, and the page to return to.
        Each sign-in finishes once; a replayed or forged callback is refused."""
        with self._lock:
            pending = self._pending.pop(key or "", None)
        if pending is None or time.monotonic() - pending.started > PENDING_SECONDS:
            raise SsoError("this sign-in has expired or was not started in this browser: sign in again")
        try:
            token = self._client(redirect_uri, pending.state).fetch_token(
                self._endpoints()["token_endpoint"], authorization_response=callback_url,
                code_verifier=pending.verifier, resource=self.settings.audience, timeout=HTTP_TIMEOUT)
        except (OAuthError, requests.RequestException, ValueError) as exc:
            raise SsoError(f"the identity provider refused the sign-in ({_why(exc)})") from None
        return _grant(token, now), pending.next

    def renew(self, grant: Grant, now: datetime) -> Grant:
        """A fresh access token from the refresh token; `SsoError` when the provider refuses it."""
        if grant.refresh_token is None:
            raise SsoError("your sign-in has expired: sign in again")
        try:
            token = self._client("").refresh_token(self._endpoints()["token_endpoint"],
                                                   refresh_token=grant.refresh_token,
                                                   resource=self.settings.audience, timeout=HTTP_TIMEOUT)
        except (OAuthError, requests.RequestException, ValueError) as exc:
            raise SsoError(f"your sign-in could not be renewed ({_why(exc)}): sign in again") from None
        renewed = _grant(token, now)
        return renewed if renewed.refresh_token else Grant(renewed.access_token, grant.refresh_token,
                                                           renewed.expires_at)

    def revoke(self, grant: Grant) -> None:
        """Revoke the refresh token at the provider, if it offers revocation (best effort)."""
        endpoint = self._endpoints().get("revocation_endpoint")
        if endpoint and grant.refresh_token:
            # On failure the refresh token still ends with the person's session at the provider.
            with contextlib.suppress(OAuthError, requests.RequestException):
                self._client("").revoke_token(endpoint, token=grant.refresh_token,
                                              token_type_hint="refresh_token", timeout=HTTP_TIMEOUT)


def _grant(token: dict[str, Any], now: datetime) -> Grant:
    access = token.get("access_token")
    if not isinstance(access, str) or not access:
        raise SsoError("the identity provider sent no access token")
    expires_in = token.get("expires_in")
    lifetime = float(expires_in) if isinstance(expires_in, (int, float)) else 300.0
    return Grant(access, token.get("refresh_token"), now + timedelta(seconds=lifetime))


def _why(exc: Exception) -> str:
    """The OAuth error code (e.g. invalid_grant), or the kind of failure; never a token."""
    return str(getattr(exc, "error", None) or type(exc).__name__)
