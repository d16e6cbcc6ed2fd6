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

from chorus.server.store._db import Tx

_NONCE = 12
#: Rows per multi-row INSERT of point keys (two parameters each; well under either engine's limit).
_CHUNK = 500


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

    One multi-row INSERT ... ON CONFLICT DO NOTHING RETURNING per chunk: it reports exactly the
    rows it inserted, so two concurrent exports of the same point cannot both count it (the
    second waits on the first's row lock, then finds the conflict). Keys are sent in order so
    concurrent transactions lock rows in the same order.
    """
    fresh: set[tuple[str, bytes]] = set()
    ordered = sorted(set(keys))
    for i in range(0, len(ordered), _CHUNK):
        chunk = ordered[i:i + _CHUNK]
        rows = tx.query("INSERT INTO otlp_points (window_id, point_key) VALUES "
                        + ", ".join(["(?, ?)"] * len(chunk))
                        + " ON CONFLICT (window_id, point_key) DO NOTHING RETURNING window_id, point_key",
                        [v for pair in chunk for v in pair])
        fresh.update((w, bytes(k)) for w, k in rows)
    return fresh


def previous(tx: Tx, open_keys: list[tuple[str, bytes]], person: str, series: bytes) -> Previous | None:
    """The latest recorded point of a cumulative series in any open window (a series may have
    points in the window that ends and in the next one while both take contributions)."""
    latest: Previous | None = None
    for window_id, key in open_keys:
        rows = tx.query("SELECT start_ns, time_ns, value FROM otlp_series WHERE window_id = ? AND series_key = ?",
                        (window_id, _mac(key, b"otlp-series\0", person, series)))
        if rows and (latest is None or rows[0][1] > latest.time_ns):
            latest = Previous(int(rows[0][0]), int(rows[0][1]), float(rows[0][2]))
    return latest


def remember(tx: Tx, window_id: str, window_key: bytes, person: str, series: bytes, point: Previous) -> None:
    """Store a cumulative series' latest point in `window_id` (an older point never replaces a newer)."""
    nonce = secrets.token_bytes(_NONCE)
    sealed = nonce + ChaCha20Poly1305(_seal_key(window_key)).encrypt(
        nonce, person.encode() + b"\0" + series, window_id.encode())
    tx.execute("INSERT INTO otlp_series (window_id, series_key, start_ns, time_ns, value, sealed) "
               "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (window_id, series_key) DO UPDATE SET "
               "start_ns = excluded.start_ns, time_ns = excluded.time_ns, value = excluded.value, "
               "sealed = excluded.sealed WHERE otlp_series.time_ns < excluded.time_ns",
               (window_id, _mac(window_key, b"otlp-series\0", person, series), point.start_ns, point.time_ns,
                point.value, sealed))


def close_window(tx: Tx, window_id: str) -> int:
    """At close (before the key is deleted): move cumulative state to the next open window, then
    delete the window's OTLP rows. Returns how many series moved."""
    keys = tx.query("SELECT hmac_key FROM window_keys WHERE window_id = ?", (window_id,))
    rows = tx.query("SELECT start_ns, time_ns, value, sealed FROM otlp_series WHERE window_id = ?", (window_id,))
    following = tx.query(
        "SELECT w.id, k.hmac_key FROM windows w JOIN window_keys k ON k.window_id = w.id "
        "WHERE w.state = 'open' AND w.start_at >= (SELECT end_at FROM windows WHERE id = ?) "
        "ORDER BY w.start_at LIMIT 1", (window_id,))
    moved = 0
    if keys and rows and following:
        opener = ChaCha20Poly1305(_seal_key(bytes(keys[0][0])))
        next_id, next_key = following[0][0], bytes(following[0][1])
        for start_ns, time_ns, value, sealed in rows:
            blob = bytes(sealed)
            try:
                plain = opener.decrypt(blob[:_NONCE], blob[_NONCE:], window_id.encode())
            except InvalidTag:
                continue  # not sealed by this window's key: nothing to carry
            person, _, series = plain.partition(b"\0")
            remember(tx, next_id, next_key, person.decode(), series, Previous(start_ns, time_ns, value))
            moved += 1
    tx.execute("DELETE FROM otlp_series WHERE window_id = ?", (window_id,))
    tx.execute("DELETE FROM otlp_points WHERE window_id = ?", (window_id,))
    return moved
