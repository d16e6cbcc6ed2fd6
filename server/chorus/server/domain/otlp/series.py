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
from collections.abc import Callable, Iterable, Sequence
from typing import NamedTuple

from chorus.server import store
from chorus.server.store import Tx


class Previous(NamedTuple):
    start_ns: int
    time_ns: int
    value: float


def _mac(key: bytes, label: bytes, person: str, series: bytes, tail: bytes = b"") -> bytes:
    return hmac.digest(key, label + person.encode() + b"\0" + series + tail, "sha256")


def minute(time_ns: int) -> bytes:
    """The first 4 bytes of a delta point's key: the minute of its end time (`point_keys`)."""
    return max(0, min(time_ns // 60_000_000_000, 2**32 - 1)).to_bytes(4, "big")


def point_keys(window_key: bytes) -> Callable[[bytes, bytes], bytes]:
    """The exactly-once key of a delta point in the window of `window_key`, as a function of the
    bytes that name the point and its end time's `minute`: the minute (4 bytes), then a
    96-bit keyed BLAKE2b of the bytes (resource, scope, instrument and the point itself, which
    carries the identity, the series' attributes, its start and end). The keyed hash is set up
    once per window, and copied per point.

    The minute first keeps an export's keys (its points share an end time) next to each other
    in the B-tree, so recording them writes a few pages instead of one page per point. It says
    when some point of the window ended, nothing about whose. A false duplicate needs a
    collision within one minute: about 2^-48 at 2^24 keys in the same minute.
    """
    keyed = hashlib.blake2b(key=window_key, digest_size=12, person=b"chorus otlp pt")

    def point_key(point: bytes, minute: bytes) -> bytes:
        h = keyed.copy()
        h.update(point)
        return minute + h.digest()
    return point_key


def first_sights(tx: Tx, keys: list[tuple[str, bytes]]) -> set[tuple[str, bytes]]:
    """Record distinct (window id, point key) pairs; return those not recorded before (the others
    are retries).

    Two concurrent exports of the same point cannot both count it (store.otlp.record_points);
    keys are sent in order so concurrent transactions lock rows in the same order.
    """
    return store.otlp.record_points(tx, sorted(keys))


def latest(tx: Tx, open_keys: list[tuple[str, bytes]],
           wanted: Iterable[tuple[str, bytes]]) -> dict[tuple[str, bytes], Previous]:
    """The latest recorded point of each (person, series digest) in any open window (a series
    may have points in the window that ends and in the next one while both take
    contributions), read in bulk: one query per open window and chunk of series."""
    wanted = list(dict.fromkeys(wanted))
    found: dict[tuple[str, bytes], Previous] = {}
    for window_id, key in open_keys:
        by_key = {series_key(key, person, digest): (person, digest) for person, digest in wanted}
        for stored, (start_ns, time_ns, value) in store.otlp.latest(tx, window_id, list(by_key)).items():
            pair = by_key[stored]
            before = found.get(pair)
            if before is None or time_ns > before.time_ns:
                found[pair] = Previous(start_ns, time_ns, value)
    return found


def series_key(window_key: bytes, person: str, series: bytes) -> bytes:
    """Where a cumulative series' state is kept in a window: HMAC(window key, person, series)."""
    return _mac(window_key, b"otlp-series\0", person, series)


def remember(tx: Tx, points: Sequence[tuple[str, bytes, str, bytes, Previous]]) -> None:
    """Store cumulative series' latest points, given as (window id, window key, person, series
    digest, point), in order (an older point never replaces a newer)."""
    store.otlp.remember(tx, [(window_id, series_key(key, person, digest), p.start_ns, p.time_ns, p.value, b"")
                             for window_id, key, person, digest, p in points])


def close_window(tx: Tx, window_id: str) -> None:
    """At close: delete the window's OTLP rows (in the transaction that deletes its key)."""
    store.otlp.delete_window(tx, window_id)
