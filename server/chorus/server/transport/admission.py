"""Admission, the one rule both entrances apply: bearer token -> principal -> role -> service.

The gRPC gate (`gate.py`) and the OTLP/HTTP listener (`otlp_http.py`) each read the
`authorization` value from their own headers and map a `Refused` to their own status
(UNAUTHENTICATED/PERMISSION_DENIED, 401/403); which tokens are valid, and which role may call
which service (`chorus.server.model.roles.SERVICE_ROLES`), is decided here only.

A token is tried against each authenticator in order (the server's own `chorus_` tokens, then
the OpenID Connect verifier when one is configured): each returns None for a token that is not
its kind, so the first that knows it decides. An authenticator may raise `Refused` itself to
say precisely why a token of its kind is not accepted (an expired access token, say); its
message never holds the token or a claim of it. `StoreUnavailable` from a token lookup
propagates: each transport answers it as its own "retry later".
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from chorus.server.model.roles import SERVICE_ROLES, Principal

_log = logging.getLogger(__name__)

#: Maps a bearer token to its principal; None if the token is not of this authenticator's kind.
Authenticate = Callable[[str], Principal | None]


class Refused(Exception):
    """The caller is not admitted: `unauthenticated` (no valid token) or denied (wrong role)."""

    def __init__(self, message: str, *, unauthenticated: bool = True) -> None:
        super().__init__(message)
        self.unauthenticated = unauthenticated


def bearer_token(values: Sequence[object]) -> str | None:
    """The token of the single `Bearer` authorization value; None if absent, repeated, of
    another scheme or empty."""
    if len(values) != 1 or not isinstance(values[0], str):
        return None
    scheme, _, token = values[0].partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


class Admission:
    """Bearer token -> principal (first authenticator that knows it) -> allowed for a service."""

    def __init__(self, authenticators: Sequence[Authenticate]) -> None:
        self._authenticators = tuple(authenticators)

    def principal(self, token: str) -> Principal:
        """The token's principal; `Refused` (unauthenticated) if no authenticator accepts it."""
        for authenticate in self._authenticators:
            who = authenticate(token)
            if who is not None:
                return who
        raise Refused("unknown or revoked token")

    def admit(self, token: str | None, service: str, action: str, *, missing: str,
              exists: bool = True) -> Principal:
        """The principal of `token` if its role may call `service`, else `Refused`.

        `action` names what was asked in the messages ("/chorus.v1.AdminService/ListTokens",
        "OTLP export"); `missing` says how to send a token on this transport. Only an existing
        method of `SERVICE_ROLES` is named in the log (the caller chooses the path).
        `exists=False` (no such method or service): any valid token is admitted, so the caller
        learns the method does not exist (UNIMPLEMENTED), not a denial.
        """
        shown = action if exists and service in SERVICE_ROLES else "an unknown method"
        if not token:
            _log.debug("rejected %s: no bearer token", shown)
            raise Refused(f"missing bearer token: {missing}")
        try:
            who = self.principal(token)
        except Refused as refused:
            _log.debug("rejected %s: %s", shown, refused)
            raise
        allowed = SERVICE_ROLES.get(service, frozenset())
        if exists and who.role not in allowed:
            _log.info("denied %s to %s with role %s", shown, who.logged, who.role.value)
            need = (f"needs role {' or '.join(sorted(r.value for r in allowed))}" if allowed
                    else "is open to no role")
            raise Refused(f"{who.described} has role {who.role.value}; {action} {need}",
                          unauthenticated=False)
        return who
