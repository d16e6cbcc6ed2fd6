"""Batches awaiting delivery: building them, sending in order, retrying, spooling.

Modelled on the OpenTelemetry OTLP gRPC exporter, with exponential backoff and full jitter
unless the server's RetryInfo says how long to wait. A failed batch keeps its batch_id and
contents, so the server's de-duplication makes every resend safe.

Invariant: a batch is dropped (and its spool file deleted) only on an answer that says the
batch itself is bad (FINAL_CODES), or when a bound forces it: max_pending, the spool's size,
or MAX_BATCH_AGE; a bound's drop is counted in `dropped` and reported to the server in the
next batch's `dropped` field. Every other answer (UNAVAILABLE on a full disk, INTERNAL,
UNAUTHENTICATED, ...) may change, so the batch is kept and sent again. Batches are sent
oldest first; the first failure ends the attempt, since the rest would most likely fail the
same way. A failure that may concern that batch alone (not a transient one of the whole
server) moves it to the back of the queue, so that one batch a server keeps refusing does
not hold up the others.
"""

from __future__ import annotations

import logging
import random
import secrets
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import grpc

from chorus.client._aggregate import Key
from chorus.client._spool import Spool
from chorus.client._transport import Transport, TransportError
from chorus.client.limits import MAX_BATCH_BYTES, MAX_BATCH_CONTRIBUTIONS
from chorus.v1 import ingest_pb2

__all__ = ["BACKOFF_CAP", "MAX_BATCH_AGE", "MAX_SERVER_DELAY", "Delivery", "Watch"]

logger = logging.getLogger("chorus.client")

#: Estimated encoding overhead of one Contribution besides its two strings.
_CONTRIBUTION_OVERHEAD = 32
_INT64_MAX = 2**63 - 1

BACKOFF_BASE = 1.0
BACKOFF_CAP = 60.0
#: Ceiling on a server-requested RetryInfo delay, against a misconfigured server.
MAX_SERVER_DELAY = 600.0
#: A batch not acknowledged this long after it was built is dropped (counted and reported):
#: by then every window its events belong to has closed (the longest window is a week, plus
#: its grace), so the server would only reject its contributions as late.
MAX_BATCH_AGE = 14 * 24 * 3600.0
#: Failures of the server as a whole (down, overloaded, rate limiting): the failed batch stays
#: at the head. After any other kept failure (INTERNAL, UNAUTHENTICATED, ...) the server may be
#: refusing that batch alone, so it goes to the back of the queue.
_TRANSIENT_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
                              grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.ABORTED,
                              grpc.StatusCode.CANCELLED})


@dataclass(eq=False)
class _Batch:
    request: ingest_pb2.ReportRequest
    #: Contributions held, counted against max_pending.
    size: int
    #: The spool file holding this batch, deleted once the batch is settled.
    spool_path: Path | None = None
    #: The client's drain that produced the batch (or during which it was read from the spool).
    generation: int = 0
    #: When the batch was built (or its spool file written), Unix seconds, for MAX_BATCH_AGE.
    created: float = 0.0


@dataclass(eq=False)
class Watch:
    """One flush() call's interest in the batches of drains up to `generation`.

    `lost` turns True when such a batch is given up instead of acknowledged.
    """

    generation: int
    lost: bool = False


class Delivery:
    """The queue of batches awaiting acknowledgement and the counters about them.

    `add` and `send` are called by one thread at a time (the worker's send lock); the
    internal lock only guards the queue, counters and watches against `spool_unsent`, `pending`,
    `counters` and `watch`/`unwatch`, which other threads may call meanwhile.
    """

    def __init__(
        self,
        transport: Transport,
        *,
        source: str,
        source_version: str,
        max_pending: int,
        timeout: float,
        spool: Spool | None,
        rng: random.Random,
        wall: Callable[[], float] = time.time,
        on_error: Callable[[ClientError], None] | None = None,
    ) -> None:
        self._on_error = on_error
        self._transport = transport
        self._source = source
        self._source_version = source_version
        self._max_pending = max_pending
        self._timeout = timeout
        self._spool = spool
        self._rng = rng
        self._wall = wall
        self._lock = threading.Lock()
        self._queue: deque[_Batch] = deque()
        self._held = 0
        self._unreported_drops = 0
        self._attempt = 0
        self._warned: set[str] = set()
        self._watches: list[Watch] = []
        self.sent_batches = 0
        self.accepted = 0
        self.duplicates = 0
        self.rejected: Counter[str] = Counter()
        self.dropped = 0
        self.failed_batches = 0
        self.retries = 0
        self.spooled = 0
        self.spool_corrupt = 0

    @property
    def pending(self) -> int:
        """Contributions held in batches awaiting acknowledgement."""
        return self._held

    def add(self, counts: Mapping[Key, int], dropped: int, generation: int = 0) -> None:
        """Turn drained counts into batches behind those already queued.

        `dropped` (memory-bound drops since the last drain) rides on the first new batch.
        The server refuses batches without contributions, so with no counts the drop
        report waits for the next batch that has some. `generation` numbers the client's
        drain that produced `counts`; the new batches, and any read from the spool now,
        carry it for `watch`.
        """
        with self._lock:
            if not self._queue and self._spool is not None:
                self._load_spool(generation)
            dropped += self._unreported_drops
            if not counts:
                self._unreported_drops = dropped
                return
            self._unreported_drops = 0
            batches = self._build(counts)
            batches[0].request.dropped = dropped
            created = self._wall()
            for batch in batches:
                batch.generation = generation
                batch.created = created
            if self._spool is not None:
                # Write-ahead: a batch is on disk before its first send, so a process killed
                # mid-flush resends it (same batch_id) on its next start instead of losing it.
                for batch in batches:
                    batch.spool_path = self._spool.write(batch.request)
                    self.spooled += batch.spool_path is not None
            self._queue.extend(batches)
            self._held += sum(batch.size for batch in batches)

    def send(self, timeout: float | None = None, interrupt: threading.Event | None = None) -> float | None:
        """Send queued batches in order until done, a retryable failure, or the deadline.

        Returns None when the queue is empty, else the delay before the next attempt
        (0.0 when stopped by the deadline or `interrupt`).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        self._expire()
        while True:
            with self._lock:
                if not self._queue:
                    return None
                batch = self._queue[0]
            rpc_timeout = self._timeout
            if deadline is not None:
                rpc_timeout = min(rpc_timeout, deadline - time.monotonic())
            if rpc_timeout <= 0 or (interrupt is not None and interrupt.is_set()):
                return 0.0
            try:
                response = self._transport.send(batch.request, rpc_timeout)
            except TransportError as exc:
                if exc.code == grpc.StatusCode.ALREADY_EXISTS:
                    self._settle(batch, ingest_pb2.ReportResponse(duplicate=True))
                elif exc.retryable:
                    if exc.code not in _TRANSIENT_CODES:
                        with self._lock:
                            if self._queue and self._queue[0] is batch:
                                self._queue.rotate(-1)  # to the back: it must not hold up the others
                    return self._backoff(exc)
                else:
                    self._give_up(batch, exc.code.name)
            except Exception as exc:
                # A transport bug must not kill the flush thread nor block the queue forever.
                logger.debug("transport raised", exc_info=True)
                self._give_up(batch, type(exc).__name__)
            else:
                self._settle(batch, response)

    def watch(self, generation: int) -> Watch:
        """Start noting whether a batch of a drain up to `generation` is given up."""
        watch = Watch(generation)
        with self._lock:
            self._watches.append(watch)
        return watch

    def unwatch(self, watch: Watch) -> None:
        """Stop updating `watch`."""
        with self._lock:
            if watch in self._watches:
                self._watches.remove(watch)

    def lose_watched(self) -> None:
        """Mark every current watch lost: a step failed unexpectedly and cannot vouch for its data."""
        with self._lock:
            for watch in self._watches:
                watch.lost = True

    def spool_unsent(self) -> None:
        """Write every queued batch not yet on disk (its write-ahead failed) to the spool, or count it dropped."""
        with self._lock:
            unsent = [batch for batch in self._queue if batch.spool_path is None]
            for batch in unsent:
                path = self._spool.write(batch.request) if self._spool is not None else None
                if path is None:
                    self.dropped += len(batch.request.contributions)
                    self._lose_locked(batch)
                else:
                    batch.spool_path = path
                    self.spooled += 1
        lost = sum(len(batch.request.contributions) for batch in unsent if batch.spool_path is None)
        if lost:
            logger.warning("%d contributions could not be delivered before close and were lost", lost)

    def counters(self) -> dict[str, object]:
        """A consistent copy of the counters, for Stats."""
        with self._lock:
            return {
                "sent_batches": self.sent_batches,
                "accepted": self.accepted,
                "duplicates": self.duplicates,
                "rejected": dict(self.rejected),
                "dropped": self.dropped,
                "failed_batches": self.failed_batches,
                "retries": self.retries,
                "spooled": self.spooled,
                "spool_corrupt": self.spool_corrupt,
            }

    def _build(self, counts: Mapping[Key, int]) -> list[_Batch]:
        batches: list[_Batch] = []
        request = self._new_request()
        n = size = 0
        for (user, metric, bucket), value in counts.items():
            cost = len(user.encode()) + len(metric.encode()) + _CONTRIBUTION_OVERHEAD
            if n == MAX_BATCH_CONTRIBUTIONS or size + cost > MAX_BATCH_BYTES:
                batches.append(_Batch(request, n))
                request = self._new_request()
                n = size = 0
            contribution = request.contributions.add(user=user, metric=metric, value=min(value, _INT64_MAX))
            contribution.event_time.seconds = int(bucket) * 60
            n += 1
            size += cost
        batches.append(_Batch(request, n))
        return batches

    def _new_request(self) -> ingest_pb2.ReportRequest:
        return ingest_pb2.ReportRequest(
            batch_id=secrets.token_hex(16), source=self._source, source_version=self._source_version
        )

    def _load_spool(self, generation: int) -> None:
        assert self._spool is not None
        loaded, corrupt = self._spool.load(self._max_pending - self._held)
        self.spool_corrupt += corrupt
        for path, request in loaded:
            written = self._spool.written_at(path)
            batch = _Batch(request, len(request.contributions), path, generation,
                           self._wall() if written is None else written)
            self._queue.append(batch)
            self._held += batch.size

    def _expire(self) -> None:
        """Drop the batches older than MAX_BATCH_AGE: counted, and reported with the next batch."""
        oldest = self._wall() - MAX_BATCH_AGE
        with self._lock:
            expired = [batch for batch in self._queue if batch.created < oldest]
            for batch in expired:
                self._unqueue(batch)
                self._lose_locked(batch)
                lost = len(batch.request.contributions)
                self.dropped += lost
                # Its own drop report never reached the server either.
                self._unreported_drops += lost + batch.request.dropped
        if expired:
            self._warn_once("expired", "%d batch(es) dropped: not acknowledged within %.0f days",
                            len(expired), MAX_BATCH_AGE / 86400)

    def _backoff(self, exc: TransportError) -> float:
        with self._lock:
            self._attempt += 1
            self.retries += 1
            attempt = self._attempt
        self._warn_once(f"retry:{exc.code.name}", "send failed with %s; batch kept, will retry", exc)
        if exc.retry_delay is not None:
            return min(exc.retry_delay, MAX_SERVER_DELAY)
        # Full jitter: spreads the retries of many clients after a shared outage.
        return self._rng.uniform(0.0, min(BACKOFF_CAP, BACKOFF_BASE * 2.0 ** min(attempt - 1, 32)))

    def _give_up(self, batch: _Batch, reason: str) -> None:
        with self._lock:
            if self._unqueue(batch):
                self._lose_locked(batch)
            self.failed_batches += 1
            # The drop report in it never reached the server; carry it to the next batch.
            self._unreported_drops += batch.request.dropped
        self._warn_once(
            f"fail:{reason}",
            "batch of %d contributions dropped: send failed with %s (the batch itself is refused)",
            len(batch.request.contributions),
            reason,
        )

    def _settle(self, batch: _Batch, response: ingest_pb2.ReportResponse) -> None:
        # Read the answer before touching the queue: a malformed one leaves the batch queued.
        accepted, duplicate = response.accepted, response.duplicate
        reasons = Counter(_reason_name(rejection.reason) for rejection in response.rejections)
        with self._lock:
            self._unqueue(batch)
            self._attempt = 0
            self.sent_batches += 1
            self.accepted += accepted
            self.duplicates += duplicate
            self.rejected.update(reasons)
        contributions = batch.request.contributions
        unknown = sorted({contributions[r.index].metric for r in response.rejections
                          if r.reason == ingest_pb2.REJECT_REASON_UNKNOWN_METRIC and r.index < len(contributions)})
        for reason, n in reasons.items():
            # A metric name is the tool's vocabulary, never a person's: name the ones refused.
            named = f" (not in the server's policy: {', '.join(unknown)})" if reason == "UNKNOWN_METRIC" else ""
            self._warn_once(f"reject:{reason}", "server rejected %d contributions: %s%s", n, reason, named)

    def _unqueue(self, batch: _Batch) -> bool:
        """Remove a settled batch; False if it was no longer queued."""
        # By identity, not position: close() may append to the queue from another thread.
        try:
            self._queue.remove(batch)
        except ValueError:
            return False
        self._held -= batch.size
        if batch.spool_path is not None and self._spool is not None:
            self._spool.remove(batch.spool_path)
        return True

    def _lose_locked(self, batch: _Batch) -> None:
        for watch in self._watches:
            if batch.generation <= watch.generation:
                watch.lost = True

    def _warn_once(self, key: str, message: str, *args: object) -> None:
        # Once per kind of problem: a bad token or a down server must not flood the host's log.
        # Every occurrence goes to on_error (and to the log at DEBUG after the first).
        level = logging.DEBUG if key in self._warned else logging.WARNING
        self._warned.add(key)
        logger.log(level, message, *args)
        report(self._on_error, ClientError(key.partition(":")[0], message % args))


class ClientError(Exception):
    """What the client's on_error callback receives: `kind` is "retry" (kept, sent again),
    "fail" (a batch the server refused as malformed, dropped), "reject" (contributions the
    server refused, see stats().rejected), "expired" (batches too old to send) or "config"
    (the client is disabled); the message says the rest and never holds a user id or token."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def report(on_error: Callable[[ClientError], None] | None, error: ClientError) -> None:
    """Call the host's callback; whatever it raises stays here (logged once per exception type)."""
    if on_error is None:
        return
    try:
        on_error(error)
    except Exception as exc:
        name = type(exc).__name__
        if name not in _CALLBACK_FAILURES:
            _CALLBACK_FAILURES.add(name)
            logger.warning("on_error callback raised %s; the client ignores it", name)


_CALLBACK_FAILURES: set[str] = set()


def _reason_name(reason: int) -> str:
    try:
        return ingest_pb2.RejectReason.Name(reason).removeprefix("REJECT_REASON_")
    except ValueError:
        return str(reason)
