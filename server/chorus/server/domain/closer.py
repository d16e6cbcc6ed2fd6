"""The periodic window task: open the current window, close the ones past end plus grace,
release each closed window's release plan, purge exact statistics past retention, and retry
pending shreds (chorus.server.domain.shred).

The plan is released after the close has committed, from the windows whose plan is not marked
complete: a crash between the two is completed by the next tick, on any replica. A forced close
(`WindowCloser.close`, an operator's CloseWindow) goes through the same steps: this module is
the one owner of "close, then publish the plan".

A close is irreversible, so it never follows one reading of a wall clock that can jump
(`ClockGuard`): a window closes only once its close time has passed both by the wall clock and
by monotonic time elapsed since a trusted reading of it, and not while the event times of
contributions this process received in the last few minutes put its clients before the close
time. Every disagreement is logged as a clock anomaly. Opening the current window and purging
follow the wall clock: neither loses data."""

from __future__ import annotations

import logging
import threading
from datetime import datetime, timedelta
from functools import partial

from chorus.server.domain import windows as window_store
from chorus.server.domain.ledger import Ledger
from chorus.server.domain.release import PLAN_ACTOR, Releases
from chorus.server.domain.shred import Shredder
from chorus.server.model.clock import Clock
from chorus.server.model.policy import Policy
from chorus.server.store import Database, Tx

_log = logging.getLogger(__name__)
#: The window task's name in the ledger (`by`), one with the plan releases it makes.
ACTOR = PLAN_ACTOR
#: How far the wall clock may stray from monotonic time, or from recent clients, and count as
#: agreeing (NTP slews by far less; a stepped clock or a suspended VM by more).
CLOCK_TOLERANCE_SECONDS = 120.0
#: How recent contributions must be for their event times to speak for the clients' clocks.
CLIENT_WITNESS_SECONDS = 300.0
#: How long the wall clock must stay ahead of monotonic time, with recent clients agreeing with
#: it, before the guard takes it as a correction rather than a jump.
TRUST_AFTER_SECONDS = 3600.0


class ClockGuard:
    """The time up to which windows may close: the wall clock when it agrees with monotonic time
    since a trusted reading (the anchor) and with recent clients, else the earliest of them.

    `saw(event_time)` takes one event time per ingested batch (chorus.server.domain.ingest).
    The anchor is the first reading; a wall clock that goes back becomes the anchor at once
    (closing later is safe); one that runs ahead becomes it only after TRUST_AFTER_SECONDS
    during which recent clients agree with it (a correction, e.g. a server that booted with a
    wrong clock). Thread-safe.
    """

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._anchor: tuple[datetime, float] | None = None
        self._ahead_since: float | None = None
        self._clients: tuple[datetime, float] | None = None  # newest event time seen, when (monotonic)
        self._reported: set[str] = set()  # anomalies logged and not yet over

    def saw(self, event_time: datetime) -> None:
        steady = self._clock.monotonic()
        with self._lock:
            if self._clients is None or steady - self._clients[1] > CLIENT_WITNESS_SECONDS \
                    or event_time >= self._clients[0] + timedelta(seconds=steady - self._clients[1]):
                self._clients = (event_time, steady)

    def close_time(self) -> datetime:
        wall, steady = self._clock.now(), self._clock.monotonic()
        tolerance = timedelta(seconds=CLOCK_TOLERANCE_SECONDS)
        with self._lock:
            if self._anchor is None:
                self._anchor = (wall, steady)
            expected = self._anchor[0] + timedelta(seconds=steady - self._anchor[1])
            clients = None
            if self._clients is not None and steady - self._clients[1] <= CLIENT_WITNESS_SECONDS:
                clients = self._clients[0] + timedelta(seconds=steady - self._clients[1])
            limit = wall
            if wall < expected - tolerance:
                self._anomaly("behind", f"the wall clock went back {_span(expected - wall)} against monotonic "
                              "time; windows close by the wall clock from now on")
                self._anchor, self._ahead_since = (wall, steady), None
            elif wall > expected + tolerance:
                if self._ahead_since is None:
                    self._ahead_since = steady
                agreed = clients is not None and abs(clients - wall) <= tolerance
                if agreed and steady - self._ahead_since >= TRUST_AFTER_SECONDS:
                    _log.warning("clock anomaly over: the wall clock has been %s ahead of monotonic time for "
                                 "%.0f s and recent clients agree with it; trusting it", _span(wall - expected),
                                 steady - self._ahead_since)
                    self._anchor, self._ahead_since = (wall, steady), None
                    self._reported.discard("ahead")
                else:
                    self._anomaly("ahead", f"the wall clock is {_span(wall - expected)} ahead of monotonic time "
                                  f"since {self._anchor[0].isoformat()}; no window closes before monotonic time "
                                  "says its close time has passed")
                    limit = expected
            else:
                self._ahead_since = None
                self._reported -= {"ahead", "behind"}
            if clients is not None and clients < limit - tolerance:
                self._anomaly("clients", f"contributions received in the last {CLIENT_WITNESS_SECONDS:.0f} s "
                              f"put their clients' clocks at {clients.isoformat()}, {_span(limit - clients)} "
                              "behind this server's; no window closes after that time meanwhile")
                limit = clients
            else:
                self._reported.discard("clients")
            return limit

    def _anomaly(self, kind: str, message: str) -> None:
        if kind not in self._reported:  # once per episode, not once per tick
            self._reported.add(kind)
            _log.warning("clock anomaly: %s", message)


def _span(delta: timedelta) -> str:
    return f"{delta.total_seconds():.0f} s"


class WindowCloser:
    """Runs `tick` every interval on a daemon thread; at most one replica closes at a time."""

    def __init__(self, db: Database, policy: Policy, ledger: Ledger, clock: Clock,
                 shredder: Shredder, releases: Releases, guard: ClockGuard | None = None) -> None:
        self._db = db
        self.guard = guard or ClockGuard(clock)
        self._releases = releases
        self._shredder = shredder
        self._policy = policy
        self._ledger = ledger
        self._clock = clock
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._current: str | None = None  # the open window this closer last compared

    def tick(self) -> list[window_store.CloseResult]:
        """One pass; returns the windows this replica closed."""
        now = self._clock.now()
        current = self._db.run(lambda tx: window_store.ensure_current(tx, self._policy, self._ledger, now),
                               name="open_current")
        if current is not None and current.id != self._current:
            self._current = current.id
            self._log_policy_change(current)
        closing = min(now, self.guard.close_time())
        due = self._db.read(lambda tx: window_store.due(tx, closing), name="due_windows")
        closed = [r for r in self._close_then_publish(due, now, ACTOR, exclusive=True, every_plan=True)
                  if r.closed_now]
        purged = self._db.run(lambda tx: window_store.purge_expired(tx, self._ledger, now, ACTOR), name="purge")
        if purged:
            _log.info("purged the exact team statistics of %d window(s) past retention", len(purged))
            self._shredder.attempt()  # at once: these deletions have just been committed
        elif not closed:
            self._shredder.tick()  # a retry, when one is pending and its backoff has passed
        return closed

    def close(self, window_id: str, actor: str) -> window_store.CloseResult:
        """Force-close a window now, whatever its scheduled close time (an operator's CloseWindow),
        then release its plan if it is pending; raises WindowNotFound. A no-op returning the record
        when closed. Only this window's plan: the call runs under its RPC's deadline, and the
        periodic tick catches up on any other (a retried call publishes this one's)."""
        result, = self._close_then_publish([window_id], self._clock.now(), actor, exclusive=False, every_plan=False)
        return result

    def _close_then_publish(self, window_ids: list[str], now: datetime, actor: str, *,
                            exclusive: bool, every_plan: bool) -> list[window_store.CloseResult]:
        """The one owner of "close, then publish the plan": close each window in its own transaction
        (fold, delete the per-person rows and the key, record the shred), checkpoint the shreds at
        once when one closed, then release the plans not yet complete: of `window_ids`, or with
        `every_plan` of every closed window (also any a crash between a close and its plan left).

        `exclusive` (the periodic tick): skip the windows when another replica holds the closer
        lock; a forced close instead waits on the window row's lock (`window_store.close`)."""
        results = []
        for window_id in window_ids:
            result = self._db.run(partial(self._close, window_id=window_id, now=now, actor=actor,
                                          exclusive=exclusive), name="close_window")
            if result is not None:
                results.append(result)
            if result is not None and result.closed_now:
                # Not how many people it held: that exact count must not leave the server.
                _log.info("closed window %s: per-person rows folded and deleted, key destroyed", window_id)
        if any(r.closed_now for r in results):
            self._shredder.attempt()  # at once: these deletions have just been committed
        for window_id in self._releases.pending_plans():
            if every_plan or window_id in window_ids:
                self._releases.release_plan(window_id)
        return results

    def _log_policy_change(self, current: window_store.WindowRecord) -> None:
        """At start and when a window opens: say when the configuration's policy is not the one
        the open window froze (a mapping or a bound changed while it was open), so an operator
        who switched OTLP mappings on mid-window knows why points are ignored until the next."""
        changed = window_store.policy_differences(current.policy, self._policy)
        if changed:
            _log.warning("window %s counts with the policy frozen when it opened; this server's configuration "
                         "differs in %s, which apply from the next window (from %s)", current.id,
                         ", ".join(changed), current.end.isoformat())

    def _close(self, tx: Tx, *, window_id: str, now: datetime, actor: str,
               exclusive: bool) -> window_store.CloseResult | None:
        if exclusive and not tx.lock_closer():
            return None  # another replica is closing right now
        return window_store.close(tx, window_id, self._ledger, now, actor)

    def start(self, interval: float) -> None:
        self._thread = threading.Thread(target=self._run, args=(interval,), name="chorus-closer",
                                        daemon=True)
        self._thread.start()
        # `chorus serve --workers N` runs exactly one closer; tests count this line.
        _log.info("window closer started (every %s s)", interval)

    def _run(self, interval: float) -> None:
        while True:
            try:
                self.tick()
            except Exception:
                _log.exception("window closer pass failed; retrying in %.0f s", interval)
            if self._stop.wait(interval):
                return

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
