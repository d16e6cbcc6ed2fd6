"""The Client: the public facade over the aggregate (hot path) and the worker (sending).

It resolves the configuration, wires an Aggregate, a Delivery and a Worker together, and
owns the lifecycle: the atexit hook and the fork hook. Guarantees to the host tool:
count() never raises and never does I/O; nothing here ever raises into the host (bad
configuration gives a no-op client and one logged warning, not an exception). Warnings go
to logging, not to the warnings module, because a host running with `-W error` would turn
those into raises.

Fork handling lives here alone: in a child every client gets a fresh aggregate, delivery
and worker (new locks, no thread), because a parent thread may have held a lock at fork
and the parent's pending data is the parent's to send.
"""

from __future__ import annotations

import atexit
import logging
import os
import random
import time
import weakref
from collections.abc import Callable
from types import TracebackType
from typing import Any, Protocol

from chorus.client._aggregate import Aggregate
from chorus.client._config import ConfigError, PemSource, Settings, grpc_transport, resolve_settings
from chorus.client._delivery import ClientError, Delivery, report
from chorus.client._spool import Spool
from chorus.client._stats import Stats
from chorus.client._transport import Transport
from chorus.client._worker import Worker

__all__ = ["ATEXIT_SPOOLED_TIMEOUT", "ATEXIT_TIMEOUT", "Client", "Clock"]

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
        debug: log everything the "chorus.client" logger says (DEBUG and up) to stderr, unless
            the host configured a handler for it; repeats of a problem included.
        on_error: called with a ClientError for every problem (a send to retry, contributions
            refused, the client disabled), on the client's thread; what it raises is ignored.
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
        debug: bool = False,
        on_error: Callable[[ClientError], None] | None = None,
    ) -> None:
        if debug:
            _enable_debug()
        self._on_error = on_error
        self._settings: Settings | None = None
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
            self._time = time.time if clock is None else clock.time
        except Exception as exc:
            reason = str(exc) if isinstance(exc, ConfigError) else f"unexpected {type(exc).__name__} while configuring"
            logger.warning("chorus client disabled: %s", reason)
            report(on_error, ClientError("config", f"chorus client disabled: {reason}"))
            self._settings = None
            self._time = time.time
        self._start_afresh(closed=self._settings is None)
        if self._settings is not None:
            _CLIENTS.add(self)
            atexit.register(self._close_at_exit)

    def count(self, metric: str, value: int = 1, *, user: str | None = None) -> None:
        """Add `value` units of `metric` for `user` (default: the client's user) now.

        Never raises, never blocks on I/O: bad arguments (negative or non-int value,
        empty or non-string names) are ignored and counted in stats().invalid; when
        max_pending is reached the count is dropped and counted in stats().dropped.
        """
        # Replaced per instance by the aggregate's own count() (see _start_afresh), so the
        # hot path pays no call in between; this definition documents it and is a fallback.
        self._aggregate.count(metric, value, user=user)

    def flush(self, timeout: float | None = None) -> bool:
        """Send everything counted so far, waiting at most `timeout` seconds (None: no limit).

        Retries with backoff within the timeout. Returns True only when the server
        acknowledged everything pending at the call (accepted, duplicate, or answered
        with per-contribution rejections, see stats().rejected) and nothing is left to
        send; always True for a disabled client, which holds nothing. Returns False when
        a batch was given up (a non-retryable status such as INVALID_ARGUMENT, counted in
        stats().failed_batches), on timeout, or when close() interrupts. Never raises.
        """
        try:
            if self._worker is None or self._aggregate.closed:
                return self.stats().pending == 0
            return self._worker.flush(timeout)
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
            if self._worker is None or not self._aggregate.close():
                return  # disabled, or closed already
            atexit.unregister(self._close_at_exit)
            self._worker.close(timeout)
            self._transport.close()
        except Exception as exc:
            logger.warning("chorus client close failed: %s", type(exc).__name__)

    def stats(self) -> Stats:
        """A snapshot of the delivery counters."""
        counters: dict[str, Any] = self._delivery.counters() if self._delivery is not None else {}
        dropped, invalid, held = self._aggregate.counters()
        counters["dropped"] = counters.get("dropped", 0) + dropped
        counters["invalid"] = invalid
        counters["pending"] = held + (self._delivery.pending if self._delivery is not None else 0)
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

    def _close_at_exit(self) -> None:
        spooled = self._settings is not None and self._settings.spool_dir is not None
        self.close(ATEXIT_SPOOLED_TIMEOUT if spooled else ATEXIT_TIMEOUT)

    def _start_worker(self) -> None:
        if self._worker is not None:
            self._worker.start()

    def _start_afresh(self, *, closed: bool) -> None:
        """A new aggregate, delivery and worker: at construction, and in a forked child.

        In a child the locks are replaced, not reused (a parent thread may have held one at
        fork), no thread runs until the first count(), and the parent's data stays with the
        parent, which sends it.
        """
        settings = self._settings
        if settings is None:
            self._delivery = self._worker = None
            self._aggregate = Aggregate(user="", max_pending=0, time=self._time, on_first_count=None,
                                        explain_invalid=False)
        else:
            self._delivery = Delivery(
                self._transport,
                source=settings.source,
                source_version=settings.source_version,
                max_pending=settings.max_pending,
                timeout=settings.timeout,
                spool=Spool(settings.spool_dir) if settings.spool_dir is not None else None,
                rng=random.Random(),
                on_error=self._on_error,
            )
            self._aggregate = Aggregate(
                user=settings.user or "",
                max_pending=settings.max_pending,
                time=self._time,
                on_first_count=None if closed else self._start_worker,
            )
            self._worker = Worker(self._aggregate, self._delivery, interval=settings.flush_interval,
                                  spooled=settings.spool_dir is not None)
        # count() is the aggregate's own method: the hot path pays no call in between.
        self.count = self._aggregate.count  # type: ignore[method-assign]


def _enable_debug() -> None:
    """DEBUG on the SDK's logger, with a stderr handler if the host gave it none (posthog's and
    sentry's `debug=True`)."""
    sdk = logging.getLogger("chorus.client")
    sdk.setLevel(logging.DEBUG)
    if not any(not isinstance(h, logging.NullHandler) for h in sdk.handlers):
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        sdk.addHandler(handler)


# Live clients, for the fork hook; weak so that the registry keeps no client alive.
_CLIENTS: weakref.WeakSet[Client] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for client in list(_CLIENTS):
        client._start_afresh(closed=client._aggregate.closed)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)

