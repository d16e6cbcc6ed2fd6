"""Domain records -> wire messages shared by several services, and AIP-158 paging.

A page token is the opaque, URL-safe base64 of `<offset>:<fingerprint>`, where the
fingerprint is a hash of the request's other fields: a token only continues the listing it
came from (anything else is INVALID_ARGUMENT naming page_token). Lists are short (windows,
tokens, team-windows), so a page is a slice of the full, stably ordered list.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

import grpc
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from chorus.server.domain import windows as window_store
from chorus.server.model.calendar import parse_window_id
from chorus.server.transport.rpc_errors import invalid_argument
from chorus.v1 import common_pb2

#: AIP-158: page_size 0 means this default; larger sizes are lowered to it.
MAX_PAGE_SIZE = 1000

T = TypeVar("T")


def page(items: Sequence[T], request: Any, context: grpc.ServicerContext) -> tuple[Sequence[T], str]:
    """The page of `items` that `request` (with page_size, page_token) asks for, and the next token."""
    size = request.page_size
    if size < 0:
        invalid_argument(context, f"page_size is {size}; it must be >= 0 (0: the default, "
                                  f"{MAX_PAGE_SIZE})", "page_size")
    size = min(size or MAX_PAGE_SIZE, MAX_PAGE_SIZE)
    fingerprint = _fingerprint(request)
    token = request.page_token
    offset = 0
    if token:
        try:
            text = base64.urlsafe_b64decode(token.encode("ascii")).decode("ascii")
            number, _, mark = text.partition(":")
            offset = int(number)
        except (ValueError, UnicodeError, binascii.Error):
            offset, mark = -1, ""
        if offset < 0 or mark != fingerprint:
            invalid_argument(context, "page_token is not a next_page_token of this request; start "
                                      "again with an empty page_token", "page_token")
    end = offset + size
    following = "" if end >= len(items) else base64.urlsafe_b64encode(
        f"{end}:{fingerprint}".encode("ascii")).decode("ascii")
    return items[offset:end], following


def _fingerprint(request: Message) -> str:
    rest = type(request)()
    rest.CopyFrom(request)
    rest.ClearField("page_size")
    rest.ClearField("page_token")
    return hashlib.sha256(rest.SerializeToString(deterministic=True)).hexdigest()[:16]


def timestamp(when: object) -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(when)  # type: ignore[arg-type]
    return ts


def window_message(record: window_store.WindowRecord) -> common_pb2.Window:
    return common_pb2.Window(
        id=record.id, start=timestamp(record.start), end=timestamp(record.end),
        state=common_pb2.WINDOW_STATE_OPEN if record.state == window_store.OPEN else common_pb2.WINDOW_STATE_CLOSED,
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


def list_windows(request: Message, context: grpc.ServicerContext,
                 windows: Callable[[datetime | None, datetime | None], list[window_store.WindowRecord]],
                 ) -> tuple[list[common_pb2.Window], str]:
    """The one ListWindows (AdminService and ReleaseService both offer it, over
    `window_store.Windows.list`): the optional range checked, newest first, one page and the next
    page's token."""
    start = optional_moment(request, "start", context)
    end = optional_moment(request, "end", context)
    windows_found, following = page(windows(start, end), request, context)
    return [window_message(w) for w in windows_found], following


def parsed_window(context: grpc.ServicerContext, window: str, *, empty_means_all: bool = False) -> str:
    """The request's window id, checked by the one window-id parser (`chorus.server.model.calendar.parse_window_id`);
    INVALID_ARGUMENT naming `window` otherwise. With `empty_means_all`, "" (every window) passes."""
    if window or not empty_means_all:
        try:
            parse_window_id(window)
        except ValueError as exc:
            invalid_argument(context, str(exc), "window")
    return window
