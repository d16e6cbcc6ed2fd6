"""The worker: a daemon thread that sends every interval, and the one pass it shares with flush() and close().

Modelled on sentry-python's BackgroundWorker: a small thread that never dies (a failing
pass is logged and the loop goes on), a flush that waits at most its timeout, and a stop
that interrupts any wait at once (waits are on an event, never a sleep).

Invariants:
- One pass at a time (the send lock), whoever runs it: the thread, flush() or close(). A
  pass drains the aggregate into the delivery queue (the only drain there is) and sends
  the queue once, until it is empty or the first retryable failure.
- flush() returns True only if everything pending when it was called was acknowledged:
  it watches the drains up to the next one, so a batch of theirs given up by any pass,
  even one already under way on the thread, makes it False.
- close() with a spool makes one pass and returns at the first retryable failure: every
  batch is on disk before its first send, and the next start sends what is left. Without
  a spool, what close() cannot send is lost, so it retries within its timeout. Whatever
  is unsent at the end is drained and spooled (or counted dropped).
"""

from __future__ import annotations

import logging
import threading
import time

from chorus.client._aggregate import Aggregate
from chorus.client._delivery import Delivery

__all__ = ["Worker"]

logger = logging.getLogger("chorus.client")


class Worker:
    """Moves counts from the aggregate to the server: periodically, on flush(), at close()."""

    def __init__(self, aggregate: Aggregate, delivery: Delivery, *, interval: float, spooled: bool) -> None:
        self._aggregate = aggregate
        self._delivery = delivery
        self._interval = interval
        self._spooled = spooled
        self._send_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def pending(self) -> int:
        """Contributions drained into batches and awaiting acknowledgement."""
        return self._delivery.pending

    def start(self) -> None:
        """Start the thread; the first pass is one interval away."""
        thread = threading.Thread(target=self._run, name="chorus-client-flush", daemon=True)
        thread.start()
        self._thread = thread

    def flush(self, timeout: float | None) -> bool:
        """Pass until nothing is left to send (True), or the timeout, close() or a loss (False)."""
        watch = self._aggregate.at_next_drain(self._delivery.watch)
        try:
            sent = self._pass_until_done(timeout, self._stop)
        finally:
            self._delivery.unwatch(watch)
        return sent and not watch.lost

    def close(self, timeout: float) -> None:
        """Stop the thread, send what is left within `timeout`, spool or count the rest."""
        deadline = time.monotonic() + timeout
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(max(0.0, deadline - time.monotonic()))
        # A fresh event: close's own attempt must not be cut short by the stop it just set.
        remaining = max(0.0, deadline - time.monotonic())
        if self._spooled:
            # One pass: waiting out a backoff would only delay the host's exit.
            sent = self._pass(remaining, threading.Event()) is None
        else:
            sent = self._pass_until_done(remaining, threading.Event())
        if not sent:
            # The thread may still be inside a send (a hung server); Delivery's own lock
            # makes adding and spooling safe alongside it (a batch it then delivers is
            # merely resent later, and counted once thanks to its batch id).
            self._drain()
            self._delivery.spool_unsent()

    def _run(self) -> None:
        stop = self._stop
        delay = self._interval
        while not stop.wait(delay):
            retry = self._pass(None, stop)
            delay = self._interval if retry is None else retry

    def _pass_until_done(self, timeout: float | None, interrupt: threading.Event) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            remaining = None if deadline is None else deadline - time.monotonic()
            retry = self._pass(remaining, interrupt)
            if retry is None:
                return True
            if deadline is not None and retry >= deadline - time.monotonic():
                return False  # the next attempt would come too late: give up at once
            if interrupt.wait(retry):
                return False

    def _pass(self, timeout: float | None, interrupt: threading.Event) -> float | None:
        """Drain, then send the queue once.

        Returns None when nothing is left to send, else the delay before the next attempt:
        the backoff after a retryable failure, 0.0 when the timeout or `interrupt` cut the
        pass short, the interval after an unexpected error.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        if not self._send_lock.acquire(timeout=-1 if timeout is None else max(0.0, timeout)):
            return 0.0
        try:
            self._drain()
            return self._delivery.send(None if deadline is None else deadline - time.monotonic(), interrupt)
        except Exception:
            # A bug must neither kill the thread nor make flush() report success.
            logger.warning("chorus client flush step failed", exc_info=True)
            return self._interval if self._delivery.pending else None
        finally:
            self._aggregate.hold(self._delivery.pending)
            self._send_lock.release()

    def _drain(self) -> None:
        drain = self._aggregate.drain(self._delivery.pending)
        try:
            self._delivery.add(drain.counts, drain.dropped, drain.generation)
        except Exception:
            if drain.counts:
                self._delivery.lose_watched()  # drained but never queued: those counts are lost
            raise
