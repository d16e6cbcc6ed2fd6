"""The Report servicer's one pass over a decoded batch groups it exactly as `ingest.group`
does, its shortcut for a person's side-by-side contributions included, and still refuses a
missing event time that follows a contribution of the same person."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from chorus.server.domain import ingest
from chorus.server.transport.services.ingest import _contributions
from chorus.v1 import ingest_pb2

T1, T2 = datetime(2026, 12, 8, 10, 0, tzinfo=UTC), datetime(2026, 12, 8, 10, 1, tzinfo=UTC)


def _request(rows: list[tuple[str, str, int, datetime]]) -> ingest_pb2.ReportRequest:
    request = ingest_pb2.ReportRequest(batch_id="b")
    for user, metric, value, when in rows:
        c = request.contributions.add(user=user, metric=metric, value=value)
        c.event_time.FromDatetime(when)
    return request


def test_side_by_side_and_scattered_contributions_group_as_ingest_group_does() -> None:
    rows = [("Ann@Example.com", "ai.tokens", 3, T1), ("ann@example.com ", "ai.requests", 1, T1),  # same person
            ("bob", "ai.tokens", 2, T1), ("bob", "ai.tokens", 5, T2),  # same user, another time
            ("ann@example.com", "ai.tokens", 4, T1), ("bob", "ai.requests", 1, T1)]  # back to earlier groups
    grouped = _contributions(_request(rows))
    expected = ingest.group([ingest.Contribution(*row) for row in rows])
    assert (grouped.size, grouped.groups, grouped.metrics) == (expected.size, expected.groups, expected.metrics)


def test_a_missing_time_after_the_same_persons_epoch_time_is_still_refused() -> None:
    request = _request([("ann", "ai.tokens", 1, datetime.fromtimestamp(0, UTC))])  # set: (0, 0)
    request.contributions.add(user="ann", metric="ai.requests", value=1)  # absent: reads (0, 0) too
    with pytest.raises(ingest.InvalidBatch) as refused:
        _contributions(request)
    assert refused.value.field == "contributions[1].event_time"
