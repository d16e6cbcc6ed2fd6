"""The release plan: frozen per window, released by the closer right after the close through the
release path (charged, ledgered as the plan's, k applied), once, in one transaction over one
snapshot of the window, also after a crash in between; reading (validate_only) never spends."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2

from chorus.server.domain import windows as window_store
from chorus.server.domain.release import Refused, StatisticRequest
from chorus.server.model import config
from chorus.server.model.clock import FakeClock
from chorus.server.model.roles import Role
from chorus.server.privacy.epsilon import Epsilon
from chorus.server.root import Chorus
from chorus.server.transport.grpc_server import Server
from chorus.server.verifier import verify
from chorus.v1 import common_pb2, release_pb2, release_pb2_grpc
from tests._ledger import decode, ledger_entries, line, resign
from tests._policy import SUITE_TOML

from .._status import detail, error_info
from .conftest import NOON, TEAMS, WINDOW, Api, contribute, roster_rows

#: The suite policy with a plan: adoption, and the sum and mean of ai.tokens, each part at 0.05.
PLAN_TOML = SUITE_TOML.replace("release_plan = []", "") + """
[[privacy.release_plan]]
statistic = "adoption"

[[privacy.release_plan]]
statistic = "sum"
metric = "ai.tokens"

[[privacy.release_plan]]
statistic = "mean"
metric = "ai.tokens"
"""
PLAN_COST = Epsilon.parse("0.15")  # active, ai.tokens sum, ai.tokens count
ELIGIBLE = sorted(t for t, n in TEAMS.items() if n >= 5)


def with_usage(chorus: Chorus) -> Chorus:
    contribute(chorus, *[(f"user-{team}-{i}", "ai.tokens", 1000 * (i + 1))
                         for team, size in TEAMS.items() for i in range(size)])
    return chorus


def ledger(chorus: Chorus) -> list[dict]:
    return [json.loads(json.loads(verify.export_line(e))["body"]) for e in ledger_entries(chorus.db)]


def plan_entries(chorus: Chorus) -> list[dict]:
    return [e["payload"] for e in ledger(chorus) if e["kind"] == "release" and e["payload"].get("plan")]


def spent(chorus: Chorus) -> dict[str, Epsilon]:
    return {t: Epsilon(s) for t, s in chorus.db.run(lambda tx: tx.query(
        "SELECT team, spent_micros FROM budgets WHERE window_id = ?", (WINDOW,)), name="test")}


def test_the_plan_is_frozen_into_the_window_policy(make_chorus: Callable[..., Chorus]) -> None:
    chorus = make_chorus(PLAN_TOML)
    chorus.closer.tick()
    frozen = chorus.windows.list()[0].policy
    assert [(e.statistic, e.metric, str(e.charge)) for e in frozen.release_plan] == [
        ("adoption", "", "0.05"), ("sum", "ai.tokens", "0.05"), ("mean", "ai.tokens", "0.05")]
    assert frozen.plan_cost() == PLAN_COST


def test_closing_releases_the_plan_once_charged_ledgered_and_k_applied(
        make_chorus: Callable[..., Chorus], clock: FakeClock) -> None:
    chorus = with_usage(make_chorus(PLAN_TOML))
    clock.advance(timedelta(days=1))
    assert [r.window.id for r in chorus.closer.tick()] == [WINDOW]
    entries = plan_entries(chorus)
    # Every eligible team gets each planned part; team-tiny (3 < k) nothing.
    assert sorted((p["team"], p["metric"], p["statistic"]) for p in entries) == sorted(
        (t, m, s) for t in ELIGIBLE for m, s in (("", "active"), ("ai.tokens", "sum"), ("ai.tokens", "count")))
    assert all(p["by"] == "closer" and p["epsilon"] == "0.05" for p in entries)
    assert spent(chorus) == {"team-blue": PLAN_COST, "team-red": PLAN_COST, "team-tiny": Epsilon(0)}
    size = len(ledger(chorus))
    for _ in range(3):  # later ticks: nothing pending, nothing released again
        clock.advance(timedelta(minutes=1))
        chorus.closer.tick()
    assert len(plan_entries(chorus)) == len(entries)
    assert len(ledger(chorus)) == size
    assert spent(chorus)["team-red"] == PLAN_COST


def test_a_forced_close_releases_the_plan(make_chorus: Callable[..., Chorus]) -> None:
    chorus = with_usage(make_chorus(PLAN_TOML))
    chorus.closer.tick()
    chorus.close_window(WINDOW, actor="admin")
    assert len(plan_entries(chorus)) == 3 * len(ELIGIBLE)


def test_the_whole_plan_is_one_transaction_that_reads_the_window_once(
        make_chorus: Callable[..., Chorus], monkeypatch: pytest.MonkeyPatch) -> None:
    chorus = with_usage(make_chorus(PLAN_TOML))
    chorus.closer.tick()  # opens the window
    transactions: list[str] = []
    reads: list[str] = []
    real_run, real_get = chorus.db.run, window_store.get

    def run(fn, *, name):  # type: ignore[no-untyped-def]
        transactions.append(name)
        return real_run(fn, name=name)

    def get(tx, window):  # type: ignore[no-untyped-def]
        if transactions[-1:] == ["release_plan"]:
            reads.append(window)
        return real_get(tx, window)

    monkeypatch.setattr(chorus.db, "run", run)
    monkeypatch.setattr(window_store, "get", get)
    chorus.close_window(WINDOW, actor="admin")
    assert len(plan_entries(chorus)) == 3 * len(ELIGIBLE)  # three entries, each for every eligible team
    assert transactions.count("release_plan") == 1
    assert reads == [WINDOW]  # one snapshot of the window for the whole plan


def test_a_forced_close_publishes_its_own_plan_and_leaves_another_pending_one_to_the_tick(
        make_chorus: Callable[..., Chorus], clock: FakeClock) -> None:
    """CloseWindow runs under its RPC's deadline: it releases its window's plan only."""
    chorus = with_usage(make_chorus(PLAN_TOML))
    clock.advance(timedelta(days=1))
    publish, chorus.releases.release_plan = chorus.releases.release_plan, lambda window: None  # type: ignore[method-assign]
    assert [r.window.id for r in chorus.closer.tick()] == [WINDOW]  # closed; its plan left pending
    chorus.releases.release_plan = publish  # type: ignore[method-assign]
    today = next(w.id for w in chorus.windows.list() if w.state == "open")
    contribute(chorus, *[(f"user-{team}-{i}", "ai.tokens", 10) for team, size in TEAMS.items() for i in range(size)])
    assert chorus.close_window(today, actor="admin").closed_now
    assert chorus.releases.pending_plans() == [WINDOW]
    assert {p["window"] for p in plan_entries(chorus)} == {today}
    chorus.closer.tick()  # the tick catches up
    assert chorus.releases.pending_plans() == []
    assert {p["window"] for p in plan_entries(chorus)} == {today, WINDOW}


_KILLED_CLOSER = """
import os, signal, sys
from datetime import datetime
from pathlib import Path
from chorus.server.model import config
from chorus.server.root import Chorus
from chorus.server.model.clock import FakeClock
from chorus.server.model.roles import Role
chorus = Chorus(config.load(Path(sys.argv[1])), Path(sys.argv[2]), clock=FakeClock(datetime.fromisoformat(sys.argv[3])))
# The close commits; the process dies before the first plan request.
chorus.releases.release_plan = lambda window: os.kill(os.getpid(), signal.SIGKILL)
chorus.closer.tick()
"""


@pytest.mark.slow
def test_a_crash_between_close_and_plan_is_completed_by_the_next_tick(tmp_path: Path) -> None:
    path = tmp_path / "plan.toml"
    path.write_text(PLAN_TOML)
    data = tmp_path / "data"
    clock = FakeClock(NOON)
    chorus = Chorus(config.load(path), data, clock=clock)
    chorus.import_roster(roster_rows(), actor="test")
    with_usage(chorus)
    chorus.close()
    later = NOON + timedelta(days=1)
    child = subprocess.run([sys.executable, "-c", _KILLED_CLOSER, str(path), str(data), later.isoformat()],
                           capture_output=True, timeout=120)
    assert child.returncode == -signal.SIGKILL, child.stderr.decode()
    chorus = Chorus(config.load(path), data, clock=FakeClock(later))
    try:
        assert {w.id: w.state for w in chorus.windows.list()}[WINDOW] == "closed"
        assert plan_entries(chorus) == [] and chorus.releases.pending_plans() == [WINDOW]
        # Until the plan is complete, nobody else spends this window's budget.
        with pytest.raises(Refused, match="release plan of window 2026-11-25 is being released"):
            chorus.releases.release(WINDOW, [], [], [StatisticRequest("count")], "analyst")
        with pytest.raises(Refused, match="release plan of window 2026-11-25 is being released"):
            chorus.releases.release(WINDOW, [], [], [StatisticRequest("sum")], "analyst", ["/"])  # nor a node
        read = chorus.releases.release(WINDOW, [], [], [StatisticRequest("count")], "analyst", validate_only=True)
        assert {u.statistic for t in read.teams for u in t.unreleased} == {"count"}  # reading still works
        read = chorus.releases.release(WINDOW, [], [], [StatisticRequest("sum")], "analyst", ["/"],
                                       validate_only=True)
        assert [(t.team, t.level, {u.statistic for u in t.unreleased}) for t in read.teams] == [
            ("/", "company", {"sum"})]
        chorus.closer.tick()
        chorus.closer.tick()
        assert len(plan_entries(chorus)) == 3 * len(ELIGIBLE)
        assert chorus.releases.pending_plans() == []
        assert spent(chorus)["team-red"] == PLAN_COST
        report = verify.verify_lines((verify.export_line(e) for e in ledger_entries(chorus.db)),
                                     verify.load_public_key(chorus.ledger.signer.public_key_pem().encode()))
        assert report.ok, report.violations
    finally:
        chorus.close()


@pytest.mark.slow
def test_a_release_while_the_plan_is_pending_is_refused_over_grpc_with_a_retry(
        make_chorus: Callable[..., Chorus], clock: FakeClock) -> None:
    """docs/api.md's RELEASE_PLAN_PENDING: FAILED_PRECONDITION with RetryInfo; reads still pass."""
    chorus = with_usage(make_chorus(PLAN_TOML))
    clock.advance(timedelta(days=1))
    # Closed as the closer does, before its plan pass: the state the minute after a close leaves.
    chorus.db.run(lambda tx: window_store.close(tx, WINDOW, chorus.ledger, clock.now(), "test"), name="test")
    assert chorus.releases.pending_plans() == [WINDOW]
    server = Server(chorus, "127.0.0.1:0", run_closer=False)
    server.start()
    secret, _ = chorus.tokens.create(Role.ANALYST, "analyst-1", clock.now(), actor="test")
    metadata = (("authorization", f"Bearer {secret}"),)
    try:
        with grpc.insecure_channel(server.address) as channel:
            stub = release_pb2_grpc.ReleaseServiceStub(channel)
            request = release_pb2.ReleaseRequest(window=WINDOW, statistics=[
                release_pb2.StatisticRequest(statistic=common_pb2.STATISTIC_COUNT)])
            with pytest.raises(grpc.RpcError) as caught:
                stub.Release(request, metadata=metadata, timeout=30)
            assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert error_info(caught.value).reason == "RELEASE_PLAN_PENDING"
            assert detail(caught.value, error_details_pb2.RetryInfo).retry_delay.seconds == 30
            assert "release plan of window 2026-11-25 is being released" in caught.value.details()
            request.validate_only = True
            assert stub.Release(request, metadata=metadata, timeout=30).teams  # a read passes
            chorus.closer.tick()  # the plan completes: the same request now spends
            request.validate_only = False
            assert stub.Release(request, metadata=metadata, timeout=30).teams
    finally:
        server.stop(grace=1)


@pytest.mark.slow
def test_reading_never_spends_and_prices_what_is_not_released(
        make_chorus: Callable[..., Chorus], make_api: Callable[[Chorus], Api], clock: FakeClock) -> None:
    chorus = with_usage(make_chorus(PLAN_TOML))
    clock.advance(timedelta(days=1))
    chorus.closer.tick()
    api = make_api(chorus)
    before, size = spent(chorus), len(ledger(chorus))
    request = release_pb2.ReleaseRequest(
        window=WINDOW, metrics=["ai.tokens"], validate_only=True,
        statistics=[release_pb2.StatisticRequest(statistic=s) for s in (
            common_pb2.STATISTIC_SUM, common_pb2.STATISTIC_MEAN, common_pb2.STATISTIC_HISTOGRAM,
            common_pb2.STATISTIC_ADOPTION)])
    for _ in range(2):
        reply = api.stub.Release(request, metadata=api.metadata, timeout=60)
    assert spent(chorus) == before and len(ledger(chorus)) == size
    red = next(t for t in reply.teams if t.team == "team-red")
    shown = {(e.metric, e.statistic) for e in red.estimates}
    assert {("ai.tokens", common_pb2.STATISTIC_SUM), ("ai.tokens", common_pb2.STATISTIC_MEAN),
            ("", common_pb2.STATISTIC_ADOPTION)} <= shown
    assert all(e.cached for e in red.estimates) and red.epsilon_charged == "0"
    (histogram,) = red.unreleased
    assert (histogram.metric, histogram.statistic, histogram.epsilon) == (
        "ai.tokens", common_pb2.STATISTIC_HISTOGRAM, "0.05")
    assert histogram.expected_ci95 > 0 and red.epsilon_required == "0.05"
    assert red.budget_remaining == str(Epsilon.parse("1") - PLAN_COST)
    # A preview of more than is left is reported, not refused, and still spends nothing.
    big = release_pb2.ReleaseRequest(window=WINDOW, validate_only=True, statistics=[
        release_pb2.StatisticRequest(statistic=common_pb2.STATISTIC_HISTOGRAM, epsilon="0.9")])
    red = next(t for t in api.stub.Release(big, metadata=api.metadata, timeout=60).teams if t.team == "team-red")
    assert Epsilon.parse(red.epsilon_required) > Epsilon.parse(red.budget_remaining)
    assert spent(chorus) == before
    # The real request is refused with nothing charged.
    with pytest.raises(grpc.RpcError) as refused:
        api.stub.Release(release_pb2.ReleaseRequest(window=WINDOW, statistics=big.statistics),
                         metadata=api.metadata, timeout=60)
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert spent(chorus) == before


def test_the_verifier_checks_plan_releases_against_the_frozen_plan(
        make_chorus: Callable[..., Chorus], clock: FakeClock) -> None:
    chorus = with_usage(make_chorus(PLAN_TOML))
    clock.advance(timedelta(days=1))
    chorus.closer.tick()
    key = verify.load_public_key(chorus.ledger.signer.public_key_pem().encode())
    lines = [verify.export_line(e) for e in ledger_entries(chorus.db)]
    assert verify.verify_lines(iter(lines), key).ok
    # The same ledger where one plan release names a statistic the plan does not hold,
    # re-signed by the server's own key: only the plan check can catch it.
    entries = [decode(line) for line in lines]
    index = next(i for i, e in enumerate(entries) if e["kind"] == "release" and e["payload"]["statistic"] == "count")
    entries[index]["payload"]["statistic"] = "histogram"
    entries[index]["payload"]["value"] = ["1"] * 5
    forged = resign(entries, chorus.ledger.signer, start=index)
    report = verify.verify_lines((line(e) for e in forged), key)
    assert [v.rule for v in report.violations] == ["plan"]
    assert "not in the release plan frozen for its window" in report.violations[0].message
    # A plan release that charged more than the plan's epsilon (the running totals kept consistent).
    entries = [decode(line) for line in lines]
    index = next(i for i, e in enumerate(entries) if e["kind"] == "release" and e["payload"]["team"] == "team-red")
    payload = entries[index]["payload"]
    payload["epsilon"] = "0.06"
    for later in entries[index:]:
        if later["kind"] == "release" and later["payload"]["team"] == "team-red":
            later["payload"]["budget_spent_after"] = str(Epsilon.parse(later["payload"]["budget_spent_after"])
                                                         + Epsilon.parse("0.01"))
    report = verify.verify_lines((line(e) for e in resign(entries, chorus.ledger.signer, start=index)), key)
    assert [v.rule for v in report.violations] == ["plan"]
    assert "charged epsilon 0.06, more than the 0.05 the window's frozen plan allows" in report.violations[0].message


def test_a_plan_over_the_budget_or_at_two_epsilons_is_refused() -> None:
    over = PLAN_TOML.replace('epsilon_per_window = "1"', 'epsilon_per_window = "0.1"')
    with pytest.raises(config.ConfigError, match=r"release_plan charges each team-window 0.15, more than "
                                                 r"privacy.epsilon_per_window = 0.1"):
        config.parse(__import__("tomllib").loads(over))
    twice = PLAN_TOML + '\n[[privacy.release_plan]]\nstatistic = "count"\nmetric = "ai.tokens"\nepsilon = "0.2"\n'
    with pytest.raises(config.ConfigError, match=r"the count of ai.tokens is planned at epsilon 0.2 here and "
                                                 r"0.05 by privacy.release_plan\[2\]"):
        config.parse(__import__("tomllib").loads(twice))
