"""Per-window OTLP state: exactly-once keys of delta points and the last point of cumulative series.

Both tables hold per-person state, so they live and die with the window's secret key:

* `otlp_points (window_id, point_key)`: a keyed hash (under the window key) of every counted
  delta point, whose bytes carry the person, the series, its start and end. OTLP exporters
  retry whole requests and carry no batch id; a retried point finds its key and counts nothing.
* `otlp_series (window_id, series_key, start_ns, time_ns, value, sealed)`: the last point of a
  cumulative series, keyed by HMAC(window key, person, series digest). `sealed` is the
  (person, digest) pair encrypted under a key derived from the window key: at close it is
  opened once to re-key the state under the next open window, so a series running across a
  boundary counts each increase once, then the window's rows are deleted with its key.

Neither table holds an attribute value, a user id or a session id in the clear; after the
window key is gone nobody can link a row to a person, and the close deletes the rows anyway.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from typing import NamedTuple

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from chorus.server import store
from chorus.server.store import Tx

_NONCE = 12


class Previous(NamedTuple):
    start_ns: int
    time_ns: int
    value: float


def _mac(key: bytes, label: bytes, person: str, series: bytes, tail: bytes = b"") -> bytes:
    return hmac.digest(key, label + person.encode() + b"\0" + series + tail, hashlib.sha256)


def _seal_key(window_key: bytes) -> bytes:
    return hmac.digest(window_key, b"chorus otlp seal", hashlib.sha256)


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
        found = store.otlp.latest(tx, window_id, _mac(key, b"otlp-series\0", person, series))
        if found is not None and (latest is None or found[1] > latest.time_ns):
            latest = Previous(*found)
    return latest


def remember(tx: Tx, window_id: str, window_key: bytes, person: str, series: bytes, point: Previous) -> None:
    """Store a cumulative series' latest point in `window_id` (an older point never replaces a newer)."""
    nonce = secrets.token_bytes(_NONCE)
    sealed = nonce + ChaCha20Poly1305(_seal_key(window_key)).encrypt(
        nonce, person.encode() + b"\0" + series, window_id.encode())
    store.otlp.remember(tx, window_id, _mac(window_key, b"otlp-series\0", person, series), point.start_ns,
                        point.time_ns, point.value, sealed)


def close_window(tx: Tx, window_id: str) -> int:
    """At close (before the key is deleted): move cumulative state to the next open window, then
    delete the window's OTLP rows. Returns how many series moved."""
    key = store.windows.key(tx, window_id)
    rows = store.otlp.series_of_window(tx, window_id)
    following = store.windows.next_open_key(tx, window_id)
    moved = 0
    if key is not None and rows and following is not None:
        opener = ChaCha20Poly1305(_seal_key(key))
        next_id, next_key = following
        for start_ns, time_ns, value, blob in rows:
            try:
                plain = opener.decrypt(blob[:_NONCE], blob[_NONCE:], window_id.encode())
            except InvalidTag:
                continue  # not sealed by this window's key: nothing to carry
            person, _, series = plain.partition(b"\0")
            remember(tx, next_id, next_key, person.decode(), series, Previous(start_ns, time_ns, value))
            moved += 1
    store.otlp.delete_window(tx, window_id)
    return moved
