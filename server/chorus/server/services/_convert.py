"""Domain records -> wire messages shared by several services."""

from __future__ import annotations

from google.protobuf.timestamp_pb2 import Timestamp

from chorus.server import lifecycle
from chorus.v1 import common_pb2


def timestamp(when: object) -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(when)  # type: ignore[arg-type]
    return ts


def window_message(record: lifecycle.WindowRecord) -> common_pb2.Window:
    return common_pb2.Window(
        id=record.id, start=timestamp(record.start), end=timestamp(record.end),
        state=common_pb2.WINDOW_STATE_OPEN if record.state == lifecycle.OPEN else common_pb2.WINDOW_STATE_CLOSED,
        closes_at=timestamp(record.closes_at))
