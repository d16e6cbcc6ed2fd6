"""IngestService: decode, validate, apply."""

from __future__ import annotations

from datetime import UTC, datetime

import grpc

from chorus.server import auth, ingest
from chorus.server.config import Limits
from chorus.server.ratelimit import RateLimited, RateLimiter
from chorus.server.services._errors import invalid_argument, retry_later
from chorus.v1 import ingest_pb2, ingest_pb2_grpc


class IngestServicer(ingest_pb2_grpc.IngestServiceServicer):
    def __init__(self, ingestor: ingest.Ingestor, limits: Limits, limiter: RateLimiter) -> None:
        self._ingestor = ingestor
        self._limits = limits
        self._limiter = limiter

    def Report(self, request: ingest_pb2.ReportRequest,
               context: grpc.ServicerContext) -> ingest_pb2.ReportResponse:
        try:
            # Before any other work: a flood is cut at the cheapest point. An empty batch costs 1.
            self._limiter.take(auth.principal().name, max(1, len(request.contributions)))
        except RateLimited as exc:
            retry_later(context, grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc), exc.retry_after)
        try:
            batch = ingest.Batch(
                batch_id=request.batch_id,
                source=request.source,
                source_version=request.source_version,
                dropped=request.dropped,
                contributions=_contributions(request),
            )
            ingest.validate(batch, self._limits)
        except ingest.InvalidBatch as exc:
            self._ingestor.stats.record_invalid()
            invalid_argument(context, str(exc))
        outcome = self._ingestor.report(batch)
        return ingest_pb2.ReportResponse(
            accepted=outcome.accepted,
            duplicate=outcome.duplicate,
            rejections=[ingest_pb2.Rejection(index=r.index, reason=f"REJECT_REASON_{r.reason.name}",
                                                message=r.message)
                        for r in outcome.rejections],
        )


def _contributions(request: ingest_pb2.ReportRequest) -> list[ingest.Contribution]:
    # SDK batches carry a handful of distinct minute timestamps: convert each once.
    times: dict[tuple[int, int], datetime] = {}
    out = []
    for index, c in enumerate(request.contributions):
        stamp = c.event_time
        key = (stamp.seconds, stamp.nanos)
        when = times.get(key)
        if when is None:
            try:
                when = times[key] = stamp.ToDatetime(tzinfo=UTC)
            except (ValueError, OverflowError):
                raise ingest.InvalidBatch(f"contributions[{index}].event_time is outside the valid "
                                          "timestamp range (years 1..9999)") from None
        out.append(ingest.Contribution(c.user, c.metric, c.value, when))
    return out
