"""`chorus login`: a person's access token from the company's OpenID Connect provider, by the
device authorization grant (RFC 8628), written to a token file (mode 0600) that every other
command reads like a `chorus_` token file (`--token-file`, `CHORUS_TOKEN_FILE`).

The CLI is a public client (no secret): it asks the provider for a user code, the person
approves it in any browser, and the CLI polls the token endpoint at the interval the provider
sets (slower on `slow_down`) until approval, refusal or expiry. The access token is asked for
the Chorus server's audience (`resource`, RFC 8707), so the server checks it like the
dashboard's. Nothing but the access token is written; when it expires, log in again.

`device_login` is the function other commands call (a client context with OIDC settings).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import requests
import typer
from authlib.integrations.base_client.errors import OAuthError
from authlib.integrations.requests_client import OAuth2Session

from chorus.server.cli._common import TOKEN_FILE_ENV, ExitCode, console, create_private_file, fail
from chorus.server.front.discovery import HTTP_TIMEOUT, DiscoveryError, provider_metadata
from chorus.server.model.oidc import check_issuer

DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
SCOPE = "openid email"
#: RFC 8628 §3.5: a `slow_down` answer adds 5 seconds to the polling interval.
SLOW_DOWN_SECONDS = 5


class LoginFailed(Exception):
    """The provider did not issue a token; the message says why (never a token or code)."""


@dataclass(frozen=True, slots=True)
class OidcLogin:
    """Where and as whom the CLI signs in: the server's `[oidc]` issuer and audience, and the
    CLI's (public) client id registered there for the device flow."""

    issuer: str
    client_id: str
    audience: str


def device_login(login: OidcLogin, token_file: Path, *, show: Callable[[str], None],
                 sleep: Callable[[float], None] = time.sleep,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
    """Sign in with the device flow and write the access token to `token_file` (mode 0600,
    replacing the file). `show` tells the person where to approve; `LoginFailed` otherwise."""
    try:
        metadata = provider_metadata(login.issuer)
    except DiscoveryError as exc:
        raise LoginFailed(str(exc)) from None
    endpoint = metadata.get("device_authorization_endpoint")
    if not isinstance(endpoint, str):
        raise LoginFailed(f"the identity provider at {login.issuer} offers no device flow "
                          "(no device_authorization_endpoint)")
    client = OAuth2Session(login.client_id, scope=SCOPE, token_endpoint_auth_method="none")
    try:
        answer = client.post(endpoint, data={"client_id": login.client_id, "scope": SCOPE,
                                             "resource": login.audience}, timeout=HTTP_TIMEOUT, withhold_token=True)
        device = answer.json()
    except (requests.RequestException, ValueError) as exc:
        raise LoginFailed(f"the identity provider did not answer ({type(exc).__name__})") from None
    if answer.status_code != 200 or not isinstance(device, dict) or "device_code" not in device:
        why = device.get("error") if isinstance(device, dict) else None
        raise LoginFailed(f"the identity provider refused the device login ({why or answer.status_code})")
    where = device.get("verification_uri_complete") or device["verification_uri"]
    show(f"To sign in, open {where} and confirm the code {device['user_code']}.")
    interval = float(device.get("interval", 5))
    ends = monotonic() + float(device.get("expires_in", 600))
    while monotonic() < ends:
        sleep(interval)
        try:
            token = client.fetch_token(metadata["token_endpoint"], grant_type=DEVICE_GRANT,
                                       device_code=device["device_code"],
                                       resource=login.audience, timeout=HTTP_TIMEOUT)
        except OAuthError as exc:
            if exc.error == "authorization_pending":
                continue
            if exc.error == "slow_down":
                interval += SLOW_DOWN_SECONDS
                continue
            raise LoginFailed(_refusal(str(exc.error))) from None
        except requests.RequestException as exc:
            raise LoginFailed(f"the identity provider did not answer ({type(exc).__name__})") from None
        _write(token_file, str(token["access_token"]))
        return
    raise LoginFailed(_refusal("expired_token"))


def _refusal(error: str) -> str:
    return {"access_denied": "the sign-in was refused at the identity provider",
            "expired_token": "the code expired before it was confirmed: run chorus login again"}.get(
        error, f"the identity provider refused the sign-in ({error})")


def _write(path: Path, token: str) -> None:
    """Replace `path` with the token, never readable by others even for a moment."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    with os.fdopen(create_private_file(partial, overwrite=True), "w", encoding="utf-8") as out:
        out.write(token + "\n")
    os.replace(partial, path)


def login(
    oidc_issuer: Annotated[str, typer.Option("--oidc-issuer", envvar="CHORUS_OIDC_ISSUER",
                                             help="The OpenID Connect issuer (the server's oidc.issuer).")],
    oidc_client_id: Annotated[str, typer.Option("--oidc-client-id", envvar="CHORUS_OIDC_CLIENT_ID",
                                                help="The CLI's client id at the issuer (device flow, "
                                                "no secret).")],
    oidc_audience: Annotated[str, typer.Option("--oidc-audience", envvar="CHORUS_OIDC_AUDIENCE",
                                               help="The server's oidc.audience.")],
    token_file: Annotated[Path, typer.Option("--token-file", envvar=TOKEN_FILE_ENV,
                                             help="Where to write the access token (mode 0600); "
                                             "other commands read it from there.")],
) -> None:
    """Sign in through your company's identity provider (device flow) and store the access token."""
    try:
        check_issuer(oidc_issuer, "--oidc-issuer")
    except ValueError as exc:
        raise fail(str(exc), ExitCode.USAGE) from None
    try:
        device_login(OidcLogin(oidc_issuer, oidc_client_id, oidc_audience), token_file,
                     show=lambda line: console.print(line, highlight=False, soft_wrap=True))
    except LoginFailed as exc:
        raise fail(str(exc), ExitCode.UNAUTHENTICATED) from None
    console.print(f"signed in; the access token is in {token_file}", highlight=False, soft_wrap=True)
