"""Server-side sessions: the browser holds only a random id; the token stays in this process.

Sessions live in memory, so restarting the dashboard signs everyone out, which is the safe
failure. Each session expires after a period without requests and after a fixed lifetime,
and the store is bounded so a flood of sign-ins cannot exhaust memory.
"""

from __future__ import annotations

import hmac
import secrets
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from chorus.server.dashboard.sso import Grant
from chorus.server.model.clock import Clock
from chorus.server.model.roles import Role


@dataclass(slots=True)
class Session:
    """One signed-in browser. `token` is the person's Chorus token, or their access token from
    the identity provider (`grant`, renewed before it expires); neither is ever rendered."""

    id: str
    token: str = field(repr=False)
    role: Role
    csrf: str
    created: datetime
    last_seen: datetime
    grant: Grant | None = field(default=None, repr=False)

    def renewed(self, grant: Grant) -> None:
        self.token, self.grant = grant.access_token, grant

    def csrf_ok(self, presented: str | None) -> bool:
        return presented is not None and hmac.compare_digest(self.csrf, presented)


class SessionStore:
    """Thread-safe in-memory sessions with idle and absolute expiry, oldest evicted first."""

    def __init__(self, clock: Clock, *, idle: timedelta = timedelta(minutes=30),
                 lifetime: timedelta = timedelta(hours=12), capacity: int = 10_000) -> None:
        self._clock = clock
        self._idle = idle
        self._lifetime = lifetime
        self._capacity = capacity
        self._sessions: OrderedDict[str, Session] = OrderedDict()
        self._lock = threading.Lock()

    def create(self, token: str, role: Role, grant: Grant | None = None) -> Session:
        """A new session with fresh random id and CSRF token (never reuses a presented id)."""
        now = self._clock.now()
        session = Session(secrets.token_urlsafe(32), token, role, secrets.token_urlsafe(32), now, now, grant)
        with self._lock:
            # Least recently used first: drop the idle ones, then any excess over capacity.
            while self._sessions and now - next(iter(self._sessions.values())).last_seen > self._idle:
                self._sessions.popitem(last=False)
            self._sessions[session.id] = session
            while len(self._sessions) > self._capacity:
                self._sessions.popitem(last=False)
        return session

    def get(self, session_id: str | None) -> Session | None:
        """The live session for `session_id`, marking it used; None if unknown or expired."""
        if not session_id:
            return None
        now = self._clock.now()
        with self._lock:
            session = self._sessions.get(session_id)
            if session is None:
                return None
            if now - session.last_seen > self._idle or now - session.created > self._lifetime:
                del self._sessions[session_id]
                return None
            session.last_seen = now
            self._sessions.move_to_end(session_id)
            return session

    def delete(self, session_id: str) -> None:
        with self._lock:
            self._sessions.pop(session_id, None)

    def __len__(self) -> int:
        with self._lock:
            return len(self._sessions)
