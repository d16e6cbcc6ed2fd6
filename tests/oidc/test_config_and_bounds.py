"""The `[oidc]` section's rules, and the verifier's bound on JWKS fetches (no provider needed:
a recorded fetch function and a fake monotonic clock)."""

from __future__ import annotations

import re
import time
import tomllib
from typing import Any

import pytest
from joserfc import jwt
from joserfc.jwk import RSAKey

from chorus.server.model import config
from chorus.server.model.oidc import OidcConfig, parse_oidc
from chorus.server.model.roles import Principal, Role
from chorus.server.transport.admission import Refused
from chorus.server.transport.oidc import REFETCH_SECONDS, OidcVerifier
from tests._policy import SUITE_TOML

ISSUER = "https://login.example.com"


def section(body: str) -> dict[str, Any]:
    return tomllib.loads(f'[oidc]\nissuer = "{ISSUER}"\naudience = "urn:chorus"\n{body}')["oidc"]


def test_a_config_file_with_an_oidc_section_parses() -> None:
    cfg = config.parse(tomllib.loads(SUITE_TOML + f'\n[oidc]\nissuer = "{ISSUER}"\naudience = "urn:chorus"\n'
                                     '[oidc.roles]\nanalyst = ["lead"]\nauditor = ["privacy"]\n'))
    assert cfg.oidc == OidcConfig(ISSUER, "urn:chorus", ((Role.ANALYST, frozenset({"lead"})),
                                                        (Role.AUDITOR, frozenset({"privacy"}))))
    assert config.parse(tomllib.loads(SUITE_TOML)).oidc is None


@pytest.mark.parametrize(("body", "message"), [
    ('[oidc.roles]\nanalyst = ["x"]\nauditor = ["x"]',
     "oidc.roles: group 'x' is mapped to both analyst and auditor; a person has one role, so a group maps to one"),
    ("[oidc.roles]\nanalyst = []", "oidc.roles maps no group to a role: no one could sign in"),
    ('jwks_cache_seconds = 0\n[oidc.roles]\nanalyst = ["x"]',
     "oidc.jwks_cache_seconds = 0: must be an integer in 1..86400"),
    ('[oidc.roles]\nanalyst = "x"', "oidc.roles.analyst = 'x': must be a list of at most 256 non-empty group names"),
])
def test_bad_sections_are_refused_naming_the_key(body: str, message: str) -> None:
    with pytest.raises(ValueError, match="^" + message.replace("[", r"\[").replace("(", r"\(")):
        parse_oidc(section(body))


@pytest.mark.parametrize("issuer", ["http://login.example.com", "ftp://127.0.0.1", "https://x.example/?a=1"])
def test_the_issuer_must_be_https_except_on_loopback(issuer: str) -> None:
    with pytest.raises(ValueError, match="^" + re.escape(f"oidc.issuer = '{issuer}'")):
        parse_oidc({"issuer": issuer, "audience": "a", "roles": {"analyst": ["x"]}})
    assert parse_oidc({"issuer": "http://127.0.0.1:8", "audience": "a", "roles": {"analyst": ["x"]}})


def test_an_unknown_key_in_the_section_is_refused() -> None:
    with pytest.raises(config.ConfigError, match="roles_clam"):
        config.parse(tomllib.loads(SUITE_TOML + f'\n[oidc]\nissuer = "{ISSUER}"\nroles_clam = "g"\n'))


#: One signing key for the module (generating RSA keys is slow).
KEY = RSAKey.generate_key(2048, parameters={"kid": "k1"})


def test_unknown_kids_fetch_the_keys_at_most_once_per_interval() -> None:
    key = KEY
    fetched: list[str] = []
    now = [1000.0]

    def fetch(url: str) -> dict[str, Any]:
        fetched.append(url)
        if url.endswith("/.well-known/openid-configuration"):
            return {"issuer": ISSUER, "jwks_uri": f"{ISSUER}/jwks"}
        return {"keys": [key.as_dict(private=False)]}

    cfg = parse_oidc(section('[oidc.roles]\nanalyst = ["x"]'))
    assert cfg is not None
    verifier = OidcVerifier(cfg, fetch=fetch, monotonic=lambda: now[0])
    for i in range(50):  # a flood of tokens naming kids nobody published
        forged = jwt.encode({"alg": "RS256", "kid": f"forged-{i}"}, {"iss": ISSUER}, key)
        with pytest.raises(Refused, match="signed by a key the identity provider does not publish"):
            verifier.authenticate(forged)
    assert len(fetched) == 2  # the first fetch (discovery and JWKS) only
    now[0] += REFETCH_SECONDS
    with pytest.raises(Refused):
        verifier.authenticate(jwt.encode({"alg": "RS256", "kid": "forged-again"}, {"iss": ISSUER}, key))
    assert len(fetched) == 4


def test_a_chorus_token_or_other_string_is_not_the_verifiers() -> None:
    cfg = parse_oidc(section('[oidc.roles]\nanalyst = ["x"]'))
    assert cfg is not None
    verifier = OidcVerifier(cfg, fetch=lambda url: pytest.fail(f"fetched {url}"))
    assert verifier.authenticate("chorus_" + "a" * 43) is None
    assert verifier.authenticate("a.b") is None


class Issuer:
    """A signing key and the discovery document and JWKS an issuer would serve for it."""

    def __init__(self) -> None:
        self.key = KEY
        self.down = False

    def fetch(self, url: str) -> dict[str, Any]:
        if self.down:
            raise OSError("connection refused")
        if url.endswith("/.well-known/openid-configuration"):
            return {"issuer": ISSUER, "jwks_uri": f"{ISSUER}/jwks"}
        return {"keys": [self.key.as_dict(private=False)]}

    def token(self, **claims: Any) -> str:
        header = {"alg": "RS256", "kid": "k1", "typ": claims.pop("typ", "at+jwt")}
        now = int(time.time())
        body = {"iss": ISSUER, "aud": "urn:chorus", "sub": "s", "client_id": "c", "jti": "j", "iat": now,
                "exp": now + 60, "email": "ann@example.com", "groups": ["lead"]} | claims
        return jwt.encode(header, {k: v for k, v in body.items() if v is not None}, self.key)


def verifier_for(issuer: Issuer, now: list[float] | None = None) -> OidcVerifier:
    cfg = parse_oidc(section('jwks_cache_seconds = 60\n[oidc.roles]\nanalyst = ["lead"]\nauditor = ["privacy"]'))
    assert cfg is not None
    clock = now if now is not None else [0.0]
    return OidcVerifier(cfg, fetch=issuer.fetch, monotonic=lambda: clock[0])


@pytest.mark.parametrize(("claims", "reason"), [
    ({"iss": "https://elsewhere.example.com"}, "the access token is from another issuer"),
    ({"typ": "id+jwt"}, "the token is not an access token (typ)"),
    ({"aud": "urn:another"}, "the access token is not for this server (audience)"),
    ({"exp": 1}, "the access token has expired: sign in again"),
    ({"email": None}, "the access token has no usable 'email' claim (oidc.name_claim; 1..254 printable characters)"),
])
def test_each_check_refuses_naming_itself(claims: dict[str, Any], reason: str) -> None:
    issuer = Issuer()
    verifier = verifier_for(issuer)
    assert verifier.authenticate(issuer.token()) == Principal("ann@example.com", Role.ANALYST, sso=True)
    with pytest.raises(Refused) as refused:
        verifier.authenticate(issuer.token(**claims))
    assert str(refused.value) == reason and refused.value.unauthenticated


def test_groups_mapping_to_two_roles_are_denied() -> None:
    issuer = Issuer()
    with pytest.raises(Refused) as refused:
        verifier_for(issuer).authenticate(issuer.token(groups=["lead", "privacy"]))
    assert str(refused.value) == ("the signed-in user's groups map to the roles analyst and auditor; a person "
                                  "has one role: fix the group membership or [oidc.roles]")
    assert not refused.value.unauthenticated


def test_while_the_issuer_is_unreachable_the_last_keys_stay_in_use() -> None:
    issuer = Issuer()
    now = [0.0]
    verifier = verifier_for(issuer, now)
    assert verifier.authenticate(issuer.token()) is not None
    issuer.down = True
    now[0] += 3600  # far past jwks_cache_seconds: a fetch is due, and fails
    assert verifier.authenticate(issuer.token()) is not None


def test_without_any_keys_fetched_access_tokens_are_refused_until_the_issuer_answers() -> None:
    issuer = Issuer()
    issuer.down = True
    now = [0.0]
    verifier = verifier_for(issuer, now)
    with pytest.raises(Refused, match=r"^the identity provider's signing keys could not be fetched; retry later$"):
        verifier.authenticate(issuer.token())
    issuer.down = False
    with pytest.raises(Refused, match="could not be fetched"):
        verifier.authenticate(issuer.token())  # no second fetch within the interval
    now[0] += REFETCH_SECONDS
    assert verifier.authenticate(issuer.token()) is not None
