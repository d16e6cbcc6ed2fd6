"""SIGTERM and SIGINT as a stop request that a signal handler can set without deadlocking.

Python runs a signal handler in the main thread between two bytecodes, wherever that thread
is. `threading.Event.set` takes the event's lock; if the signal lands while the main thread is
inside `Event.wait` holding that same lock (entering or leaving the wait), the handler blocks
on a lock its own thread holds and the process never exits on SIGTERM (issue 22: seen twice in
about 1,500 starts of `chorus serve`; tests/server/test_stop_signals.py lands the signal on
every line of the wait).

`StopEvent` holds no lock: `set` stores a flag and writes one byte to a non-blocking pipe,
`wait` selects on the pipe's read end, which stays readable once set. Only the main thread
waits on it; any thread or handler may set it.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopEvent:
    """A one-way flag like `threading.Event`, safe to set from a signal handler."""

    def __init__(self) -> None:
        self._read, self._write = os.pipe()
        for fd in (self._read, self._write):
            os.set_blocking(fd, False)
        self._set = False

    def set(self) -> None:
        self._set = True
        with contextlib.suppress(BlockingIOError):  # the pipe is full: readable already
            os.write(self._write, b"\0")

    def is_set(self) -> bool:
        return self._set

    def wait(self, timeout: float | None = None) -> bool:
        """Until set or `timeout` seconds; whether it is set."""
        if not self._set:
            select.select([self._read], [], [], timeout)  # a set between the check and here left a byte
        return self._set


def stop_on_signals(event: StopEvent) -> None:
    """Set `event` on SIGTERM or SIGINT (call from the main thread)."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, lambda *_: event.set())
