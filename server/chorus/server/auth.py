"""Bearer tokens with one role each, stored as SHA-256 hashes, and the one interceptor
that decides which role may call which RPC.

Every RPC outside the open services passes one gate, in this order: the server-side time
bound, the client's deadline, the bearer token, the role, and only then the request bytes
are parsed. So an unauthenticated or unauthorised caller never reaches a protobuf parser
or the store, and a request whose deadline already passed never starts a transaction.
"""

from __future__ import annotations

import contextvars
import enum
import hashlib
import logging
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import grpc

from chorus.server import store
from chorus.server.ledger import Ledger
from chorus.server.services._errors import STORE_RETRY_SECONDS, abort, retry_later, store_unavailable
from chorus.server.store._db import Database, StoreUnavailable, Tx

_log = logging.getLogger(__name__)

TOKEN_PREFIX = "chorus_"
MAX_TOKEN_NAME = 64
#: Longer bearer values are rejected before hashing; real tokens are 50 characters.
MAX_TOKEN_LENGTH = 256
#: How long a replica trusts a token it looked up: revocation on another replica takes
#: effect within this time (on the revoking replica, at once).
TOKEN_CACHE_SECONDS = 1.0
_TOKEN_CACHE_MAX = 4096


class Role(enum.StrEnum):
    INGEST = "ingest"
    ANALYST = "analyst"
    AUDITOR = "auditor"
    ADMIN = "admin"


#: Health and reflection stay open so load balancers and grpcurl-style tools work.
OPEN_SERVICES = frozenset({"grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection",
                           "grpc.reflection.v1.ServerReflection"})
#: Which roles may call the methods of each service; any other service is denied to everyone.
#: One role per job (least privilege): admin operates the server but cannot inject usage,
#: spend privacy budget or read the audit trail under its own name; an operator who needs
#: to do so creates a token of that role, and that creation is itself in the ledger.
SERVICE_ROLES: dict[str, frozenset[Role]] = {
    "chorus.v1.IngestService": frozenset({Role.INGEST}),
    "chorus.v1.ReleaseService": frozenset({Role.ANALYST}),
    "chorus.v1.AuditService": frozenset({Role.AUDITOR}),
    "chorus.v1.AdminService": frozenset({Role.ADMIN}),
    # OTLP metrics (chorus.server.services.otlp): usage from OpenTelemetry exporters.
    "opentelemetry.proto.collector.metrics.v1.MetricsService": frozenset({Role.INGEST}),
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


class TokenExists(TokenError):
    """A token of that name exists (or existed: names are never reused)."""


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _stamp(when: datetime) -> int:
    return int(when.timestamp())


def _info(row: store.tokens.TokenRow) -> TokenInfo:
    return TokenInfo(row.name, Role(row.role), datetime.fromtimestamp(row.created_at, UTC),
                     datetime.fromtimestamp(row.revoked_at, UTC) if row.revoked_at is not None else None)


class Tokens:
    """Token lifecycle; every change is recorded in the ledger (name and role, never the secret).

    Successful lookups are cached per token hash for `cache_seconds`, so a busy ingest path
    does not run a store transaction per RPC. Unknown tokens are never cached: a flood of
    guessed tokens cannot fill the cache, and a new token works at once.
    """

    def __init__(self, db: Database, ledger: Ledger, *, cache_seconds: float = TOKEN_CACHE_SECONDS,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self._db = db
        self._ledger = ledger
        self._cache_seconds = cache_seconds
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[Principal, float]] = {}
        # Bumped by every revocation: a lookup that raced with it must not cache its answer.
        self._generation = 0

    def create(self, role: Role, name: str, now: datetime, actor: str) -> tuple[str, TokenInfo]:
        if not name or len(name) > MAX_TOKEN_NAME or not name.isprintable():
            raise TokenError(f"token name must be 1..{MAX_TOKEN_NAME} printable characters")
        secret = TOKEN_PREFIX + secrets.token_urlsafe(32)

        def create(tx: Tx) -> TokenInfo:
            if not store.tokens.create(tx, name, role.value, hash_token(secret), _stamp(now)):
                raise TokenExists(f"a token named {name!r} already exists (names are never reused, even after "
                                 "revocation, so the ledger stays unambiguous); pick another name")
            self._ledger.append(tx, "token_create", {"name": name, "role": role.value, "by": actor}, now)
            return TokenInfo(name, role, now.replace(microsecond=0), None)

        return secret, self._db.run(create, name="token_create")

    def revoke(self, name: str, now: datetime, actor: str) -> TokenInfo:
        """Revoke by name; it stops working on this replica at once, elsewhere within the cache time."""
        def revoke(tx: Tx) -> TokenInfo:
            if store.tokens.get(tx, name) is None:
                raise LookupError(f"no token named {name!r}")
            # Conditional: of two concurrent revocations only one changes the row and records it.
            if store.tokens.revoke(tx, name, _stamp(now)):
                self._ledger.append(tx, "token_revoke", {"name": name, "by": actor}, now)
            row = store.tokens.get(tx, name)
            assert row is not None
            return _info(row)

        info = self._db.run(revoke, name="token_revoke")
        with self._lock:
            self._generation += 1
            self._cache = {k: v for k, v in self._cache.items() if v[0].name != name}
        return info

    def list(self) -> list[TokenInfo]:
        return self._db.run(lambda tx: [_info(r) for r in store.tokens.all_tokens(tx)], name="token_list")

    def authenticate(self, token: str) -> Principal | None:
        """The active token's principal, or None for a malformed, unknown or revoked token."""
        if not token.startswith(TOKEN_PREFIX) or len(token) > MAX_TOKEN_LENGTH:
            return None  # not one of ours: no hashing, no store
        # Looking up by SHA-256 leaks nothing through timing: an attacker learns at most
        # about hashes of their own guesses, never about a stored token.
        digest = hash_token(token)
        now = self._monotonic()
        with self._lock:
            cached = self._cache.get(digest)
            if cached is not None and cached[1] > now:
                return cached[0]
            generation = self._generation
        found = self._db.run(lambda tx: store.tokens.active_by_hash(tx, digest), name="authenticate")
        if found is None:
            return None
        who = Principal(found[0], Role(found[1]))
        with self._lock:
            if generation == self._generation:
                if len(self._cache) >= _TOKEN_CACHE_MAX:
                    self._cache = {k: v for k, v in self._cache.items() if v[1] > now}
                if len(self._cache) < _TOKEN_CACHE_MAX:
                    self._cache[digest] = (who, now + self._cache_seconds)
        return who

    def count(self) -> int:
        return self._db.run(store.tokens.count, name="token_count")


_current: contextvars.ContextVar[Principal] = contextvars.ContextVar("chorus_principal")


def principal() -> Principal:
    """The authenticated caller of the current RPC (set by AuthInterceptor)."""
    return _current.get()


Behavior = Callable[..., Any]
Admit = Callable[[grpc.ServicerContext], Principal]


class AuthInterceptor(grpc.ServerInterceptor):
    """Maps the bearer token to a role and the role to the services it may call.

    `intercept_service` runs on gRPC's single polling thread, so it only reads the metadata
    and wraps the handler; the token lookup (which may touch the store) and the checks run
    on the RPC's worker thread, before the request bytes are even parsed.
    """

    def __init__(self, authenticate: Callable[[str], Principal | None], *,
                 max_rpc_seconds: float | None = None) -> None:
        """`max_rpc_seconds` bounds every RPC server-side, whatever deadline the client set:
        a call queued longer is not started, and a response stream is cancelled at it."""
        self._authenticate = authenticate
        self._max_rpc_seconds = max_rpc_seconds

    def intercept_service(self, continuation: Any, details: grpc.HandlerCallDetails) -> Any:
        service = details.method.rpartition("/")[0].lstrip("/")
        if service in OPEN_SERVICES:
            return continuation(details)
        arrived = time.monotonic()
        bearer = _bearer(details.invocation_metadata or ())

        def admit(context: grpc.ServicerContext) -> Principal:
            return self._admit(details.method, service, bearer, arrived, context)

        ends = None if self._max_rpc_seconds is None else arrived + self._max_rpc_seconds
        return _guard(continuation(details), details.method, admit, ends)

    def _admit(self, method: str, service: str, bearer: str | None, arrived: float,
               context: grpc.ServicerContext) -> Principal:
        # The caller chooses the path: log it only if it names one of our services.
        shown = method if service in SERVICE_ROLES else "a method of an unknown service"
        if self._max_rpc_seconds is not None and time.monotonic() - arrived >= self._max_rpc_seconds:
            retry_later(context, grpc.StatusCode.DEADLINE_EXCEEDED,
                        f"{method} waited in the queue past the server limit of "
                        f"{self._max_rpc_seconds:g} s; retry later", STORE_RETRY_SECONDS)
        if context.time_remaining() <= 0:
            abort(context, grpc.StatusCode.DEADLINE_EXCEEDED,
                  f"{method}: the client deadline passed before the call started")
        if not bearer:
            _log.debug("rejected %s: no bearer token", shown)
            abort(context, grpc.StatusCode.UNAUTHENTICATED, "missing bearer token: send metadata "
                  "'authorization: Bearer <token>' exactly once")
        with _contained(method, context):  # a store outage here is UNAVAILABLE, retried by clients
            who = self._authenticate(bearer)
        if who is None:
            _log.debug("rejected %s: unknown or revoked token", shown)
            abort(context, grpc.StatusCode.UNAUTHENTICATED, "unknown or revoked token")
        allowed = SERVICE_ROLES.get(service, frozenset())
        if who.role not in allowed:
            _log.info("denied %s to token %r with role %s", shown, who.name, who.role.value)
            need = (f"needs role {' or '.join(sorted(r.value for r in allowed))}" if allowed
                    else "is open to no role")
            abort(context, grpc.StatusCode.PERMISSION_DENIED,
                  f"token {who.name!r} has role {who.role.value}; {method} {need}")
        return who


def _bearer(metadata: Any) -> str | None:
    """The token of the single `authorization: Bearer` entry; None if absent or ambiguous."""
    values = [value for key, value in metadata if key == "authorization"]
    if len(values) != 1 or not isinstance(values[0], str):
        return None
    scheme, _, token = values[0].partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


@contextmanager
def _contained(method: str, context: grpc.ServicerContext) -> Iterator[None]:
    """An unexpected exception becomes INTERNAL with a fixed message: gRPC would otherwise send
    its text (which might hold a value from the request) to the caller as UNKNOWN."""
    try:
        yield
    except StoreUnavailable:
        # Transient: the SDK retries UNAVAILABLE with the same batch id, so nothing is lost.
        _log.warning("%s: store unavailable", method, exc_info=True)
        store_unavailable(context)
    except Exception:
        if context.code() is not None:  # the servicer aborted: its status stands
            raise
        _log.exception("%s failed", method)
        abort(context, grpc.StatusCode.INTERNAL, f"{method} failed on the server; the server log has "
              "the details")


def _guard(handler: grpc.RpcMethodHandler | None, method: str, admit: Admit,
           ends: float | None) -> grpc.RpcMethodHandler:
    """A handler of the same kind that admits the caller, then parses and runs the original.

    The wrapped handler receives raw bytes (no deserializer), so parsing happens after
    admission and a malformed message is INVALID_ARGUMENT instead of gRPC's INTERNAL.
    An unknown method still requires a valid token: callers learn nothing without one.
    `ends` (time.monotonic) is when a response stream is cancelled.
    """
    if handler is None:
        def unknown(requests: Any, context: grpc.ServicerContext) -> Any:
            admit(context)
            abort(context, grpc.StatusCode.UNIMPLEMENTED, "method not found")

        # Stream-stream never reads the request, so it answers any kind of client call.
        return grpc.stream_stream_rpc_method_handler(unknown)

    def parse(raw: bytes, context: grpc.ServicerContext) -> Any:
        if handler.request_deserializer is None:
            return raw
        try:
            return handler.request_deserializer(raw)
        except Exception:  # whatever the parser raises, the bytes were not a valid request
            abort(context, grpc.StatusCode.INVALID_ARGUMENT, "request is not a valid protobuf message "
                  "of the method's request type")

    def request_of(raw: Any, context: grpc.ServicerContext) -> Any:
        if handler.request_streaming:
            return (parse(r, context) for r in raw)
        return parse(raw, context)

    if handler.response_streaming:
        behavior = handler.stream_stream if handler.request_streaming else handler.unary_stream

        def streaming(raw: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            who = admit(context)
            request = request_of(raw, context)
            timer = None
            if ends is not None:
                # A reader that stops reading blocks this thread in a send; cancelling the
                # call releases it. Streams page outside transactions, so no store lock is held.
                timer = threading.Timer(max(0.0, ends - time.monotonic()), context.cancel)
                timer.daemon = True
                timer.start()
            try:
                with _contained(method, context):
                    yield from _stream_as(who, behavior, request, context)
            finally:
                if timer is not None:
                    timer.cancel()

        factory = (grpc.stream_stream_rpc_method_handler if handler.request_streaming
                   else grpc.unary_stream_rpc_method_handler)
        return factory(streaming, response_serializer=handler.response_serializer)

    behavior = handler.stream_unary if handler.request_streaming else handler.unary_unary

    def unary(raw: Any, context: grpc.ServicerContext) -> Any:
        who = admit(context)
        request = request_of(raw, context)
        with _contained(method, context):
            return contextvars.copy_context().run(_call_as, who, behavior, request, context)

    factory = (grpc.stream_unary_rpc_method_handler if handler.request_streaming
               else grpc.unary_unary_rpc_method_handler)
    return factory(unary, response_serializer=handler.response_serializer)


def _call_as(who: Principal, behavior: Behavior, *args: Any) -> Any:
    _current.set(who)
    return behavior(*args)


_END = object()


def _stream_as(who: Principal, behavior: Behavior, request: Any,
               context: grpc.ServicerContext) -> Iterator[Any]:
    """Iterate a streaming behavior with `principal()` set for its body, and only for it."""
    scope = contextvars.copy_context()
    scope.run(_current.set, who)
    responses = scope.run(behavior, request, context)
    while (item := scope.run(next, responses, _END)) is not _END:
        yield item
