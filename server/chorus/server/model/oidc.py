"""The `[oidc]` configuration: which OpenID Connect issuer's access tokens the server accepts,
and how a person's groups map to the four roles (docs/security.md, "Single sign-on").

Validated at start: the issuer is HTTPS (plain HTTP only on a loopback host, where it never
crosses the network), each role's groups are distinct names, and no group maps to two roles
(a person has one role). Errors raise `ValueError` naming the key, the value and the rule;
`config.parse` reports them as `ConfigError` (this module cannot import `config`).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from chorus.server.model.roles import Role

#: Keys of `[oidc]` and of `[oidc.roles]`, registered in config.KNOWN_KEYS.
KNOWN_KEYS = frozenset({"issuer", "audience", "roles_claim", "name_claim", "jwks_cache_seconds", "roles"})
KNOWN_ROLE_KEYS = frozenset(r.value for r in Role)
MAX_GROUPS = 256
MAX_TEXT = 512
#: Bounds of `jwks_cache_seconds`: how long fetched signing keys are trusted before a refetch.
JWKS_CACHE_RANGE = (1, 86_400)


@dataclass(frozen=True, slots=True)
class OidcConfig:
    """Access tokens of `issuer` for `audience`; `roles_claim` (a list of group names) picks
    the role through `roles`; `name_claim` is the principal's name (the ledger's `by`)."""

    issuer: str
    audience: str
    roles: tuple[tuple[Role, frozenset[str]], ...]
    roles_claim: str = "groups"
    name_claim: str = "email"
    jwks_cache_seconds: int = 300

    def roles_of(self, groups: frozenset[str]) -> frozenset[Role]:
        """The roles the groups map to (none, one, or, refused by the verifier, several)."""
        return frozenset(role for role, mapped in self.roles if mapped & groups)


def _text(raw: dict[str, Any], key: str, default: str | None = None) -> str:
    value = raw.get(key, default)
    if not isinstance(value, str) or not value or len(value) > MAX_TEXT or not value.isprintable():
        raise ValueError(f"oidc.{key} = {value!r}: must be a string of 1..{MAX_TEXT} printable characters")
    return value


def check_issuer(value: str, key: str = "oidc.issuer") -> str:
    """`value` if it is an issuer URL Chorus talks to (https, or http on a loopback host)."""
    parts = urlsplit(value)
    host = parts.hostname or ""
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if parts.scheme != "https" and not (parts.scheme == "http" and loopback):
        raise ValueError(f"{key} = {value!r}: must be an https:// URL (http:// only on a loopback host)")
    if parts.query or parts.fragment or not host:
        raise ValueError(f"{key} = {value!r}: must be a URL with a host and no query or fragment")
    return value


def parse_oidc(raw: dict[str, Any]) -> OidcConfig | None:
    """The `[oidc]` table, or None when there is none (only `chorus_` tokens are accepted)."""
    if not raw:
        return None
    roles_raw = raw.get("roles", {})
    if not isinstance(roles_raw, dict):
        raise ValueError("oidc.roles must be a table: role = [\"group\", ...]")
    roles: list[tuple[Role, frozenset[str]]] = []
    owner: dict[str, Role] = {}
    for name, groups in sorted(roles_raw.items()):
        role = Role(name)  # the keys were checked against KNOWN_ROLE_KEYS
        if (not isinstance(groups, list) or len(groups) > MAX_GROUPS
                or not all(isinstance(g, str) and g and len(g) <= MAX_TEXT for g in groups)):
            raise ValueError(f"oidc.roles.{name} = {groups!r}: must be a list of at most {MAX_GROUPS} "
                             "non-empty group names")
        for group in groups:
            if group in owner and owner[group] != role:
                raise ValueError(f"oidc.roles: group {group!r} is mapped to both {owner[group].value} "
                                 f"and {role.value}; a person has one role, so a group maps to one")
            owner[group] = role
        if groups:
            roles.append((role, frozenset(groups)))
    if not roles:
        raise ValueError("oidc.roles maps no group to a role: no one could sign in; add e.g. "
                         "analyst = [\"chorus-leadership\"]")
    cache = raw.get("jwks_cache_seconds", 300)
    low, high = JWKS_CACHE_RANGE
    if not isinstance(cache, int) or isinstance(cache, bool) or not low <= cache <= high:
        raise ValueError(f"oidc.jwks_cache_seconds = {cache!r}: must be an integer in {low}..{high}")
    return OidcConfig(issuer=check_issuer(_text(raw, "issuer")), audience=_text(raw, "audience"),
                      roles=tuple(roles), roles_claim=_text(raw, "roles_claim", "groups"),
                      name_claim=_text(raw, "name_claim", "email"), jwks_cache_seconds=cache)
