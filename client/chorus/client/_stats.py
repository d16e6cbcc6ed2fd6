"""The client's delivery counters, as a snapshot."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = ["Stats"]


@dataclass(frozen=True)
class Stats:
    """Counters since the client started (or since fork, in a child process).

    Counts of contributions refer to pre-aggregated contributions, one per
    (user, metric, minute), not to count() calls, except `invalid`.
    """

    #: Batches the server acknowledged, duplicates included.
    sent_batches: int = 0
    #: Contributions the server applied.
    accepted: int = 0
    #: Batches the server had already applied (a retry whose first answer was lost).
    duplicates: int = 0
    #: Contributions the server refused for good, by RejectReason name (e.g. "UNKNOWN_USER").
    rejected: Mapping[str, int] = field(default_factory=dict)
    #: count() calls or contributions discarded by the client: memory bound, closed client,
    #: full spool, older than the batch age limit, unsent at close without a spool.
    dropped: int = 0
    #: count() calls ignored for bad arguments (negative or non-int value, bad names).
    invalid: int = 0
    #: Batches refused for good: INVALID_ARGUMENT or OUT_OF_RANGE (see docs/sdk.md).
    failed_batches: int = 0
    #: Failed send attempts that were scheduled for retry.
    retries: int = 0
    #: Batches written to the spool directory.
    spooled: int = 0
    #: Spool files found corrupt and moved aside.
    spool_corrupt: int = 0
    #: Contributions held in memory now, aggregated or in batches awaiting (re)send.
    pending: int = 0
