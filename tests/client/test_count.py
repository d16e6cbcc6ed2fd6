"""count(): pre-aggregation, minute buckets, validation, the memory bound."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from chorus.client import Client

from .conftest import T0, FakeClock, FakeTransport, contributions, unavailable

MakeClient = Callable[..., Client]


def test_counts_are_pre_aggregated_per_user_metric_and_minute(
    make_client: MakeClient, transport: FakeTransport, clock: FakeClock
) -> None:
    client = make_client()
    for _ in range(1000):
        client.count("ai.requests")
    client.count("ai.tokens", 1200)
    client.count("ai.tokens", 34)
    client.count("ai.tokens", 7, user="user-bob")
    clock.advance(59)  # same minute
    client.count("ai.requests", 2)

    assert client.flush(timeout=5)
    (request,) = transport.requests
    assert sorted(contributions(request)) == [
        ("user-alice", "ai.requests", 1002, T0),
        ("user-alice", "ai.tokens", 1234, T0),
        ("user-bob", "ai.tokens", 7, T0),
    ]
    assert request.source == "unknown" and len(request.batch_id) == 32


def test_minute_boundaries_give_separate_contributions_stamped_at_the_minute_start(
    make_client: MakeClient, transport: FakeTransport, clock: FakeClock
) -> None:
    client = make_client()
    clock.advance(59.999)
    client.count("ai.requests", 1)
    clock.advance(0.001)  # the next minute starts
    client.count("ai.requests", 2)
    clock.advance(3600 + 30)
    client.count("ai.requests", 3)

    assert client.flush(timeout=5)
    assert contributions(transport.requests[0]) == [
        ("user-alice", "ai.requests", 1, T0),
        ("user-alice", "ai.requests", 2, T0 + 60),
        ("user-alice", "ai.requests", 3, T0 + 3660),
    ]


def test_source_and_version_are_sent(make_client: MakeClient, transport: FakeTransport) -> None:
    client = make_client(source="my-tool", source_version="1.2.3")
    client.count("ai.requests")
    assert client.flush(timeout=5)
    assert (transport.requests[0].source, transport.requests[0].source_version) == ("my-tool", "1.2.3")


@pytest.mark.parametrize(
    ("metric", "value", "user"),
    [
        ("ai.tokens", -1, None),
        ("ai.tokens", 1.5, None),
        ("ai.tokens", "3", None),
        ("ai.tokens", True, None),
        ("ai.tokens", None, None),
        (None, 1, None),
        (123, 1, None),
        ([], 1, None),  # unhashable: fails inside the hot path's dict lookup
        ({"a": 1}, 1, None),
        ("", 1, None),
        ("m" * 257, 1, None),
        ("ai.tokens", 1, 5),
        ("ai.tokens", 1, ""),
        ("ai.tokens", 1, ["user-alice"]),
        ("ai.tokens", 1, "user-" + "x" * 252),
    ],
)
def test_count_never_raises_on_garbage_and_counts_it_invalid(
    make_client: MakeClient, transport: FakeTransport, metric: object, value: object, user: object
) -> None:
    client = make_client()
    client.count(metric, value, user=user)  # type: ignore[arg-type]
    assert client.stats().invalid == 1
    assert client.flush(timeout=5)
    assert transport.requests == []


class _RaisingClock:
    def time(self) -> float:
        raise OSError("clock gone")


class _GarbageClock:
    def time(self) -> float:
        return "noon"  # type: ignore[return-value]


class _UnhashableBucketClock:
    class _Now:
        def __floordiv__(self, other: object) -> list[int]:
            return []

    def time(self) -> float:
        return self._Now()  # type: ignore[return-value]


@pytest.mark.parametrize("broken", [_RaisingClock(), _GarbageClock(), _UnhashableBucketClock()],
                         ids=["raises", "not-a-number", "unhashable-bucket"])
def test_count_never_raises_even_with_a_broken_clock(transport: FakeTransport, broken: object) -> None:
    client = Client(transport=transport, clock=broken, user="user-alice")  # type: ignore[arg-type]
    client.count("ai.tokens")  # raising here fails the test
    client.count("ai.tokens", 5, user="user-bob")
    client.count("ai.tokens", -1)  # still invalid: validation needs no clock
    stats = client.stats()
    assert (stats.dropped, stats.invalid, stats.pending) == (2, 1, 0)  # lost, but counted
    assert client.flush(timeout=5)
    client.close(timeout=0)
    assert transport.requests == []


def test_zero_is_ignored_without_being_invalid(make_client: MakeClient, transport: FakeTransport) -> None:
    client = make_client()
    client.count("ai.tokens", 0)
    assert client.stats().invalid == 0
    assert client.flush(timeout=5) and transport.requests == []


def test_without_a_default_user_count_needs_one(make_client: MakeClient, transport: FakeTransport) -> None:
    client = make_client(user=None)
    client.count("ai.tokens", 5)
    client.count("ai.tokens", 6, user="user-bob")
    assert client.flush(timeout=5)
    assert client.stats().invalid == 1
    assert [c[:3] for c in contributions(transport.requests[0])] == [("user-bob", "ai.tokens", 6)]


def test_default_user_comes_from_the_environment(
    make_client: MakeClient, transport: FakeTransport, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CHORUS_USER", "user-carol")
    client = make_client(user=None)
    client.count("ai.tokens")
    assert client.flush(timeout=5)
    assert transport.requests[0].contributions[0].user == "user-carol"


def test_sums_saturate_at_int64(make_client: MakeClient, transport: FakeTransport) -> None:
    client = make_client()
    client.count("ai.tokens", 2**63 - 10)
    client.count("ai.tokens", 100)
    assert client.flush(timeout=5)
    assert transport.requests[0].contributions[0].value == 2**63 - 1


def test_memory_bound_drops_and_reports_the_drop_count_exactly_once(
    make_client: MakeClient, transport: FakeTransport
) -> None:
    client = make_client(max_pending=3)
    for user in ("user-1", "user-2", "user-3", "user-4", "user-5"):
        client.count("ai.tokens", user=user)
    client.count("ai.tokens", 10, user="user-1")  # an existing key still aggregates
    assert client.stats().dropped == 2

    assert client.flush(timeout=5)
    client.count("ai.tokens", user="user-6")
    assert client.flush(timeout=5)
    first, second = transport.requests
    assert first.dropped == 2 and len(first.contributions) == 3
    assert ("user-1", "ai.tokens", 11, T0) in contributions(first)
    assert second.dropped == 0 and len(second.contributions) == 1
    assert client.stats().dropped == 2


def test_batches_awaiting_retry_count_against_the_memory_bound(make_client: MakeClient) -> None:
    transport = FakeTransport(unavailable(), unavailable())
    client = make_client(transport=transport, max_pending=2)
    client.count("ai.tokens", user="user-1")
    client.count("ai.tokens", user="user-2")
    assert not client.flush(timeout=5)  # both now wait in a batch for retry
    client.count("ai.tokens", user="user-3")
    assert client.stats().dropped == 1
    assert client.stats().pending == 2


def test_a_drop_report_waits_for_a_batch_with_contributions(make_client: MakeClient) -> None:
    transport = FakeTransport(unavailable())
    client = make_client(transport=transport, max_pending=2)
    client.count("ai.tokens", user="user-1")
    client.count("ai.tokens", user="user-2")
    assert not client.flush(timeout=5)  # fails: the batch holds the whole bound
    client.count("ai.tokens", user="user-3")  # dropped
    assert client.flush(timeout=5)  # the retry succeeds; nothing new to carry the drop report yet
    client.count("ai.tokens", user="user-4")
    assert client.flush(timeout=5)

    retry_1, retry_2, fresh = transport.requests
    assert retry_1 == retry_2 and retry_2.dropped == 0
    assert fresh.dropped == 1 and [c[0] for c in contributions(fresh)] == ["user-4"]


def test_large_drains_are_split_into_bounded_batches(
    make_client: MakeClient, transport: FakeTransport
) -> None:
    client = make_client(max_pending=20_000)
    for i in range(12_000):
        client.count("ai.tokens", user=f"user-{i}")
    assert client.flush(timeout=5)
    assert [len(r.contributions) for r in transport.requests] == [5000, 5000, 2000]
    assert len({r.batch_id for r in transport.requests}) == 3


def test_batches_stay_under_a_megabyte_with_long_names(
    make_client: MakeClient, transport: FakeTransport
) -> None:
    client = make_client()
    for i in range(4000):
        client.count("m" * 256, user=f"user-{i:0>251}")
    assert client.flush(timeout=5)
    assert len(transport.requests) > 1
    assert all(r.ByteSize() <= 1024 * 1024 for r in transport.requests)
    assert sum(len(r.contributions) for r in transport.requests) == 4000
