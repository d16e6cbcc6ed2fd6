"""Releases over real gRPC: rules, charges, ledger entries, caching, budget refusal, k, retention."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import grpc
import opendp.prelude as dp
import pytest
from google.rpc import error_details_pb2

from chorus.server.domain import ingest
from chorus.server.domain.ledger import read_entries
from chorus.server.domain.release import steps
from chorus.server.model.clock import FakeClock
from chorus.server.model.roles import Role
from chorus.server.privacy.epsilon import Epsilon
from chorus.server.root import Chorus
from chorus.server.verifier import verify
from chorus.v1 import common_pb2, release_pb2

from .._status import detail, error_info
from .conftest import NOON, WINDOW, Api, contribute, toml_with

#: Every test here starts a server, a process or a browser (tests/conftest.py, the fast lane).
pytestmark = pytest.mark.slow

SUM, COUNT, MEAN, HIST, ADOPTION = (common_pb2.STATISTIC_SUM, common_pb2.STATISTIC_COUNT,
                                    common_pb2.STATISTIC_MEAN, common_pb2.STATISTIC_HISTOGRAM,
                                    common_pb2.STATISTIC_ADOPTION)
ACTIVE = common_pb2.STATISTIC_ACTIVE
RELEASE_KEYS = {"release_id", "window", "team", "metric", "statistic", "mechanism", "sensitivity", "scale",
                "epsilon", "value", "ci95", "budget_cap", "budget_spent_after", "by"}


def q(chorus: Chorus, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    return chorus.db.run(lambda tx: tx.query(sql, params), name="test")


def state(chorus: Chorus) -> tuple[Any, ...]:
    """Everything a release may change."""
    return (q(chorus, "SELECT * FROM budgets ORDER BY team"),
            q(chorus, "SELECT * FROM releases ORDER BY release_id"),
            q(chorus, "SELECT seq, hash FROM ledger ORDER BY seq"))


def release_payloads(chorus: Chorus) -> list[dict[str, Any]]:
    rows = q(chorus, "SELECT payload FROM ledger WHERE kind = 'release' ORDER BY seq")
    return [json.loads(p) for (p,) in rows]


def closed(chorus: Chorus) -> Chorus:
    """Some usage in team-red and team-blue, then the window closed."""
    contribute(chorus, ("user-team-red-0", "ai.tokens", 5_000), ("user-team-red-1", "ai.tokens", 60_000),
               ("user-team-red-2", "ai.requests", 30), ("user-team-blue-0", "ai.tokens", 1_000),
               ("user-team-tiny-0", "ai.tokens", 9_000))
    chorus.close_window(WINDOW, actor="test")
    return chorus


def error(exc: grpc.RpcError) -> tuple[grpc.StatusCode, str]:
    return exc.code(), exc.details()


@pytest.fixture
def api(chorus: Chorus, make_api: Callable[[Chorus], Api]) -> Api:
    return make_api(closed(chorus))


def test_default_request_releases_every_statistic_for_eligible_teams(api: Api) -> None:
    reply = api.release()
    assert reply.window == WINDOW
    teams = {t.team: t for t in reply.teams}
    assert set(teams) == {"team-red", "team-blue", "team-tiny"}
    red = teams["team-red"]
    assert red.outcome == release_pb2.TEAM_OUTCOME_RELEASED and red.roster_size == 6
    metrics = [m.name for m in api.chorus.config.policy.metrics]
    kinds = [(e.metric, e.statistic) for e in red.estimates]
    assert kinds == [(m, s) for m in metrics for s in (SUM, COUNT, MEAN, HIST)] + [("", ACTIVE), ("", ADOPTION)]
    # 4 metrics x (sum, count, histogram) + active, 0.05 each.
    assert red.budget_cap == "1" and red.budget_remaining == "0.35" and red.epsilon_charged == "0.65"
    for e in red.estimates:
        assert not e.cached and e.ci95 > 0
        assert bool(e.release_id) != bool(e.derived_from)  # noisy: its release; derived: its parts
        if e.statistic in (MEAN, ADOPTION):
            assert e.mechanism == "post_processing"
            assert e.epsilon == e.epsilon_charged == "0"
        else:
            assert e.mechanism == "discrete_laplace" and e.epsilon == e.epsilon_charged == "0.05"
        if e.statistic == HIST:
            edges = api.chorus.config.policy.metric(e.metric).histogram_edges
            assert list(e.histogram_edges) == list(edges) and len(e.bucket_counts) == len(edges) + 1
            assert all(b >= 0 for b in e.bucket_counts)
        if e.statistic in (SUM, COUNT):
            assert e.value >= 0
        if e.statistic == ADOPTION:
            assert 0 <= e.value <= 1


def test_derived_statistics_charge_nothing_and_name_their_releases(api: Api) -> None:
    """Estimates' charges add up to the team's, and a derived one joins on release ids that are
    noisy estimates of the same answer and release entries of the ledger."""
    reply = api.release(teams=("team-red",), metrics=("ai.tokens",), statistics=((MEAN, "0.2"), (ADOPTION, "0.1")))
    red = reply.teams[0]
    by_id = {e.release_id: e for e in red.estimates if e.release_id}
    assert [(e.statistic, e.epsilon_charged) for e in red.estimates] == [
        (SUM, "0.2"), (COUNT, "0.2"), (MEAN, "0"), (ACTIVE, "0.1"), (ADOPTION, "0")]
    assert sum(Epsilon.parse(e.epsilon_charged).micros for e in red.estimates) == \
        Epsilon.parse(red.epsilon_charged).micros == 500_000
    mean, adoption = red.estimates[2], red.estimates[4]
    assert [by_id[i].statistic for i in mean.derived_from] == [SUM, COUNT]
    assert [by_id[i].statistic for i in adoption.derived_from] == [ACTIVE]
    assert mean.release_id == adoption.release_id == "" and mean.epsilon == "0"
    ledger = {json.loads(e.payload)["release_id"] for e in api.chorus.db.run(lambda tx: read_entries(tx, 1, 10_000),
                                                                        name="t") if e.kind == "release"}
    assert set(by_id) <= ledger


def test_k_suppression_charges_nothing(api: Api) -> None:
    reply = api.release()
    tiny = next(t for t in reply.teams if t.team == "team-tiny")
    assert tiny.outcome == release_pb2.TEAM_OUTCOME_SUPPRESSED
    assert tiny.message == "team team-tiny has 3 people on the roster; releases need at least 5"
    assert not tiny.estimates and tiny.budget_remaining == "1" and tiny.roster_size == 3
    assert tiny.epsilon_charged == "0"
    assert q(api.chorus, "SELECT spent_micros, releases FROM budgets WHERE team = 'team-tiny'") == [(0, 0)]
    assert q(api.chorus, "SELECT COUNT(*) FROM releases WHERE team = 'team-tiny'") == [(0,)]
    assert all(p["team"] != "team-tiny" for p in release_payloads(api.chorus))


def test_ledger_entry_has_exactly_the_agreed_keys_and_matches_the_store(api: Api) -> None:
    reply = api.release(teams=("team-red",), metrics=("ai.tokens",), statistics=((SUM, ""), (HIST, "")))
    payloads = release_payloads(api.chorus)
    assert [(p["statistic"], p["metric"], p["team"]) for p in payloads] == [
        ("sum", "ai.tokens", "team-red"), ("histogram", "ai.tokens", "team-red")]
    by_id = {e.release_id: e for e in reply.teams[0].estimates}
    spent = 0
    for p in payloads:
        assert set(p) == RELEASE_KEYS
        assert p["window"] == WINDOW and p["mechanism"] == "discrete_laplace" and p["by"] == "analyst-1"
        assert p["budget_cap"] == "1"
        spent += Epsilon.parse(p["epsilon"]).micros
        assert p["budget_spent_after"] == str(Epsilon(spent))
        e = by_id[p["release_id"]]
        assert (e.scale, e.ci95, e.sensitivity, e.epsilon) == (p["scale"], p["ci95"], p["sensitivity"],
                                                               p["epsilon"])
        if p["statistic"] == "histogram":
            assert list(e.bucket_counts) == [max(0, int(v)) for v in p["value"]]
        else:
            assert e.value == max(0, int(p["value"]))
    seqs = q(api.chorus, "SELECT ledger_seq FROM releases ORDER BY ledger_seq")
    kinds = {seq: kind for seq, kind in q(api.chorus, "SELECT seq, kind FROM ledger")}
    assert [kinds[s] for (s,) in seqs] == ["release", "release"]


def test_charge_is_the_privacy_map_and_scale_follows_the_sensitivity(api: Api) -> None:
    api.release(teams=("team-red",), metrics=("ai.tokens",),
                statistics=((SUM, "0.1"), (COUNT, "0.3"), (HIST, "0.07"), (ADOPTION, "0.05")))
    policy = api.chorus.config.policy
    for p in release_payloads(api.chorus):
        bound = policy.metric(p["metric"]).max_per_user if p["metric"] else None
        expected_sensitivity = bound if p["statistic"] == "sum" else 1
        assert p["sensitivity"] == expected_sensitivity
        requested = {"sum": 0.1, "count": 0.3, "histogram": 0.07, "active": 0.05}[p["statistic"]]
        assert p["scale"] == pytest.approx(expected_sensitivity / requested, rel=1e-12)
        vector = p["statistic"] == "histogram"
        space = ((dp.vector_domain(dp.atom_domain(T="i64")), dp.l1_distance(T="i64")) if vector
                 else (dp.atom_domain(T="i64"), dp.absolute_distance(T="i64")))
        privacy_map = dp.m.make_laplace(*space, p["scale"]).map(p["sensitivity"])
        assert Epsilon.parse(p["epsilon"]) == Epsilon.ceil(privacy_map) == Epsilon.parse(str(requested))
        assert p["ci95"] == dp.discrete_laplacian_scale_to_accuracy(p["scale"], alpha=0.05)


def test_the_audit_verifier_accepts_the_ledger(api: Api) -> None:
    api.release()
    api.release(teams=("team-red",), statistics=((SUM, "0.2"),))  # cached: no new entry
    entries = api.chorus.db.run(lambda tx: read_entries(tx, 1, 10_000), name="t")
    report = verify.verify_lines((verify.export_line(e) for e in entries),
                                 api.chorus.ledger.signer.public_key)
    assert report.ok, [str(v) for v in report.violations]
    assert report.kinds["release"] == 26  # 13 noisy statistics for each of two eligible teams
    assert report.totals[(WINDOW, "team-red")].spent == Epsilon.parse("0.65")


def test_cached_answer_is_identical_and_free(api: Api) -> None:
    request = {"teams": ("team-red", "team-blue"), "statistics": ((MEAN, ""), (HIST, "0.1"), (ADOPTION, ""))}
    first = api.release(**request)
    before = state(api.chorus)
    second = api.release(**request)
    assert state(api.chorus) == before
    for a, b in zip(first.teams, second.teams, strict=True):
        assert a.budget_remaining == b.budget_remaining
        assert a.epsilon_charged != "0" and b.epsilon_charged == "0"
        for x, y in zip(a.estimates, b.estimates, strict=True):
            assert not x.cached and y.cached and y.epsilon_charged == "0"
            assert (x.epsilon_charged == "0") == bool(x.derived_from)  # only noisy ones charge
            x.ClearField("cached"), y.ClearField("cached")
            x.ClearField("epsilon_charged"), y.ClearField("epsilon_charged")
            assert x == y


def test_mean_releases_sum_and_count_which_are_then_cached(api: Api) -> None:
    mean = api.release(teams=("team-red",), metrics=("ai.tokens",), statistics=((MEAN, "0.2"),))
    total, count, estimate = mean.teams[0].estimates
    assert (total.epsilon_charged, count.epsilon_charged, estimate.epsilon_charged) == ("0.2", "0.2", "0")
    assert list(estimate.derived_from) == [total.release_id, count.release_id]
    assert mean.teams[0].epsilon_charged == "0.4" and mean.teams[0].budget_remaining == "0.6"
    parts = api.release(teams=("team-red",), metrics=("ai.tokens",), statistics=((SUM, "0.5"), (COUNT, "")))
    total, count = parts.teams[0].estimates
    assert total.cached and count.cached and parts.teams[0].budget_remaining == "0.6"
    assert total.epsilon == count.epsilon == "0.2"  # the stored release, not the new request
    expected = min(200_000.0, max(0.0, total.value / max(count.value, 1)))
    if count.value >= 1 and "clamped" not in estimate.note:
        assert estimate.value == pytest.approx(expected)
    assert estimate.ci95 > 0


def test_overspend_refuses_the_whole_request_and_names_each_team(api: Api) -> None:
    api.release(teams=("team-red",), metrics=("ai.tokens",), statistics=((SUM, "0.9"),))
    before = state(api.chorus)
    with pytest.raises(grpc.RpcError) as caught:
        api.release(teams=("team-red", "team-blue"), metrics=("ai.requests",),
                    statistics=((SUM, "0.3"), (COUNT, "0.3")))
    code, message = error(caught.value)
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "team team-red requested epsilon 0.6 but has 0.1 left of 1" in message
    assert "team-blue" not in message  # it could afford its part; still nothing released for it
    quota = detail(caught.value, error_details_pb2.QuotaFailure)
    assert [(v.subject, v.description) for v in quota.violations] == [
        (f"teams/team-red/windows/{WINDOW}", "requested epsilon 0.6, remaining 0.1 of 1")]
    assert dict(quota.violations[0].quota_dimensions) == {
        "window": WINDOW, "team": "team-red", "requested_epsilon": "0.6", "remaining_epsilon": "0.1",
        "cap_epsilon": "1"}
    info = error_info(caught.value)
    assert info.reason == "PRIVACY_BUDGET_EXCEEDED" and info.metadata["requested_epsilon"] == "0.6"
    assert state(api.chorus) == before


def test_every_overspending_team_is_named(api: Api) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        api.release(teams=("team-red", "team-blue"), statistics=((SUM, "0.5"),))  # 4 metrics x 0.5
    quota = detail(caught.value, error_details_pb2.QuotaFailure)
    assert sorted(v.subject for v in quota.violations) == [f"teams/team-blue/windows/{WINDOW}",
                                                           f"teams/team-red/windows/{WINDOW}"]
    assert error_info(caught.value).metadata["team_windows"] == "2"
    assert q(api.chorus, "SELECT SUM(spent_micros) FROM budgets") == [(0,)]


def test_open_window_is_refused_with_when_it_closes(chorus: Chorus,
                                                    make_api: Callable[[Chorus], Api]) -> None:
    contribute(chorus, ("user-team-red-0", "ai.tokens", 5))
    api = make_api(chorus)
    before = state(chorus)
    with pytest.raises(grpc.RpcError) as caught:
        api.release()
    assert error(caught.value) == (grpc.StatusCode.FAILED_PRECONDITION,
                                   "window 2026-11-25 is still open; it closes at 2026-11-26 02:00 UTC. "
                                   "Only closed windows are released")
    assert error_info(caught.value).reason == "WINDOW_NOT_RELEASABLE"
    assert state(chorus) == before


def test_a_team_name_with_a_slash_is_escaped_in_the_quota_subject(
        make_chorus: Callable[..., Chorus], make_api: Callable[[Chorus], Api]) -> None:
    chorus = make_chorus(teams={"eng/platform": 5, "eng": 5})
    contribute(chorus, ("user-eng/platform-0", "ai.tokens", 10))
    chorus.close_window(WINDOW, actor="test")
    api = make_api(chorus)
    api.release(teams=("eng/platform",), statistics=((SUM, "0.5"),), metrics=("ai.tokens",))
    with pytest.raises(grpc.RpcError) as caught:
        api.release(teams=("eng/platform",), statistics=((COUNT, "0.6"),), metrics=("ai.tokens",))
    (violation,) = detail(caught.value, error_details_pb2.QuotaFailure).violations
    assert violation.subject == f"teams/eng%2Fplatform/windows/{WINDOW}"
    assert violation.quota_dimensions["team"] == "eng/platform"
    assert (violation.quota_metric, violation.quota_id) == ("chorus.dev/privacy_budget", "EpsilonPerTeamWindow")


@pytest.mark.parametrize(("kwargs", "code", "fragment"), [
    ({"window": "2026-11-24"}, grpc.StatusCode.NOT_FOUND, "window '2026-11-24' not found"),
    ({"window": "yesterday"}, grpc.StatusCode.INVALID_ARGUMENT, "window id 'yesterday'"),
    ({"window": ""}, grpc.StatusCode.INVALID_ARGUMENT, "window is required"),
    ({"teams": ("team-red", "team-green")}, grpc.StatusCode.NOT_FOUND, "team 'team-green' has no statistics"),
    ({"metrics": ("ai.lines",)}, grpc.StatusCode.NOT_FOUND, "metric 'ai.lines' is not in the policy"),
    ({"statistics": ((common_pb2.STATISTIC_UNSPECIFIED, ""),)}, grpc.StatusCode.INVALID_ARGUMENT,
     "statistics[0].statistic must be one of"),
    ({"statistics": ((SUM, "0.1234567"),)}, grpc.StatusCode.INVALID_ARGUMENT, "more than 6 decimal places"),
    ({"statistics": ((SUM, "lots"),)}, grpc.StatusCode.INVALID_ARGUMENT, "not a plain decimal"),
    ({"statistics": ((SUM, "1e-3"),)}, grpc.StatusCode.INVALID_ARGUMENT, "not a plain decimal"),
    ({"statistics": ((SUM, " 0.1"),)}, grpc.StatusCode.INVALID_ARGUMENT, "not a plain decimal"),
    ({"statistics": ((SUM, "+0.1"),)}, grpc.StatusCode.INVALID_ARGUMENT, "not a plain decimal"),
    ({"statistics": ((SUM, "0"),)}, grpc.StatusCode.INVALID_ARGUMENT,
     "statistics[0].epsilon is 0 for sum; a release needs an epsilon greater than 0"),
    ({"statistics": ((SUM, "1.5"),)}, grpc.StatusCode.INVALID_ARGUMENT,
     "statistics[0].epsilon 1.5 for sum exceeds the budget of a team-window in 2026-11-25, 1"),
    ({"statistics": ((SUM, ""), (SUM, "0.1"))}, grpc.StatusCode.INVALID_ARGUMENT, "requested more than once"),
])
def test_bad_requests_are_refused_and_change_nothing(api: Api, kwargs: dict[str, Any],
                                                      code: grpc.StatusCode, fragment: str) -> None:
    before = state(api.chorus)
    with pytest.raises(grpc.RpcError) as caught:
        api.release(**kwargs)
    assert caught.value.code() == code
    assert fragment in caught.value.details()
    info = error_info(caught.value)
    assert info.reason == code.name  # INVALID_ARGUMENT or NOT_FOUND
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        (violation,) = detail(caught.value, error_details_pb2.BadRequest).field_violations
        assert violation.field.split("[")[0] in kwargs and info.metadata["field"] == violation.field
    assert state(api.chorus) == before


@pytest.mark.slow
@pytest.mark.parametrize(("statistics", "field"), [
    (((SUM, "0.1"), (common_pb2.STATISTIC_COUNT, "0")), "statistics[1].epsilon"),
    (((SUM, "0.1"), (common_pb2.STATISTIC_COUNT, "0.000000")), "statistics[1].epsilon"),
    (((SUM, ""), (common_pb2.STATISTIC_COUNT, "1.5")), "statistics[1].epsilon"),
    (((SUM, ""), (SUM, "0.1")), "statistics[1].statistic"),
])
def test_an_epsilon_refusal_names_the_exact_field(api: Api, statistics: Any, field: str) -> None:
    """docs/api.md: epsilon "0" fits the grammar but a release needs more than 0; the BadRequest
    names the statistic's own field."""
    with pytest.raises(grpc.RpcError) as caught:
        api.release(statistics=statistics)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    (violation,) = detail(caught.value, error_details_pb2.BadRequest).field_violations
    assert violation.field == field == error_info(caught.value).metadata["field"]
    assert caught.value.details().startswith(field)


def test_windows_past_retention_are_refused(make_chorus: Callable[..., Chorus], clock: FakeClock,
                                            make_api: Callable[[Chorus], Api]) -> None:
    chorus = closed(make_chorus(toml_with(retention_windows=3)))
    api = make_api(chorus)
    # Window ends 2026-11-26 00:00; three day-lengths later it can no longer be released.
    clock.set(NOON + timedelta(days=3, hours=11, minutes=59))
    assert api.release(teams=("team-red",), statistics=((COUNT, ""),)).teams[0].estimates
    clock.advance(timedelta(minutes=1))
    with pytest.raises(grpc.RpcError) as caught:
        api.release(teams=("team-red",), statistics=((COUNT, ""),))
    assert error(caught.value) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "window 2026-11-25 is past retention: windows are released for 3 day(s) after they end, "
        "until 2026-11-29 00:00 UTC for this one")


def test_a_person_past_the_bound_contributes_exactly_the_bound(make_chorus: Callable[..., Chorus],
                                                               make_api: Callable[[Chorus], Api]) -> None:
    # A huge epsilon makes the noise vanish (scale 0.02 for the sum), so the release shows its input.
    chorus = make_chorus(toml_with(epsilon_per_window="10000"))
    out = contribute(chorus, ("user-team-red-0", "ai.tasks_completed", 10**15),
                     ("user-team-red-0", "ai.tasks_completed", 10**15),
                     ("user-team-red-1", "ai.tasks_completed", 7))
    assert out.accepted == 3 and out.clamped == 2
    chorus.close_window(WINDOW, actor="test")
    assert q(chorus, "SELECT total, people FROM team_metrics WHERE team = 'team-red' "
                     "AND metric = 'ai.tasks_completed'") == [(107, 2)]
    api = make_api(chorus)
    reply = api.release(teams=("team-red",), metrics=("ai.tasks_completed",),
                        statistics=((SUM, "5000"), (COUNT, "1000"), (HIST, "1000")))
    total, count, hist = reply.teams[0].estimates
    assert (total.value, total.sensitivity) == (107, 100)
    assert count.value == 2
    assert list(hist.bucket_counts) == [0, 1, 0, 0, 1]  # edges [3, 10, 30, 60]: 7 and 100


def test_late_contributions_after_close_are_rejected(api: Api) -> None:
    before = q(api.chorus, "SELECT * FROM team_metrics ORDER BY team, metric")
    out = contribute(api.chorus, ("user-team-red-0", "ai.tokens", 50))
    assert [r.reason for r in out.rejections] == [ingest.Reason.LATE]
    assert q(api.chorus, "SELECT * FROM team_metrics ORDER BY team, metric") == before
    assert q(api.chorus, "SELECT COUNT(*) FROM usage") == [(0,)]


def test_list_windows_metrics_and_teams(api: Api, clock: FakeClock) -> None:
    md = api.metadata
    windows = api.stub.ListWindows(release_pb2.ListWindowsRequest(), metadata=md).windows
    assert [(w.id, w.state) for w in windows] == [(WINDOW, common_pb2.WINDOW_STATE_CLOSED)]
    metrics = api.stub.ListMetrics(release_pb2.ListMetricsRequest(window=WINDOW), metadata=md).metrics
    assert [(m.name, m.max_per_user) for m in metrics][:2] == [("ai.tokens", 200_000), ("ai.requests", 2000)]
    assert list(metrics[0].histogram_edges) == [10_000, 50_000, 100_000, 150_000]
    upcoming = api.stub.ListMetrics(release_pb2.ListMetricsRequest(), metadata=md).metrics
    assert [m.name for m in upcoming] == [m.name for m in api.chorus.config.policy.metrics]
    later = release_pb2.ListWindowsRequest()
    later.start.FromDatetime(NOON + timedelta(days=1))
    assert api.stub.ListWindows(later, metadata=md).windows == []
    broken = release_pb2.ListWindowsRequest()
    broken.end.nanos = -1
    with pytest.raises(grpc.RpcError) as bad:
        api.stub.ListWindows(broken, metadata=md)
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "end is not a valid timestamp" in bad.value.details()
    teams = api.stub.ListTeams(release_pb2.ListTeamsRequest(window=WINDOW), metadata=md)
    assert teams.min_team_size == 5
    assert [(t.name, t.roster_size, t.eligible, t.reason) for t in teams.teams] == [
        ("team-blue", 5, True, ""), ("team-red", 6, True, ""),
        ("team-tiny", 3, False, "team team-tiny has 3 people on the roster; releases need at least 5")]
    with pytest.raises(grpc.RpcError) as caught:
        api.stub.ListTeams(release_pb2.ListTeamsRequest(window="2026-01-01"), metadata=md)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    # The roster changes: a closed window keeps its sizes, the current roster shows the new ones.
    api.chorus.import_roster([(f"user-new-{i}", "team-new") for i in range(7)], actor="test")
    assert [t.name for t in api.stub.ListTeams(release_pb2.ListTeamsRequest(window=WINDOW),
                                               metadata=md).teams] == ["team-blue", "team-red", "team-tiny"]
    current = api.stub.ListTeams(release_pb2.ListTeamsRequest(), metadata=md).teams
    assert [(t.name, t.roster_size, t.eligible) for t in current] == [("team-new", 7, True)]


def test_release_needs_the_analyst_role(api: Api) -> None:
    secret, _ = api.chorus.tokens.create(Role.INGEST, "tool-1", api.chorus.clock.now(), actor="test")
    with pytest.raises(grpc.RpcError) as caught:
        api.stub.Release(release_pb2.ReleaseRequest(window=WINDOW),
                         metadata=(("authorization", f"Bearer {secret}"),))
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert q(api.chorus, "SELECT COUNT(*) FROM releases") == [(0,)]


def test_a_charge_that_loses_a_race_refuses_the_whole_request(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another replica spends the budget between our check and our charge: nothing is released,
    and the error names what this request needed."""
    real_check = steps.check_spending

    def check_then_lose_the_race(tx, request, selection, snapshot):  # type: ignore[no-untyped-def]
        real_check(tx, request, selection, snapshot)
        tx.execute("UPDATE budgets SET spent_micros = cap_micros - 100000 WHERE window_id = ? AND team = ?",
                   (WINDOW, "team-red"))

    monkeypatch.setattr(steps, "check_spending", check_then_lose_the_race)
    before = state(api.chorus)
    with pytest.raises(grpc.RpcError) as caught:
        api.release(teams=("team-red",), metrics=("ai.requests",), statistics=((SUM, "0.3"), (COUNT, "0.3")))
    code, message = error(caught.value)
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "team team-red requested epsilon 0.6 but has 0.1 left of 1" in message
    assert state(api.chorus) == before  # the simulated concurrent spend rolled back with us
