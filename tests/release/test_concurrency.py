"""Concurrent releases over real gRPC: the budget is never overspent, a release is made once."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from chorus.server.root import Chorus
from chorus.v1 import common_pb2, release_pb2
from tests._race import run_together

from .conftest import WINDOW, Api, contribute, toml_with

#: Every test here starts a server, a process or a browser (tests/conftest.py, the fast lane).
pytestmark = pytest.mark.slow

STATISTICS = (common_pb2.STATISTIC_SUM, common_pb2.STATISTIC_COUNT, common_pb2.STATISTIC_HISTOGRAM)


def _closed_with_17_metrics(make_chorus: Callable[..., Chorus]) -> Chorus:
    """17 metrics x (sum, count, histogram) = 51 distinct releases; a cap of 1 pays for 10 at 0.1."""
    chorus = make_chorus(toml_with(metrics=17))
    contribute(chorus, *((f"user-team-red-{i}", f"ai.m{m}", 10 * i + m) for i in range(6) for m in range(17)))
    chorus.close_window(WINDOW, actor="test")
    return chorus


def test_50_concurrent_requests_charge_exactly_what_the_cap_allows(
        make_chorus: Callable[..., Chorus], make_api: Callable[[Chorus], Api]) -> None:
    api = make_api(_closed_with_17_metrics(make_chorus))
    requests = [(f"ai.m{i // 3}", STATISTICS[i % 3]) for i in range(50)]
    results = run_together([
        lambda m=m, s=s: api.release(teams=("team-red",), metrics=(m,), statistics=((s, "0.1"),))
        for m, s in requests])

    ok = [r for r in results if isinstance(r, release_pb2.ReleaseResponse)]
    refused = [r for r in results if isinstance(r, grpc.RpcError)]
    assert len(ok) == 10 and len(refused) == 40
    for exc in refused:
        assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "team team-red requested epsilon 0.1 but has 0 left of 1" in exc.details()
        status = rpc_status.from_call(exc)
        quota = error_details_pb2.QuotaFailure()
        assert status is not None and status.details[1].Unpack(quota)  # after the ErrorInfo
        assert quota.violations[0].subject == f"teams/team-red/windows/{WINDOW}"
    for reply in ok:
        (estimate,) = reply.teams[0].estimates
        assert estimate.epsilon_charged == "0.1" and not estimate.cached

    chorus = api.chorus
    q = lambda sql: chorus.db.run(lambda tx: tx.query(sql), name="t")  # noqa: E731
    assert q("SELECT spent_micros, cap_micros, releases FROM budgets WHERE team = 'team-red'") == [
        (1_000_000, 1_000_000, 10)]
    assert q("SELECT COUNT(*) FROM releases") == [(10,)]
    payloads = [json.loads(p) for (p,) in q("SELECT payload FROM ledger WHERE kind = 'release' ORDER BY seq")]
    # The running total in the ledger climbs by 0.1 per release and never passes the cap.
    assert [p["budget_spent_after"] for p in payloads] == [
        "0.1", "0.2", "0.3", "0.4", "0.5", "0.6", "0.7", "0.8", "0.9", "1"]
    released = {(e.metric, e.statistic) for r in ok for e in r.teams[0].estimates}
    assert len(released) == 10


def test_20_concurrent_identical_requests_charge_once_and_agree(
        make_chorus: Callable[..., Chorus], make_api: Callable[[Chorus], Api]) -> None:
    api = make_api(_closed_with_17_metrics(make_chorus))
    results = run_together([
        lambda: api.release(teams=("team-red",), metrics=("ai.m3",),
                            statistics=((common_pb2.STATISTIC_HISTOGRAM, "0.1"),))] * 20)
    assert all(isinstance(r, release_pb2.ReleaseResponse) for r in results)
    estimates = [r.teams[0].estimates[0] for r in results]  # type: ignore[union-attr]
    assert Counter((e.cached, e.epsilon_charged) for e in estimates) == {(False, "0.1"): 1, (True, "0"): 19}
    answers = {(e.release_id, tuple(e.bucket_counts), e.ci95, e.scale, e.epsilon, e.note) for e in estimates}
    assert len(answers) == 1
    remaining = {r.teams[0].budget_remaining for r in results}  # type: ignore[union-attr]
    assert remaining == {"0.9"}
    assert api.chorus.db.run(lambda tx: tx.query(
        "SELECT spent_micros, releases FROM budgets WHERE team = 'team-red'"), name="t") == [(100_000, 1)]
