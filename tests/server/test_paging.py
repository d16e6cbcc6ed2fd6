"""AIP-158 page tokens (services._convert.page): a token continues only its own listing."""

from __future__ import annotations

import grpc
import pytest

from chorus.server.transport.services._convert import page
from chorus.v1 import admin_pb2, release_pb2


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


@pytest.mark.parametrize("request_type", [release_pb2.ListWindowsRequest, admin_pb2.AdminServiceListWindowsRequest,
                                          admin_pb2.ListTokensRequest], ids=lambda t: t.DESCRIPTOR.full_name)
def test_page_size_zero_is_1000_larger_is_lowered_and_negative_is_refused(request_type: type) -> None:
    """docs/api.md: ListWindows (both services) and ListTokens take page_size 0 (the default,
    1000), larger values lowered to 1000, negative INVALID_ARGUMENT."""
    items = list(range(1005))
    for size in (0, 1000, 5000):
        first, token = page(items, request_type(page_size=size), _Context())  # type: ignore[arg-type]
        assert len(first) == 1000 and token
        rest, last = page(items, request_type(page_size=size, page_token=token), _Context())  # type: ignore[arg-type]
        assert (list(first) + list(rest), last) == (items, "")
    with pytest.raises(_Aborted, match="page_size is -1; it must be >= 0"):
        page(items, request_type(page_size=-1), _Context())  # type: ignore[arg-type]
