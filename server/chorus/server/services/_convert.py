"""Domain records -> wire messages shared by several services."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

import grpc
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from chorus.server import lifecycle
from chorus.server.services._errors import invalid_argument
from chorus.v1 import common_pb2, release_pb2


def timestamp(when: object) -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(when)  # type: ignore[arg-type]
    return ts


def window_message(record: lifecycle.WindowRecord) -> common_pb2.Window:
    return common_pb2.Window(
        id=record.id, start=timestamp(record.start), end=timestamp(record.end),
        state=common_pb2.WINDOW_STATE_OPEN if record.state == lifecycle.OPEN else common_pb2.WINDOW_STATE_CLOSED,
        closes_at=timestamp(record.closes_at),
        closed_at=timestamp(record.closed_at) if record.closed_at else None)


def optional_moment(request: Message, name: str,
                    context: grpc.ServicerContext) -> datetime | None:
    """An optional timestamp field as an aware datetime; INVALID_ARGUMENT when out of range."""
    if not request.HasField(name):
        return None
    try:
        return getattr(request, name).ToDatetime(tzinfo=UTC)
    except (ValueError, OverflowError):
        invalid_argument(context, f"{name} is not a valid timestamp (years 1..9999, nanos in "
                                  "[0, 999999999])", name)


def windows_response(request: release_pb2.ListWindowsRequest, context: grpc.ServicerContext,
                     list_windows: Callable[[datetime | None, datetime | None], list[lifecycle.WindowRecord]],
                     ) -> release_pb2.ListWindowsResponse:
    """ListWindows for any service that offers it: the optional range checked, newest first."""
    start = optional_moment(request, "start", context)
    end = optional_moment(request, "end", context)
    return release_pb2.ListWindowsResponse(windows=[window_message(w) for w in list_windows(start, end)])
