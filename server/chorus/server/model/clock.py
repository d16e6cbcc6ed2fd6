"""Time as a dependency: domain code asks a Clock, never `time.time()` directly.

`monotonic()` is the clock's own steady seconds (never jumps; only differences mean anything):
the window closer checks the wall clock against it (chorus.server.domain.closer.ClockGuard).
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    """Source of the current UTC time."""

    def now(self) -> datetime: ...

    def monotonic(self) -> float: ...


class SystemClock:
    """The real wall clock, in UTC."""

    def now(self) -> datetime:
        return datetime.now(UTC)

    def monotonic(self) -> float:
        return time.monotonic()


class FakeClock:
    """A clock tests and the demo move by hand: `advance` and `set` move its monotonic time
    along (forward only), `jump` moves the wall clock alone, as a stepped system clock does."""

    def __init__(self, start: datetime) -> None:
        if start.tzinfo is None:
            raise ValueError("FakeClock needs an aware datetime")
        self._now = start
        self._steady = 0.0
        self._lock = threading.Lock()

    def now(self) -> datetime:
        with self._lock:
            return self._now

    def monotonic(self) -> float:
        with self._lock:
            return self._steady

    def advance(self, delta: timedelta) -> None:
        with self._lock:
            self._now += delta
            self._steady += max(0.0, delta.total_seconds())

    def set(self, when: datetime) -> None:
        with self._lock:
            self._steady += max(0.0, (when - self._now).total_seconds())
            self._now = when

    def jump(self, delta: timedelta) -> None:
        with self._lock:
            self._now += delta
