"""Batch ids are random 128-bit values (32 hex digits), as the contract asks of every client."""

from __future__ import annotations

import re
from collections.abc import Callable

from chorus.client import Client

from .conftest import FakeTransport


def test_batch_ids_are_32_hex_digits_of_128_random_bits(make_client: Callable[..., Client]) -> None:
    transport = FakeTransport()
    client = make_client(transport=transport)
    for _ in range(20):
        client.count("ai.tokens", user="user-alice")
        assert client.flush(timeout=5)
    ids = [r.batch_id for r in transport.requests]
    assert len(set(ids)) == 20 and all(re.fullmatch("[0-9a-f]{32}", i) for i in ids)
    assert {i[12] for i in ids} != {"4"}  # not a UUIDv4 (122 random bits, a fixed version digit)
