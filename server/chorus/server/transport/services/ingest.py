"""IngestService: decode, validate, apply.

Work on a request grows with what is accepted, never with what is refused: the size of a
batch is read (O(1)) before anything else, and an oversize batch is refused after charging
the rate limiter one unit, without converting a single contribution.

Every worker pays the per-contribution cost, so it is kept to one pass over the decoded
message's fields (`_contributions`), grouping as it reads (ingest.Grouped); each distinct
event time is converted once.
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
    # SDK batches carry a handful of distinct minute timestamps: convert each once.
    times: dict[tuple[int, int], datetime] = {}
    groups: ingest.Groups = {}
    metrics = set()
    normalise = user_ids.normalise
    for index, c in enumerate(request.contributions):
        stamp = c.event_time
        key = (stamp.seconds, stamp.nanos)
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
        metric = c.metric
        metrics.add(metric)
        person = (when, normalise(c.user))  # as ingest.group does: the roster's form of the id
        entries = groups.get(person)
        if entries is None:
            groups[person] = [(index, metric, c.value)]
        else:
            entries.append((index, metric, c.value))
    return ingest.Grouped(len(request.contributions), groups, metrics)
