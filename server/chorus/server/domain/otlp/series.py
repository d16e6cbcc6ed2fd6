"""Per-window OTLP state: exactly-once keys of delta points and the last point of cumulative series.

Both tables hold per-person state, so they live and die with the window's secret key:

* `otlp_points (window_id, point_key)`: a keyed hash (under the window key) of every counted
  delta point, whose bytes carry the person, the series, its start and end. OTLP exporters
  retry whole requests and carry no batch id; a retried point finds its key and counts nothing.
* `otlp_series (window_id, series_key, start_ns, time_ns, value, sealed)`: the last point of a
  cumulative series in that window, keyed by HMAC(window key, person, series digest). `sealed`
  is always empty: nothing is carried to another window.

At close both are deleted with the window's key, and nothing about the window's people is
carried over: a cumulative series that runs across the boundary keeps counting in the next
window from a baseline (`export` counts its first point there, when the series started
before that window, as a baseline only), losing at most one export interval's increase.
Neither table holds an attribute value, a user id or a session id in the clear.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import NamedTuple

from chorus.server import store
from chorus.server.store import Tx


class Previous(NamedTuple):
    start_ns: int
    time_ns: int
    value: float


def _mac(key: bytes, label: bytes, person: str, series: bytes, tail: bytes = b"") -> bytes:
    return hmac.digest(key, label + person.encode() + b"\0" + series + tail, hashlib.sha256)


def point_key(window_key: bytes, point: bytes, time_ns: int) -> bytes:
    """The exactly-once key of a delta point: the minute of its end time (4 bytes), then a 96-bit
    keyed BLAKE2b of the bytes that name it (resource, scope, instrument and the point itself,
    which carries the identity, the series' attributes, its start and end).

    The minute first keeps an export's keys (its points share an end time) next to each other
    in the B-tree, so recording them writes a few pages instead of one page per point. It says
    when some point of the window ended, nothing about whose. A false duplicate needs a
    collision within one minute: about 2^-48 at 2^24 keys in the same minute.
    """
    minute = max(0, min(time_ns // 60_000_000_000, 2**32 - 1)).to_bytes(4, "big")
    return minute + hashlib.blake2b(point, key=window_key, digest_size=12, person=b"chorus otlp pt").digest()


def first_sights(tx: Tx, keys: list[tuple[str, bytes]]) -> set[tuple[str, bytes]]:
    """Record (window id, point key) pairs; return those not recorded before (the others are retries).

    Two concurrent exports of the same point cannot both count it (store.otlp.record_points);
    keys are sent in order so concurrent transactions lock rows in the same order.
    """
    return store.otlp.record_points(tx, sorted(set(keys)))


def previous(tx: Tx, open_keys: list[tuple[str, bytes]], person: str, series: bytes) -> Previous | None:
    """The latest recorded point of a cumulative series in any open window (a series may have
    points in the window that ends and in the next one while both take contributions)."""
    latest: Previous | None = None
    for window_id, key in open_keys:
        found = store.otlp.latest(tx, window_id, series_key(key, person, series))
        if found is not None and (latest is None or found[1] > latest.time_ns):
            latest = Previous(*found)
    return latest


def series_key(window_key: bytes, person: str, series: bytes) -> bytes:
    """Where a cumulative series' state is kept in a window: HMAC(window key, person, series)."""
    return _mac(window_key, b"otlp-series\0", person, series)


def remember(tx: Tx, window_id: str, window_key: bytes, person: str, series: bytes, point: Previous) -> None:
    """Store a cumulative series' latest point in `window_id` (an older point never replaces a newer)."""
    store.otlp.remember(tx, window_id, series_key(window_key, person, series), point.start_ns,
                        point.time_ns, point.value, b"")


def close_window(tx: Tx, window_id: str) -> None:
    """At close: delete the window's OTLP rows (in the transaction that deletes its key)."""
    store.otlp.delete_window(tx, window_id)
