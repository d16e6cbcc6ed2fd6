"""Client side of AIP-158 paging, for the CLI and the dashboard: every item of a paged list."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["every_page"]


def every_page(call: Callable[[Any], Any], request: Any, field: str) -> list[Any]:
    """Call a List RPC page after page (same request, next_page_token) and collect `field`."""
    items: list[Any] = []
    while True:
        reply = call(request)
        items.extend(getattr(reply, field))
        if not reply.next_page_token:
            return items
        following = type(request)()
        following.CopyFrom(request)
        following.page_token = reply.next_page_token
        request = following
