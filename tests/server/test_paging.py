"""AIP-158 page tokens (services._convert.page): a token continues only its own listing."""

from __future__ import annotations

import grpc
import pytest

from chorus.server.transport.services._convert import page
from chorus.v1 import release_pb2


class _Aborted(Exception):
    pass


class _Context:
    """The one ServicerContext method `page` uses: abort_with_status raises, as gRPC's does."""

    def abort_with_status(self, status: grpc.Status) -> None:
        raise _Aborted(status.details)


def test_a_token_continues_its_listing_and_no_other() -> None:
    items = list(range(25))
    request = release_pb2.ListWindowsRequest(page_size=10)
    request.start.seconds = 1_700_000_000
    first, token = page(items, request, _Context())  # type: ignore[arg-type]
    request.page_token = token
    second, token = page(items, request, _Context())  # type: ignore[arg-type]
    request.page_token = token
    third, last = page(items, request, _Context())  # type: ignore[arg-type]
    assert [*first, *second, *third] == items and last == ""

    changed = release_pb2.ListWindowsRequest(page_size=10, page_token=request.page_token)
    changed.start.seconds = 1_700_000_001  # another range: the token does not apply
    with pytest.raises(_Aborted):
        page(items, changed, _Context())  # type: ignore[arg-type]
