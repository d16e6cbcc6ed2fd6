"""The hot path: counts pre-aggregated per (user, metric, minute) under one lock.

Invariants: `count()` never raises, never blocks on I/O and, for a key already seen this
minute, costs one clock read, one lock and one dict update. At most `max_pending`
contributions are held: the keys here plus `held`, those drained into batches that still
await acknowledgement; a new key beyond the bound is dropped, counted, and its drop handed
to the next drain exactly once. Each drain swaps the dict out under the lock and gets the
next generation number, so that flush() can name the drains holding what was pending when
it was called (`watch`). Once closed, every count is dropped.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from chorus.client._config import valid_name
from chorus.client.limits import MAX_NAME_CHARS

logger = logging.getLogger("chorus.client")


class _Every(set[str]):
    """A set that holds everything: no cause is ever new (a disabled client explains none)."""

    def __contains__(self, item: object) -> bool:
        return True


_EVERY_CAUSE = _Every()

__all__ = ["Aggregate", "Drain", "Key"]

#: A pre-aggregation key: (user, metric, minute bucket = unix seconds // 60).
Key = tuple[str, str, float]

_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class Drain:
    """What one drain took out of the aggregate."""

    counts: dict[Key, int]
    #: Memory-bound drops since the previous drain, for the server's `dropped` field.
    dropped: int
    #: The drain's number, 1 for the first.
    generation: int


class Aggregate:
    """The per-(user, metric, minute) sums, with the memory bound and the invalid/dropped counters.

    `on_first_count` is called once, under the lock, by the first valid count(): it starts
    the worker thread, so a client that never counts never starts one.
    """

    def __init__(
        self,
        *,
        user: str,
        max_pending: int,
        time: Callable[[], float],
        on_first_count: Callable[[], None] | None,
        explain_invalid: bool = True,
    ) -> None:
        self._lock = threading.Lock()
        # One-element lists, not ints: count() then hashes the key once (get, then add
        # in place) instead of twice (get, then set), ~60 ns of its ~450.
        self._counts: dict[Key, list[int]] = {}
        self._user = user  # "" (no default user) is not a valid name, so such counts are invalid
        self._max_pending = max_pending
        self._time = time
        self._on_first_count = on_first_count
        self._closed = on_first_count is None
        self._held = 0  # contributions drained into batches not yet acknowledged
        self._unreported_drops = 0  # memory-bound drops not yet handed to a drain
        self._generation = 0
        self.dropped = 0
        self.invalid = 0
        # False for a disabled client: its one warning says why nothing is counted.
        self._invalid_causes: set[str] = set() if explain_invalid else _EVERY_CAUSE

    def count(self, metric: str, value: int = 1, *, user: str | None = None) -> None:
        """Add `value` to (user, metric, this minute); see Client.count."""
        # Hot path: one clock read, one lock, one dict update, for a key already seen this
        # minute. Everything else (first use of a key, validation, lazily starting the
        # worker, the memory bound) is in _count_slow, reached once per key per minute.
        if type(value) is int and value > 0:
            try:
                # Float floor division: ~40 ns cheaper than int(t) // 60, same bucket.
                key = (self._user if user is None else user, metric, self._time() // 60)
                lock = self._lock
                # acquire/release rather than `with`: ~90 ns cheaper per call on CPython 3.11.
                lock.acquire()
                try:
                    cell = self._counts.get(key)
                    if cell is not None:
                        cell[0] += value
                        return
                finally:
                    lock.release()
            except Exception:
                pass  # e.g. an unhashable metric: _count_slow rejects it without raising
        self._count_slow(metric, value, user)

    def _invalid(self, value: object, metric: object, user: object) -> None:
        """Count an ignored call, and log its cause the first time (never the user id or the metric's value)."""
        if type(value) is not int or value < 0:
            negative = " < 0" if type(value) is int else ""
            cause = f"value must be a non-negative int, got {type(value).__name__}{negative}"
        elif not valid_name(metric):
            cause = f"metric must be a non-empty string of at most {MAX_NAME_CHARS} characters"
        elif user == "":
            cause = "no user: pass user= to count() or give the client a default user (user= or CHORUS_USER)"
        else:
            cause = f"user must be a non-empty string of at most {MAX_NAME_CHARS} characters"
        with self._lock:
            self.invalid += 1
            first = cause not in self._invalid_causes
            self._invalid_causes.add(cause)
        if first and self._invalid_causes is not _EVERY_CAUSE:
            logger.warning("count() ignored (counted in stats().invalid; logged once per cause): %s", cause)

    def _count_slow(self, metric: object, value: object, user: object) -> None:
        try:
            if user is None:
                user = self._user
            if type(value) is not int or value < 0 or not valid_name(metric) or not valid_name(user):
                self._invalid(value, metric, user)
                return
            if value == 0:
                return
            key = (user, metric, self._time() // 60)
        except Exception:
            # A broken clock: the count cannot be bucketed and is lost, but never raises.
            with self._lock:
                self.dropped += 1
            return
        with self._lock:
            if self._closed:
                self.dropped += 1
                return
            if self._on_first_count is not None:
                start, self._on_first_count = self._on_first_count, None
                # Failing to start (the interpreter shutting down) must not lose the count:
                # flush() and close() still send it.
                with contextlib.suppress(Exception):
                    start()
            try:
                counts = self._counts
                cell = counts.get(key)
                if cell is not None:
                    cell[0] += value
                elif len(counts) + self._held < self._max_pending:
                    counts[key] = [value]
                else:
                    self.dropped += 1
                    self._unreported_drops += 1
            except Exception:
                self.dropped += 1  # e.g. a clock whose time() // 60 is unhashable: never raise

    def drain(self, held: int) -> Drain:
        """Take every count out; `held` contributions already await acknowledgement elsewhere.

        The drained counts keep counting against max_pending (until `hold` says otherwise).
        """
        with self._lock:
            counts, self._counts = self._counts, {}
            drops, self._unreported_drops = self._unreported_drops, 0
            self._held = held + len(counts)
            self._generation += 1
            generation = self._generation
        return Drain({key: cell[0] for key, cell in counts.items()}, drops, generation)

    def hold(self, held: int) -> None:
        """Set how many drained contributions still await acknowledgement."""
        with self._lock:
            self._held = held

    def at_next_drain(self, register: Callable[[int], _T]) -> _T:
        """Call `register` with the number the next drain will get, with no drain in between.

        What is pending now is in the drains numbered up to that one: those already drained
        carry lower numbers, and the counts held now go into the next.
        """
        with self._lock:
            return register(self._generation + 1)

    def close(self) -> bool:
        """Drop every later count; False if already closed."""
        with self._lock:
            was_open, self._closed = not self._closed, True
            self._on_first_count = None
        return was_open

    @property
    def closed(self) -> bool:
        """Whether later counts are dropped (a closed or disabled client)."""
        return self._closed

    def counters(self) -> tuple[int, int, int]:
        """(dropped, invalid, contributions not yet drained), read together."""
        with self._lock:
            return self.dropped, self.invalid, len(self._counts)
