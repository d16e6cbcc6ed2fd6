"""Ledger chain status for the privacy officer, from the offline verifier `chorus.server.verifier.verify`.

This adapter is the one place that knows the verifier's API: the ledger page hands it a way to
stream entries and the server's public key and shows the `ChainStatus` it returns. The
entries are turned into the verifier's export format (the same lines `chorus audit export`
writes, the bodies exactly as received), so the dashboard's verdict is the offline verifier's,
not a second implementation.

The public key comes from the same server as the ledger, so this check catches a damaged or
altered chain but not a server that re-signed a rewritten history with a new key: for that the
officer verifies an export against their own trusted copy of the key (`chorus audit verify`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from chorus.server.verifier import verify

VERIFIED = "verified"
FAILED = "failed"
#: Violations listed on the page; the rest are counted.
SHOWN_VIOLATIONS = 20


@dataclass(frozen=True, slots=True)
class ChainStatus:
    """What the verifier concluded about the whole chain, and where it ends."""

    state: str
    entries: int
    head_seq: int
    head_hash: str
    message: str
    violations: tuple[str, ...] = ()


class ChainCache:
    """The verifier's verdict on the whole chain, kept up to date incrementally.

    Verifying a 100,000-entry ledger takes about 15 s; the ledger page is opened far more often
    than the ledger grows. One Verifier per server key is fed only the entries appended since
    the previous look: an entry that does not chain onto the last verified hash (a rewritten
    history) is still caught, by the chain rule on that entry.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._key_pem: str | None = None
        self._verifier: verify.Verifier | None = None
        self._next_seq = 1

    def status(self, entries_from: Callable[[int], Iterable[verify.Signed]], public_key_pem: str) -> ChainStatus:
        """Feed the entries from the first unseen sequence number on; return the verdict so far."""
        with self._lock:
            if public_key_pem != self._key_pem or self._verifier is None:
                try:
                    key = verify.load_public_key(public_key_pem.encode())
                except verify.VerifyError as exc:
                    return ChainStatus(FAILED, 0, 0, "", f"The server's public key cannot be used: {exc}")
                self._key_pem, self._verifier, self._next_seq = public_key_pem, verify.Verifier(key), 1
            for entry in entries_from(self._next_seq):
                self._verifier.feed(verify.export_line(entry))
                self._next_seq += 1
            return _status(self._verifier.finish())


def _status(report: verify.Report) -> ChainStatus:
    head_seq, head_hash = (report.head.seq, report.head.hash) if report.head else (0, "")
    if report.ok:
        return ChainStatus(VERIFIED, report.entries, head_seq, head_hash,
                           f"All {report.entries} entries verified: the hash chain is unbroken, every "
                           "signature matches the server's public key, and every release respects its "
                           "window's policy and budget.")
    shown = tuple(str(v) for v in report.violations[:SHOWN_VIOLATIONS])
    more = len(report.violations) - len(shown)
    return ChainStatus(FAILED, report.entries, head_seq, head_hash,
                       f"{len(report.violations)} violation(s) found"
                       + (f"; the first {len(shown)} are listed" if more else "")
                       + ". Export the ledger and run `chorus audit verify` with your trusted key.",
                       shown)
