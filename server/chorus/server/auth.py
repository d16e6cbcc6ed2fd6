"""Bearer tokens with one role each, stored as SHA-256 hashes, and the one interceptor
that decides which role may call which RPC."""

from __future__ import annotations

import contextvars
import enum
import inspect
import hashlib
import hmac
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import grpc

from chorus.server.ledger import Ledger
from chorus.server.store._db import Database, Tx

TOKEN_PREFIX = "chorus_"
MAX_TOKEN_NAME = 64


class Role(enum.StrEnum):
    INGEST = "ingest"
    ANALYST = "analyst"
    AUDITOR = "auditor"
    ADMIN = "admin"


#: Which roles may call each method of each service; anything not listed is denied.
#: Health and reflection stay open so load balancers and grpcurl-style tools work.
OPEN_SERVICES = ("grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection",
                 "grpc.reflection.v1.ServerReflection")
SERVICE_ROLES: dict[str, frozenset[Role]] = {
    "chorus.v1.IngestService": frozenset({Role.INGEST, Role.ADMIN}),
    "chorus.v1.ReleaseService": frozenset({Role.ANALYST, Role.ADMIN}),
    "chorus.v1.AuditService": frozenset({Role.AUDITOR, Role.ADMIN}),
    "chorus.v1.AdminService": frozenset({Role.ADMIN}),
}


@dataclass(frozen=True, slots=True)
class TokenInfo:
    name: str
    role: Role
    created: datetime
    revoked: datetime | None


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the token's name (never its secret) and role."""

    name: str
    role: Role


class TokenError(ValueError):
    pass


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _stamp(when: datetime) -> int:
    return int(when.timestamp())


def _info(row: tuple[Any, ...]) -> TokenInfo:
    name, role, created, revoked = row
    return TokenInfo(name, Role(role), datetime.fromtimestamp(created, UTC),
                     datetime.fromtimestamp(revoked, UTC) if revoked is not None else None)


class Tokens:
    """Token lifecycle; every change is recorded in the ledger (name and role, never the secret)."""

    def __init__(self, db: Database, ledger: Ledger) -> None:
        self._db = db
        self._ledger = ledger

    def create(self, role: Role, name: str, now: datetime, actor: str) -> tuple[str, TokenInfo]:
        if not name or len(name) > MAX_TOKEN_NAME or not name.isprintable():
            raise TokenError(f"token name must be 1..{MAX_TOKEN_NAME} printable characters")
        secret = TOKEN_PREFIX + secrets.token_urlsafe(32)

        def create(tx: Tx) -> TokenInfo:
            if not tx.execute("INSERT INTO tokens (name, role, token_hash, created_at) VALUES (?, ?, ?, ?) "
                              "ON CONFLICT (name) DO NOTHING", (name, role.value, hash_token(secret), _stamp(now))):
                raise TokenError(f"a token named {name!r} already exists; revoke it or pick another name")
            self._ledger.append(tx, "token_create", {"name": name, "role": role.value, "by": actor}, now)
            return TokenInfo(name, role, now.replace(microsecond=0), None)

        return secret, self._db.run(create, name="token_create")

    def revoke(self, name: str, now: datetime, actor: str) -> TokenInfo:
        def revoke(tx: Tx) -> TokenInfo:
            rows = tx.query("SELECT name, role, created_at, revoked_at FROM tokens WHERE name = ?", (name,))
            if not rows:
                raise LookupError(f"no token named {name!r}")
            if rows[0][3] is None:
                tx.execute("UPDATE tokens SET revoked_at = ? WHERE name = ?", (_stamp(now), name))
                self._ledger.append(tx, "token_revoke", {"name": name, "by": actor}, now)
            return _info(tx.query("SELECT name, role, created_at, revoked_at FROM tokens WHERE name = ?",
                                  (name,))[0])

        return self._db.run(revoke, name="token_revoke")

    def list(self) -> list[TokenInfo]:
        return self._db.run(lambda tx: [_info(r) for r in tx.query(
            "SELECT name, role, created_at, revoked_at FROM tokens ORDER BY name")], name="token_list")

    def authenticate(self, token: str) -> Principal | None:
        digest = hash_token(token)
        rows = self._db.run(lambda tx: tx.query(
            "SELECT name, role, token_hash FROM tokens WHERE token_hash = ? AND revoked_at IS NULL",
            (digest,)), name="authenticate")
        if not rows or not hmac.compare_digest(rows[0][2], digest):
            return None
        return Principal(rows[0][0], Role(rows[0][1]))

    def count(self) -> int:
        return self._db.run(lambda tx: tx.query("SELECT COUNT(*) FROM tokens")[0][0], name="token_count")


_current: contextvars.ContextVar[Principal] = contextvars.ContextVar("chorus_principal")


def principal() -> Principal:
    """The authenticated caller of the current RPC (set by AuthInterceptor)."""
    return _current.get()


class AuthInterceptor(grpc.ServerInterceptor):
    """Maps the bearer token to a role and the role to the RPCs it may call."""

    def __init__(self, authenticate: Callable[[str], Principal | None]) -> None:
        self._authenticate = authenticate

    def intercept_service(self, continuation: Any, details: grpc.HandlerCallDetails) -> Any:
        handler = continuation(details)
        service = details.method.rpartition("/")[0].lstrip("/")
        if handler is None or service in OPEN_SERVICES:
            return handler
        token = None
        for key, value in details.invocation_metadata or ():
            if key == "authorization" and isinstance(value, str) and value.startswith("Bearer "):
                token = value[len("Bearer "):].strip()
        if not token:
            return _wrap(handler, _deny(grpc.StatusCode.UNAUTHENTICATED,
                                        "missing bearer token: send metadata 'authorization: Bearer <token>'"))
        who = self._authenticate(token)
        if who is None:
            return _wrap(handler, _deny(grpc.StatusCode.UNAUTHENTICATED, "unknown or revoked token"))
        allowed = SERVICE_ROLES.get(service, frozenset())
        if who.role not in allowed:
            need = " or ".join(sorted(r.value for r in allowed)) or "none"
            return _wrap(handler, _deny(grpc.StatusCode.PERMISSION_DENIED,
                                        f"token {who.name!r} has role {who.role.value}; "
                                        f"{details.method} needs role {need}"))
        return _wrap(handler, _as(who))


Behavior = Callable[..., Any]


def _deny(code: grpc.StatusCode, message: str) -> Callable[[Behavior], Behavior]:
    def wrap(behavior: Behavior) -> Behavior:
        def denied(request: Any, context: grpc.ServicerContext) -> Any:
            context.abort(code, message)

        return denied

    return wrap


def _as(who: Principal) -> Callable[[Behavior], Behavior]:
    def wrap(behavior: Behavior) -> Behavior:
        if inspect.isgeneratorfunction(behavior):
            def streaming(request: Any, context: grpc.ServicerContext) -> Any:
                _current.set(who)  # a streaming RPC is iterated on one worker thread
                yield from behavior(request, context)

            return streaming

        def unary(request: Any, context: grpc.ServicerContext) -> Any:
            token = _current.set(who)
            try:
                return behavior(request, context)
            finally:
                _current.reset(token)

        return unary

    return wrap


def _wrap(handler: grpc.RpcMethodHandler, wrap: Callable[[Behavior], Behavior]) -> grpc.RpcMethodHandler:
    """The same handler kind with its behavior wrapped."""
    kinds = {
        (False, False): ("unary_unary", grpc.unary_unary_rpc_method_handler),
        (False, True): ("unary_stream", grpc.unary_stream_rpc_method_handler),
        (True, False): ("stream_unary", grpc.stream_unary_rpc_method_handler),
        (True, True): ("stream_stream", grpc.stream_stream_rpc_method_handler),
    }
    attr, factory = kinds[(handler.request_streaming, handler.response_streaming)]
    return factory(wrap(getattr(handler, attr)), request_deserializer=handler.request_deserializer,
                   response_serializer=handler.response_serializer)
