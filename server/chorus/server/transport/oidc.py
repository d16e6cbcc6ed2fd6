"""OpenID Connect access tokens as an authenticator of `admission.Admission` (`[oidc]` config).

A JWT access token (RFC 9068) of the configured issuer is checked by Authlib's
`JWTBearerTokenValidator`: signature by a key of the issuer's JWKS, `iss` exactly the issuer,
`aud` the configured audience, `exp` not passed, `typ` at+jwt when present. The issuer's
discovery document (`/.well-known/openid-configuration`) names the JWKS; the keys are cached
for `jwks_cache_seconds` and fetched again sooner when a token names an unknown `kid` (a
rotation), at most once per `REFETCH_SECONDS` (or `jwks_cache_seconds` if shorter), so a flood
of forged kids costs one fetch per interval. A key the issuer no longer publishes is refused
from the first fetch after its removal. While the issuer is unreachable the last keys fetched stay in use (logged).

The principal is `name_claim` (the ledger's `by`) and the one role that the groups in
`roles_claim` map to; nothing else of the token is kept, and neither the token nor any claim
is logged or put in a refusal (refusals say which check failed).
"""

from __future__ import annotations

import json
import logging
import threading
import time
import urllib.request
from collections.abc import Callable
from typing import Any

from authlib.oauth2.rfc6750.errors import InvalidTokenError
from authlib.oauth2.rfc9068 import JWTBearerTokenValidator
from joserfc import errors
from joserfc.jwk import KeySet

from chorus.server.model.oidc import OidcConfig
from chorus.server.model.roles import Principal
from chorus.server.transport.admission import Refused

_log = logging.getLogger(__name__)

#: Longest access token considered (JWTs with many groups run to a few kilobytes).
MAX_TOKEN_LENGTH = 16 * 1024
#: Least seconds between two fetches of the JWKS caused by unknown key ids.
REFETCH_SECONDS = 10.0
#: Largest discovery document or JWKS read, and the seconds a fetch may take.
MAX_DOCUMENT_BYTES = 1024 * 1024
FETCH_TIMEOUT = 10.0
#: Longest name accepted from `name_claim` (as a token name's bound, but for addresses).
MAX_NAME = 254

Fetch = Callable[[str], dict[str, Any]]


def fetch_json(url: str) -> dict[str, Any]:
    """A JSON object from `url`, bounded in size and time."""
    with urllib.request.urlopen(url, timeout=FETCH_TIMEOUT) as answer:  # https, or http on loopback (model/oidc.py)
        body = answer.read(MAX_DOCUMENT_BYTES + 1)
    if len(body) > MAX_DOCUMENT_BYTES:
        raise ValueError(f"{url} sent more than {MAX_DOCUMENT_BYTES} bytes")
    document = json.loads(body)
    if not isinstance(document, dict):
        raise ValueError(f"{url} did not send a JSON object")
    return document


#: What each check's failure tells the caller (never the claim's value).
_REASONS: tuple[tuple[type[Exception], str], ...] = (
    (errors.ExpiredTokenError, "the access token has expired: sign in again"),
    (errors.InvalidKeyIdError, "the access token is signed by a key the identity provider does not publish"),
    (errors.BadSignatureError, "the access token's signature does not verify"),
)
_CLAIM_REASONS = {
    "aud": "the access token is not for this server (audience)",
    "iss": "the access token is from another issuer",
    "typ": "the token is not an access token (typ)",
}


class _Validator(JWTBearerTokenValidator):  # type: ignore[misc]  # Authlib is untyped
    def __init__(self, verifier: OidcVerifier, config: OidcConfig) -> None:
        super().__init__(issuer=config.issuer, resource_server=config.audience)
        self._verifier = verifier

    def get_jwks(self) -> KeySet:
        return self._verifier.keys()


class OidcVerifier:
    """`authenticate(token)`: the principal of a valid access token of the issuer, None for a
    token that is not a JWT, `Refused` naming the check a JWT failed."""

    def __init__(self, config: OidcConfig, *, fetch: Fetch = fetch_json,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self._config = config
        self._fetch = fetch
        self._monotonic = monotonic
        self._validator = _Validator(self, config)
        self._lock = threading.Lock()
        self._keys: KeySet | None = None
        self._fetched = -float("inf")  # when the keys were fetched
        self._tried = -float("inf")  # when a fetch was last tried (bounds refetches)

    def keys(self) -> KeySet:
        """The issuer's signing keys, fetched again once `jwks_cache_seconds` old."""
        with self._lock:
            if self._keys is None or self._monotonic() - self._fetched >= self._config.jwks_cache_seconds:
                # The very first fetch is never held back; later ones (a failed first fetch
                # included) at most once per interval, so an unreachable issuer is not asked per call.
                self._refresh(force=self._tried == -float("inf"))
            if self._keys is None:
                raise Refused("the identity provider's signing keys could not be fetched; retry later")
            return self._keys

    def _refresh(self, *, force: bool) -> bool:
        """Fetch discovery and JWKS (lock held); False when bounded out or failed."""
        now = self._monotonic()
        if not force and now - self._tried < min(REFETCH_SECONDS, self._config.jwks_cache_seconds):
            return False
        self._tried = now
        try:
            discovery = self._fetch(self._config.issuer.rstrip("/") + "/.well-known/openid-configuration")
            if discovery.get("issuer") != self._config.issuer:
                raise ValueError("the discovery document names another issuer than oidc.issuer")
            keys = KeySet.import_key_set(self._fetch(str(discovery["jwks_uri"])))  # type: ignore[arg-type]
        except Exception as exc:  # an unreachable or broken issuer: keep the last keys
            _log.warning("OIDC: cannot fetch the signing keys of %s: %s", self._config.issuer, exc)
            return False
        self._keys, self._fetched = keys, now
        return True

    def _refetch_for_unknown_kid(self) -> bool:
        with self._lock:
            return self._refresh(force=False)

    def authenticate(self, token: str) -> Principal | None:
        if len(token) > MAX_TOKEN_LENGTH or token.count(".") != 2:
            return None  # not a compact JWS: not ours (a `chorus_` token has no dots)
        claims = self._claims(token)
        groups = claims.get(self._config.roles_claim)
        if isinstance(groups, str):
            groups = [groups]
        if not isinstance(groups, list):
            groups = []
        roles = self._config.roles_of(frozenset(g for g in groups if isinstance(g, str)))
        if not roles:
            raise Refused(f"the signed-in user is in no group that [oidc.roles] maps to a role "
                          f"(claim {self._config.roles_claim!r})")
        if len(roles) > 1:
            raise Refused(f"the signed-in user's groups map to the roles "
                          f"{' and '.join(sorted(r.value for r in roles))}; a person has one role: "
                          "fix the group membership or [oidc.roles]", unauthenticated=False)
        name = claims.get(self._config.name_claim)
        if not isinstance(name, str) or not name or len(name) > MAX_NAME or not name.isprintable():
            raise Refused(f"the access token has no usable {self._config.name_claim!r} claim "
                          f"(oidc.name_claim; 1..{MAX_NAME} printable characters)")
        (role,) = roles
        return Principal(name, role, sso=True)

    def _claims(self, token: str) -> Any:
        for attempt in (1, 2):
            try:
                claims = self._validator.authenticate_token(token)
                self._validator.validate_token(claims, None, None)
                return claims
            except InvalidTokenError as exc:
                cause = exc.__cause__
                if (attempt == 1 and isinstance(cause, errors.InvalidKeyIdError)
                        and self._refetch_for_unknown_kid()):
                    continue  # a new key: the issuer may have rotated
                raise Refused(_reason(cause)) from None
        raise AssertionError("unreachable")


def _reason(cause: BaseException | None) -> str:
    for kind, reason in _REASONS:
        if isinstance(cause, kind):
            return reason
    if isinstance(cause, errors.ClaimError):
        claim = getattr(cause, "claim", "")
        return _CLAIM_REASONS.get(claim, f"the access token's {claim!r} claim is missing or invalid")
    return "the access token is not a valid JWT of the identity provider"
