"""The Client: pre-aggregating counter, background flush thread, lifecycle.

Guarantees to the host tool: count() never raises and never does I/O; memory is bounded
by max_pending; nothing here ever raises into the host (bad configuration gives a no-op
client and one logged warning, not an exception). Warnings go to logging, not to the
warnings module, because a host running with `-W error` would turn those into raises.

Exit is prompt when a spool is set: every batch is written there before its first send, so
close() makes one pass over the queue and stops at the first retryable failure instead of
retrying until its timeout; the next start sends what is left. Without a spool, what close()
cannot send is lost, so it keeps retrying within its timeout.
"""

from __future__ import annotations

import atexit
import enum
import logging
import os
import random
import threading
import time
import weakref
from types import TracebackType
from typing import Any, Protocol

from chorus.client._config import ConfigError, PemSource, grpc_transport, resolve_settings, valid_name
from chorus.client._delivery import Delivery, Key
from chorus.client._spool import Spool
from chorus.client._stats import Stats
from chorus.client._transport import Transport

logger = logging.getLogger("chorus.client")

#: close() timeout when the interpreter exits without the host having closed the client:
#: without a spool (unsent counts are then lost, so it retries this long) ...
ATEXIT_TIMEOUT = 2.0
#: ... and with one, where everything is on disk already: one short attempt.
ATEXIT_SPOOLED_TIMEOUT = 0.5


class Clock(Protocol):
    """Wall-clock source; the `time` module itself is one."""

    def time(self) -> float:
        """Seconds since the Unix epoch."""
        ...


class _State(enum.Enum):
    DISABLED = "disabled"  # bad configuration: counts are dropped, nothing is sent
    IDLE = "idle"  # configured; the flush thread starts on the first count()
    RUNNING = "running"
    CLOSED = "closed"


class Client:
    """Counts AI usage per person and metric and reports it to a Chorus server.

    Counts are pre-aggregated in memory per (user, metric, minute) and sent by a daemon
    thread every `flush_interval` seconds. Use one client per process, created at start-up.

    Arguments fall back to the environment: CHORUS_ENDPOINT, CHORUS_TOKEN, CHORUS_USER,
    CHORUS_SPOOL_DIR, CHORUS_CA_FILE. With missing or bad configuration the client logs one
    warning on the "chorus.client" logger and does nothing.

    Args:
        endpoint: gRPC target of the Chorus server, e.g. "chorus.example.com:443".
        token: ingest token, sent as `authorization: Bearer <token>`.
        source: the reporting tool's name; source_version: its version.
        user: default user id for count() calls that pass none.
        flush_interval: seconds between sends.
        max_pending: most contributions held in memory (aggregated or awaiting resend);
            beyond it new ones are dropped, counted and reported to the server.
        spool_dir: where batches unsent at close() are kept for the next start.
        root_certificates: CA bundle (PEM bytes or a path) to verify the server.
        client_certificate, client_key: PEM bytes or paths, for mutual TLS.
            Paths, here and in the environment, may start with `~` (expanded).
        secure: TLS on or off; by default on unless the endpoint is loopback and no
            certificate is given.
        timeout: seconds allowed for one send.
        transport: replaces the gRPC transport (tests, custom channels); endpoint, token
            and TLS arguments are then ignored.
        clock: replaces time.time for the minute buckets (tests).
    """

    def __init__(
        self,
        endpoint: str | None = None,
        token: str | None = None,
        *,
        source: str = "unknown",
        source_version: str = "",
        user: str | None = None,
        flush_interval: float = 5.0,
        max_pending: int = 100_000,
        spool_dir: str | os.PathLike[str] | None = None,
        root_certificates: PemSource | None = None,
        client_certificate: PemSource | None = None,
        client_key: PemSource | None = None,
        secure: bool | None = None,
        timeout: float = 10.0,
        transport: Transport | None = None,
        clock: Clock | None = None,
    ) -> None:
        self._lock = threading.Lock()  # guards the counts and the counters next to them
        self._send_lock = threading.Lock()  # one sender at a time: flush thread, flush(), close()
        self._stop = threading.Event()
        # One-element lists, not ints: count() then hashes the key once (get, then add
        # in place) instead of twice (get, then set), ~60 ns of its ~450.
        self._counts: dict[Key, list[int]] = {}
        self._unreported_drops = 0  # memory-bound drops not yet handed to a batch
        self._dropped = 0
        self._invalid = 0
        self._held = 0  # contributions outside _counts that still count against max_pending
        self._generation = 0  # number of the latest drain of _counts into batches, for flush()
        self._thread: threading.Thread | None = None
        self._state = _State.DISABLED
        self._time = time.time
        self._user = ""  # no default user: "" is not a valid name, so such counts are invalid
        self._max_pending = 0
        self._delivery: Delivery | None = None
        try:
            self._settings = resolve_settings(
                source=source,
                source_version=source_version,
                user=user,
                flush_interval=flush_interval,
                max_pending=max_pending,
                timeout=timeout,
                spool_dir=spool_dir,
            )
            if transport is None:
                transport = grpc_transport(
                    endpoint=endpoint,
                    token=token,
                    root_certificates=root_certificates,
                    client_certificate=client_certificate,
                    client_key=client_key,
                    secure=secure,
                )
            self._transport = transport
            if clock is not None:
                self._time = clock.time
        except ConfigError as exc:
            logger.warning("chorus client disabled: %s", exc)
            return
        except Exception as exc:
            logger.warning("chorus client disabled: unexpected %s while configuring", type(exc).__name__)
            return
        self._user = self._settings.user or ""
        self._max_pending = self._settings.max_pending
        self._delivery = self._new_delivery()
        self._state = _State.IDLE
        _CLIENTS.add(self)
        atexit.register(self._close_at_exit)

    def count(self, metric: str, value: int = 1, *, user: str | None = None) -> None:
        """Add `value` units of `metric` for `user` (default: the client's user) now.

        Never raises, never blocks on I/O: bad arguments (negative or non-int value,
        empty or non-string names) are ignored and counted in stats().invalid; when
        max_pending is reached the count is dropped and counted in stats().dropped.
        """
        # Hot path: one clock read, one lock, one dict update, for a key already seen this
        # minute. Everything else (first use of a key, validation, lazily starting the
        # thread, the memory bound) is in _count_slow, reached once per key per minute.
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

    def flush(self, timeout: float | None = None) -> bool:
        """Send everything counted so far, waiting at most `timeout` seconds (None: no limit).

        Retries with backoff within the timeout. Returns True only when the server
        acknowledged everything pending at the call (accepted, duplicate, or answered
        with per-contribution rejections, see stats().rejected) and nothing is left to
        send; always True for a disabled client, which holds nothing. Returns False when
        a batch was given up (a non-retryable status such as UNAUTHENTICATED, counted in
        stats().failed_batches), on timeout, or when close() interrupts. Never raises.
        """
        if self._state in (_State.DISABLED, _State.CLOSED):
            return self._pending() == 0
        try:
            return self._flush_watched(timeout)
        except Exception:
            logger.warning("chorus client flush failed", exc_info=True)
            return False

    def close(self, timeout: float = 5.0) -> None:
        """Stop the flush thread and send what is left within `timeout` seconds.

        With a spool directory everything is on disk before it is sent, so close() makes one
        attempt and returns at the first retryable failure (server down, overloaded): what
        was not acknowledged stays in the spool for the next start. Without one it retries
        within `timeout`, and what could not be sent is lost (counted in stats().dropped).
        Later count() calls are dropped. Idempotent; also called at interpreter exit with a
        short timeout (ATEXIT_SPOOLED_TIMEOUT with a spool, else ATEXIT_TIMEOUT).
        """
        try:
            self._close(timeout)
        except Exception as exc:
            logger.warning("chorus client close failed: %s", type(exc).__name__)

    def stats(self) -> Stats:
        """A snapshot of the delivery counters."""
        counters: dict[str, Any] = self._delivery.counters() if self._delivery is not None else {}
        with self._lock:
            counters["dropped"] = counters.get("dropped", 0) + self._dropped
            counters["invalid"] = self._invalid
        counters["pending"] = self._pending()
        return Stats(**counters)

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _count_slow(self, metric: object, value: object, user: object) -> None:
        try:
            if user is None:
                user = self._user
            if type(value) is not int or value < 0 or not valid_name(metric) or not valid_name(user):
                with self._lock:
                    self._invalid += 1
                return
            if value == 0:
                return
            key = (user, metric, self._time() // 60)
            with self._lock:
                if self._state is not _State.RUNNING:
                    if self._state is not _State.IDLE:
                        self._dropped += 1
                        return
                    self._start_locked()
                counts = self._counts
                cell = counts.get(key)
                if cell is not None:
                    cell[0] += value
                elif len(counts) + self._held < self._max_pending:
                    counts[key] = [value]
                else:
                    self._dropped += 1
                    self._unreported_drops += 1
        except Exception:
            pass  # count() must not raise into the host, even with a broken injected clock

    def _start_locked(self) -> None:
        thread = threading.Thread(target=self._run, name="chorus-client-flush", daemon=True)
        thread.start()
        self._thread = thread
        self._state = _State.RUNNING

    def _run(self) -> None:
        interval = self._settings.flush_interval
        stop = self._stop
        delay = interval
        # Waiting on the stop event, not sleeping, so close() interrupts any backoff at once.
        while not stop.wait(delay):
            retry = self._step(interrupt=stop)
            delay = interval if retry is None else retry

    def _step(self, timeout: float | None = None, interrupt: threading.Event | None = None) -> float | None:
        """Drain the aggregated counts into batches and send the queue once.

        The flush thread's loop body, also used by flush() and close(). Returns None when
        nothing is left to send, else the delay before the next attempt: the backoff after
        a retryable failure, or 0.0 when the timeout or `interrupt` cut the attempt short.
        """
        delivery = self._delivery
        if delivery is None:
            return None
        deadline = None if timeout is None else time.monotonic() + timeout
        if not self._send_lock.acquire(timeout=-1 if timeout is None else max(0.0, timeout)):
            return 0.0
        in_hand = False  # counts drained but not yet queued in delivery
        try:
            with self._lock:
                counts, self._counts = self._counts, {}
                drops, self._unreported_drops = self._unreported_drops, 0
                # Drained counts still count against max_pending until acknowledged.
                self._held = delivery.pending + len(counts)
                self._generation += 1
                generation = self._generation
                in_hand = bool(counts)
            delivery.add({key: cell[0] for key, cell in counts.items()}, drops, generation)
            in_hand = False
            remaining = None if deadline is None else deadline - time.monotonic()
            return delivery.send(remaining, interrupt)
        except Exception:
            # A bug must neither kill the flush thread nor make flush() report success.
            logger.warning("chorus client flush step failed", exc_info=True)
            if in_hand:
                delivery.lose_watched()  # drained but never queued: those counts are lost
            return self._settings.flush_interval if delivery.pending else None
        finally:
            with self._lock:
                self._held = delivery.pending
            self._send_lock.release()

    def _flush_watched(self, timeout: float | None) -> bool:
        delivery = self._delivery
        assert delivery is not None
        with self._lock:
            # What is pending now is in batches of drains up to the next one: those already
            # drained carry lower numbers, and the counts held now go into the next drain.
            # Registered under the lock so that no drain can slip between the two.
            watch = delivery.watch(self._generation + 1)
        try:
            sent = self._flush(timeout, self._stop)
        finally:
            delivery.unwatch(watch)
        return sent and not watch.lost

    def _flush(self, timeout: float | None, interrupt: threading.Event) -> bool:
        """Step until nothing is left to send (True), or the timeout or `interrupt` (False)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            remaining = None if deadline is None else deadline - time.monotonic()
            retry = self._step(remaining, interrupt)
            if retry is None:
                return True
            if deadline is not None and retry >= deadline - time.monotonic():
                return False
            if interrupt.wait(retry):
                return False

    def _close(self, timeout: float) -> None:
        with self._lock:
            if self._state in (_State.DISABLED, _State.CLOSED):
                return
            self._state = _State.CLOSED
            thread = self._thread
        atexit.unregister(self._close_at_exit)
        deadline = time.monotonic() + timeout
        self._stop.set()
        if thread is not None and thread is not threading.current_thread():
            thread.join(max(0.0, deadline - time.monotonic()))
        # A fresh event: close's own attempt must not be cut short by the stop it just set.
        remaining = max(0.0, deadline - time.monotonic())
        if self._settings.spool_dir is not None:
            # One pass: the drain is written ahead to the spool, then sent until done or the
            # first retryable failure. Waiting out a backoff would only delay the host's exit.
            sent = self._step(remaining, threading.Event()) is None
        else:
            sent = self._flush(remaining, threading.Event())
        if not sent:
            delivery = self._delivery
            assert delivery is not None
            # The flush thread may still be inside a send; Delivery's own lock makes adding
            # and spooling safe alongside it (a batch it then delivers is merely resent later).
            with self._lock:
                counts, self._counts = self._counts, {}
                drops, self._unreported_drops = self._unreported_drops, 0
                self._generation += 1
                generation = self._generation
            delivery.add({key: cell[0] for key, cell in counts.items()}, drops, generation)
            delivery.spool_unsent()
        self._transport.close()

    def _close_at_exit(self) -> None:
        self.close(ATEXIT_SPOOLED_TIMEOUT if self._settings.spool_dir is not None else ATEXIT_TIMEOUT)

    def _pending(self) -> int:
        with self._lock:
            held = len(self._counts)
        return held + (self._delivery.pending if self._delivery is not None else 0)

    def _new_delivery(self) -> Delivery:
        settings = self._settings
        return Delivery(
            self._transport,
            source=settings.source,
            source_version=settings.source_version,
            max_pending=settings.max_pending,
            timeout=settings.timeout,
            spool=Spool(settings.spool_dir) if settings.spool_dir is not None else None,
            rng=random.Random(),
        )

    def _reset_after_fork(self) -> None:
        """In a forked child: start afresh; the parent still owns and sends its own data.

        Locks are replaced, not reused: another parent thread may have held one at fork.
        """
        self._lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._stop = threading.Event()
        self._counts = {}
        self._unreported_drops = self._dropped = self._invalid = self._held = self._generation = 0
        self._thread = None
        if self._state is _State.RUNNING:
            self._state = _State.IDLE  # the next count() starts the child's own thread
        if self._delivery is not None:
            self._delivery = self._new_delivery()


# Live clients, for the fork hook; weak so that the registry keeps no client alive.
_CLIENTS: weakref.WeakSet[Client] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for client in list(_CLIENTS):
        client._reset_after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)

