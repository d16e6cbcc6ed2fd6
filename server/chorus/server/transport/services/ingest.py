"""IngestService: decode, validate, apply.

Work on a request grows with what is accepted, never with what is refused: the size of a
batch is read (O(1)) before anything else, and an oversize batch is refused after charging
the rate limiter one unit, without converting a single contribution.

Every worker pays the per-contribution cost, so it is kept to one pass over the decoded
message's fields (`_contributions`), grouping as it reads (ingest.Grouped); each distinct
event time is converted once, and a contribution with the user id and time of the one before
(the SDK sends a person's metrics side by side) joins its group without another lookup.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

import grpc

from chorus.server.domain import ingest
from chorus.server.model import user_ids
from chorus.server.model.config import Limits
from chorus.server.transport.gate import principal
from chorus.server.transport.ratelimit import RateLimited, RateLimiter
from chorus.server.transport.rpc_errors import abort, invalid_argument, retry_later
from chorus.v1 import ingest_pb2, ingest_pb2_grpc

_MAX_NANOS = 999_999_999
_UNSET = (0, 0)


class IngestServicer(ingest_pb2_grpc.IngestServiceServicer):
    def __init__(self, ingestor: ingest.Ingestor, limits: Limits, limiter: RateLimiter) -> None:
        self._ingestor = ingestor
        self._limits = limits
        self._limiter = limiter

    def Report(self, request: ingest_pb2.ReportRequest,
               context: grpc.ServicerContext) -> ingest_pb2.ReportResponse:
        size = len(request.contributions)
        oversize = size > self._limits.max_batch_contributions
        try:
            # Before any other work: a flood is cut at the cheapest point. An empty or oversize
            # batch costs 1: it is refused below without converting anything.
            self._limiter.take(principal().name, 1 if oversize else max(1, size))
        except RateLimited as exc:
            retry_later(context, grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc), exc.retry_after,
                        reason="RATE_LIMITED", metadata={"retry_after_seconds": f"{exc.retry_after:.3f}"})
        try:
            if oversize:
                raise ingest.InvalidBatch(f"batch has {size} contributions; the limit is "
                                          f"{self._limits.max_batch_contributions}", "contributions")
            batch = ingest.Batch(
                batch_id=request.batch_id,
                source=request.source,
                source_version=request.source_version,
                dropped=request.dropped,
                contributions=_contributions(request),
                digest=content_digest(request),
            )
            ingest.validate(batch, self._limits)
        except ingest.InvalidBatch as exc:
            self._ingestor.stats.record_invalid()
            invalid_argument(context, str(exc), exc.field)
        try:
            outcome = self._ingestor.report(batch)
        except ingest.BatchIdReused as exc:
            abort(context, grpc.StatusCode.ALREADY_EXISTS, str(exc), reason="BATCH_ID_REUSED",
                  metadata={"field": "batch_id"})
        return ingest_pb2.ReportResponse(
            accepted=outcome.accepted,
            duplicate=outcome.duplicate,
            rejections=[ingest_pb2.Rejection(index=r.index, reason=f"REJECT_REASON_{r.reason.name}",
                                                message=r.message)
                        for r in outcome.rejections],
        )


def content_digest(request: ingest_pb2.ReportRequest) -> bytes:
    """SHA-256 of everything in the request but its batch_id (deterministic serialization,
    unknown fields dropped): a resend of the same batch has the same digest in any language.

    Serialises the request itself with its batch_id taken out and put back: a copy of a
    10,000-contribution message would cost more than the hash.
    """
    batch_id = request.batch_id
    request.ClearField("batch_id")
    try:
        request.DiscardUnknownFields()
        return hashlib.sha256(request.SerializeToString(deterministic=True)).digest()
    finally:
        request.batch_id = batch_id


def _contributions(request: ingest_pb2.ReportRequest) -> ingest.Grouped:
    # SDK batches carry a handful of distinct minute timestamps: convert each once. They also
    # send a person's contributions side by side (one per metric): while the user id and the
    # time are those of the contribution before, it joins the same group without normalising
    # the id or looking the group up again.
    times: dict[tuple[int, int], datetime] = {}
    groups: ingest.Groups = {}
    metrics = set()
    normalise = user_ids.normalise
    last_user: str | None = None
    last_key: tuple[int, int] | None = None
    entries: list[tuple[int, str, int]] = []
    for index, c in enumerate(request.contributions):
        stamp = c.event_time
        key = (stamp.seconds, stamp.nanos)
        raw = c.user
        metric = c.metric
        if metric not in metrics:
            metrics.add(metric)
        if raw == last_user and key == last_key:
            entries.append((index, metric, c.value))
            continue
        if key == _UNSET and not c.HasField("event_time"):  # an absent one reads as (0, 0)
            raise ingest.InvalidBatch(f"contributions[{index}].event_time is required: when the usage "
                                      "happened", f"contributions[{index}].event_time")
        when = times.get(key)
        if when is None:
            if not 0 <= stamp.nanos <= _MAX_NANOS:
                raise ingest.InvalidBatch(f"contributions[{index}].event_time.nanos is {stamp.nanos}; it "
                                          f"must be in [0, {_MAX_NANOS}]",
                                          f"contributions[{index}].event_time.nanos")
            try:
                when = times[key] = stamp.ToDatetime(tzinfo=UTC)
            except (ValueError, OverflowError):
                raise ingest.InvalidBatch(f"contributions[{index}].event_time is outside the valid "
                                          "timestamp range (years 1..9999)",
                                          f"contributions[{index}].event_time.seconds") from None
        # An absent time reads as (0, 0) too: only a set one may let the next contribution in unchecked.
        last_user, last_key = raw, (key if key != _UNSET else None)
        person = (when, normalise(raw))  # as ingest.group does: the roster's form of the id
        found = groups.get(person)
        if found is None:
            entries = groups[person] = [(index, metric, c.value)]
        else:
            entries = found
            entries.append((index, metric, c.value))
    return ingest.Grouped(len(request.contributions), groups, metrics)
