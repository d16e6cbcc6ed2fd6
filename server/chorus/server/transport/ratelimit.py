"""Per-token rate limiting of ingest: one token bucket per token name, in contributions.

A bucket holds up to `burst` units and refills at `rate` units per second. A request of n
units is admitted when the bucket holds at least min(n, burst); it then takes all n, which
may leave the bucket in debt. So a batch larger than the burst is still admitted (once the
bucket is full) and the long-run rate never exceeds `rate`. Buckets are per replica.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import datetime

from chorus.server.model.clock import Clock


class RateLimited(Exception):
    """Over the limit; `retry_after` seconds from now the same request would be admitted."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


#: Float slack when comparing levels, so 0.1 s at 10/s refills exactly one unit.
_SLACK = 1e-9


@dataclass(slots=True)
class _Bucket:
    level: float
    updated: datetime  # when it was last refilled


class RateLimiter:
    """Token buckets keyed by token name (a bounded set: only authenticated names get one)."""

    def __init__(self, rate: float, burst: int, clock: Clock) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError(f"rate limit needs rate > 0 and burst >= 1, got rate={rate} burst={burst}")
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._lock = threading.Lock()
        self._buckets: dict[str, _Bucket] = {}
        #: Requests refused since start (read by the metrics scrape).
        self.refusals = 0

    def take(self, key: str, units: int) -> None:
        """Admit `units` for `key` or raise RateLimited; a refused request takes nothing."""
        now = self._clock.now()
        need = min(units, self.burst)
        with self._lock:
            bucket = self._buckets.get(key)
            if bucket is None:
                bucket = self._buckets[key] = _Bucket(float(self.burst), now)
            # A clock stepped backwards refills nothing until it passes the last refill again.
            elapsed = max(0.0, (now - bucket.updated).total_seconds())
            bucket.level = min(float(self.burst), bucket.level + elapsed * self.rate)
            bucket.updated = max(bucket.updated, now)
            if bucket.level + _SLACK < need:
                self.refusals += 1
                wait = (need - bucket.level) / self.rate
                raise RateLimited(f"ingest rate limit for token {key!r}: {self.rate:g} contributions per "
                                  f"second, burst {self.burst}; this batch of {units} fits in "
                                  f"{wait:.3f} s", wait)
            bucket.level -= units
