"""The organisation tree: org paths on the roster, releases at any node, k per node, consistency."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from typer.testing import CliRunner

from chorus.server.cli import app
from chorus.server.domain import roster
from chorus.server.domain.ledger import read_entries
from chorus.server.domain.release import snapshot, steps
from chorus.server.model import hierarchy
from chorus.server.model.roles import Role
from chorus.server.privacy.epsilon import Epsilon
from chorus.server.root import Chorus
from chorus.server.verifier import verify
from chorus.v1 import common_pb2, release_pb2

from .._race import run_together
from .._status import detail
from .conftest import WINDOW, Api, contribute

SUM, COUNT, ADOPTION = common_pb2.STATISTIC_SUM, common_pb2.STATISTIC_COUNT, common_pb2.STATISTIC_ADOPTION
ACTIVE = common_pb2.STATISTIC_ACTIVE
#: team -> (org path, roster size). k = 5: team-small, team-tiny, ops-1 and ops-2 are below it,
#: and org legal (4 people) too; ops-1 and ops-2 together hold 6.
COMPANY = {"team-a": ("engineering/platform", 6), "team-b": ("engineering/platform", 5),
           "team-small": ("engineering", 3), "team-c": ("sales", 7), "team-tiny": ("sales", 2),
           "ops-1": ("ops", 3), "ops-2": ("ops", 3), "team-law": ("legal", 4), "team-flat": ("", 5)}


def rows() -> list[tuple[str, str]]:
    return [(f"user-{team}-{i}", team) for team, (_, size) in COMPANY.items() for i in range(size)]


def orgs() -> dict[str, str]:
    return {team: org for team, (org, _) in COMPANY.items() if org}


def q(chorus: Chorus, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    return chorus.db.run(lambda tx: tx.query(sql, params), name="test")


def payloads(chorus: Chorus, kind: str) -> list[dict[str, Any]]:
    return [json.loads(p) for (p,) in q(chorus, "SELECT payload FROM ledger WHERE kind = ? ORDER BY seq", (kind,))]


def budgets(chorus: Chorus) -> dict[str, Epsilon]:
    return {t: Epsilon(s) for t, s in q(chorus, "SELECT team, spent_micros FROM budgets WHERE window_id = ?",
                                        (WINDOW,))}


@pytest.fixture
def company(make_chorus: Callable[..., Chorus]) -> Chorus:
    """Everyone active (ai.tokens 1000 each), the window closed with the tree above."""
    chorus = make_chorus()
    chorus.import_roster(rows(), actor="test", orgs=orgs())
    contribute(chorus, *((user, "ai.tokens", 1_000) for user, _ in rows()))
    chorus.close_window(WINDOW, actor="test")
    return chorus


@pytest.fixture
def api(company: Chorus, make_api: Callable[[Chorus], Api]) -> Api:
    return make_api(company)


def node_release(api: Api, *nodes: str, teams: tuple[str, ...] = (), statistic: int = COUNT,
                 epsilon: str = "") -> release_pb2.ReleaseResponse:
    return api.stub.Release(release_pb2.ReleaseRequest(
        window=WINDOW, nodes=nodes, teams=teams, metrics=["ai.tokens"],
        statistics=[release_pb2.StatisticRequest(statistic=statistic, epsilon=epsilon)]),
        metadata=api.metadata, timeout=60)


# -- roster ---------------------------------------------------------------------------------------

def test_the_org_column_gives_each_team_its_org_path() -> None:
    text = "user,team,org\nu1,a, engineering / platform \nu2,a,engineering/platform\nu3,b,\n"
    assert roster.parse_csv(text) == ([("u1", "a"), ("u2", "a"), ("u3", "b")], {"a": "engineering/platform"})
    assert roster.parse_csv("user,team\nu1,a\n") == ([("u1", "a")], {})


@pytest.mark.parametrize(("text", "message"), [
    ("user,team,org\nu1,a,eng\nu2,a,sales\n",
     "line 3: team 'a' is in org 'sales' here but in 'eng' at line 2; a team belongs to one org"),
    ("user,team,org\nu1,a,eng//x\n", "line 2: org path 'eng//x' has an empty segment; write e.g. engineering/platform"),
    ("user,team,org\nu1,eng,\nu2,b,eng\n",
     "team 'eng' has the name of an org (or of the company, '/'); a name must be either a team or an org"),
    ("user,team\nu1,/\n", "team '/' has the name of an org (or of the company, '/'); a name must be either a "
                          "team or an org"),
])
def test_a_roster_whose_tree_is_ambiguous_is_refused_by_line(text: str, message: str) -> None:
    with pytest.raises(roster.RosterError) as caught:
        roster.parse_csv(text)
    assert str(caught.value) == message


@pytest.mark.slow
def test_the_tree_is_recorded_with_the_import_and_frozen_at_close(company: Chorus, api: Api) -> None:
    imported = payloads(company, "roster_import")
    assert "team_orgs" not in imported[0]  # the flat roster of the fixture: the entry's earlier form
    assert imported[1]["team_orgs"] == orgs()
    assert imported[1]["roster_sha256"] == roster.roster_hash(rows(), orgs())
    closed, = payloads(company, "window_close")
    assert closed["team_orgs"] == orgs()
    company.import_roster(rows(), actor="test", orgs={**orgs(), "team-a": "sales"})  # after close
    listed = api.stub.ListTeams(release_pb2.ListTeamsRequest(window=WINDOW), metadata=api.metadata)
    assert {t.name: t.org for t in listed.teams} == {t: o for t, (o, _) in COMPANY.items()}
    current = api.stub.ListTeams(release_pb2.ListTeamsRequest(), metadata=api.metadata)
    assert {t.name: t.org for t in current.teams}["team-a"] == "sales"


# -- budget ---------------------------------------------------------------------------------------

@pytest.mark.slow
def test_a_node_release_charges_its_epsilon_to_every_team_window_below_it(api: Api) -> None:
    reply = node_release(api, "engineering", epsilon="0.2")
    node, = reply.teams
    assert (node.team, node.level, node.outcome) == ("engineering", release_pb2.NODE_LEVEL_ORG,
                                                     release_pb2.TEAM_OUTCOME_RELEASED)
    assert list(node.teams_charged) == ["team-a", "team-b", "team-small"]
    assert node.roster_size == 14 and node.epsilon_charged == "0.2" and node.budget_remaining == "0.8"
    spent = budgets(api.chorus)
    assert {t: str(e) for t, e in spent.items() if e.micros} == {"team-a": "0.2", "team-b": "0.2",
                                                                  "team-small": "0.2"}
    entry, = payloads(api.chorus, "release")
    assert "team" not in entry
    assert (entry["node"], entry["level"], entry["teams"]) == ("engineering", "org",
                                                               ["team-a", "team-b", "team-small"])
    assert entry["budget_spent_after"] == {"team-a": "0.2", "team-b": "0.2", "team-small": "0.2"}
    again = node_release(api, "engineering", epsilon="0.2")
    assert again.teams[0].epsilon_charged == "0" and again.teams[0].estimates[0].cached
    assert budgets(api.chorus) == spent


@pytest.mark.slow
def test_the_company_is_a_node_and_loose_org_paths_are_understood(api: Api) -> None:
    reply = node_release(api, "/", " engineering / platform/")
    assert [(t.team, t.level) for t in reply.teams] == [("/", release_pb2.NODE_LEVEL_COMPANY),
                                                         ("engineering/platform", release_pb2.NODE_LEVEL_ORG)]
    assert reply.teams[0].roster_size == sum(size for _, size in COMPANY.values())
    assert list(reply.teams[0].teams_charged) == sorted(COMPANY)
    assert budgets(api.chorus)["team-a"] == Epsilon.parse("0.1")  # the company and its org
    with pytest.raises(grpc.RpcError) as caught:
        node_release(api, "marketing")
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert caught.value.details().startswith("node 'marketing' is not in the organisation tree of window "
                                             f"{WINDOW}: name an org path, '/' for the company, or a team; "
                                             "its orgs are engineering, legal, ops, sales, engineering/platform")


@pytest.mark.slow
def test_a_node_release_is_refused_whole_when_one_team_below_lacks_budget(api: Api) -> None:
    node_release(api, teams=("team-b",), statistic=SUM, epsilon="0.9")
    before = (q(api.chorus, "SELECT * FROM budgets ORDER BY team"), q(api.chorus, "SELECT * FROM releases"),
              q(api.chorus, "SELECT seq FROM ledger"))
    with pytest.raises(grpc.RpcError) as caught:
        node_release(api, "engineering", epsilon="0.2")
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    quota = detail(caught.value, error_details_pb2.QuotaFailure)
    assert [v.subject for v in quota.violations] == [f"teams/team-b/windows/{WINDOW}"]
    assert (q(api.chorus, "SELECT * FROM budgets ORDER BY team"), q(api.chorus, "SELECT * FROM releases"),
            q(api.chorus, "SELECT seq FROM ledger")) == before
    # A team and its org in one request need both charges from the team.
    with pytest.raises(grpc.RpcError) as caught:
        node_release(api, "sales", teams=("team-c",), epsilon="0.6")
    quota = detail(caught.value, error_details_pb2.QuotaFailure)
    assert [(v.subject, v.description) for v in quota.violations] == [
        (f"teams/team-c/windows/{WINDOW}", "requested epsilon 1.2, remaining 1 of 1")]


# -- k per node -----------------------------------------------------------------------------------

@pytest.mark.slow
def test_a_node_below_k_is_suppressed_and_its_people_count_in_every_ancestor(api: Api) -> None:
    legal, = node_release(api, "legal").teams
    assert legal.outcome == release_pb2.TEAM_OUTCOME_SUPPRESSED and legal.level == release_pb2.NODE_LEVEL_ORG
    assert legal.message == "org legal has 4 people on the roster; releases need at least 5"
    assert not any(e.micros for e in budgets(api.chorus).values())
    inputs = api.chorus.db.read(
        lambda tx: steps.inputs(tx, snapshot.read(tx, WINDOW), ["/", "engineering", "sales"])[0], name="test")
    everyone = sum(size for _, size in COMPANY.values())
    assert inputs[("/", "ai.tokens", "count")] == everyone  # team-law, team-tiny, ops-1, ops-2 included
    assert inputs[("/", "ai.tokens", "sum")] == 1_000 * everyone
    assert inputs[("engineering", "ai.tokens", "count")] == 14  # team-small's 3 inside their org
    assert inputs[("sales", "", "active")] == 9  # team-tiny's 2


# -- consistency ----------------------------------------------------------------------------------

@pytest.mark.slow
def test_releases_at_several_levels_come_back_consistent_and_identical_when_cached(api: Api) -> None:
    everything = ("/", "engineering", "engineering/platform", "sales", "ops", "legal")
    first = node_release(api, *everything, teams=tuple(sorted(COMPANY)))
    by_name = {t.team: t for t in first.teams}
    value = {name: t.estimates[0].consistent.value for name, t in by_name.items()
             if t.outcome == release_pb2.TEAM_OUTCOME_RELEASED}
    assert all(t.estimates[0].HasField("consistent") for t in by_name.values() if t.estimates)
    remainders = {(r.parent, tuple(r.children)): r for r in first.remainders}
    # ops-1 and ops-2 (below k) hold 6 people together: shown under ops; team-small (3) under
    # engineering, team-tiny (2) under sales and legal (4) under the company are not.
    assert set(remainders) == {("ops", ("ops-1", "ops-2"))}
    assert remainders[("ops", ("ops-1", "ops-2"))].roster_size == 6
    ops_rest = remainders[("ops", ("ops-1", "ops-2"))].estimate.value
    assert math.isclose(value["ops"], ops_rest, abs_tol=1e-9)  # ops released, no child released alone
    assert math.isclose(value["engineering/platform"], value["team-a"] + value["team-b"], abs_tol=1e-9)
    for name, t in by_name.items():
        if t.estimates:
            e = t.estimates[0]
            assert e.consistent.ci95 <= e.ci95 + 1e-9, name  # never wider than the raw release's
    again = node_release(api, *everything, teams=tuple(sorted(COMPANY)))
    assert all(e.cached for t in again.teams for e in t.estimates)
    assert [[e.consistent for e in t.estimates] for t in again.teams] == \
           [[e.consistent for e in t.estimates] for t in first.teams]
    assert list(again.remainders) == list(first.remainders)


@pytest.mark.slow
def test_a_single_level_has_no_consistent_estimate(api: Api) -> None:
    reply = node_release(api, teams=("team-a", "team-b"))
    assert not any(e.HasField("consistent") for t in reply.teams for e in t.estimates)
    assert not reply.remainders


# -- verifier -------------------------------------------------------------------------------------

def _verified(chorus: Chorus) -> verify.Report:
    entries = chorus.db.run(lambda tx: read_entries(tx, 1, 10_000), name="t")
    return verify.verify_lines((verify.export_line(e) for e in entries), chorus.ledger.signer.public_key)


@pytest.mark.slow
def test_the_verifier_recomputes_every_team_spend_from_node_releases(api: Api) -> None:
    node_release(api, "/", "engineering", teams=("team-a",), statistic=ADOPTION, epsilon="0.3")
    report = _verified(api.chorus)
    assert report.ok, [str(v) for v in report.violations]
    assert {team: t.spent for (_, team), t in report.totals.items()} == budgets(api.chorus)
    assert report.totals[(WINDOW, "team-a")].spent == Epsilon.parse("0.9")


@pytest.mark.slow
def test_the_verifier_flags_a_node_release_that_skips_a_team(api: Api) -> None:
    node_release(api, "engineering", epsilon="0.2")
    entry, = payloads(api.chorus, "release")
    forged = {**entry, "release_id": "f" * 32, "statistic": "sum", "sensitivity": 200000, "scale": 4e6,
              "teams": ["team-a", "team-b"], "budget_spent_after": {"team-a": "0.4", "team-b": "0.4"}}
    api.chorus.db.run(lambda tx: api.chorus.ledger.append(tx, "release", forged, api.chorus.clock.now()),
                      name="forge")
    violations = _verified(api.chorus).violations
    assert [v.rule for v in violations] == ["node", "budget_spent"]
    assert "teams charged ['team-a', 'team-b'] differ from the frozen tree's 'org' and ['team-a', 'team-b', " \
           "'team-small']" in violations[0].message
    assert violations[1].message.startswith("stated budget_spent_after None of team-small differs")


@pytest.mark.slow
def test_the_verifier_flags_a_node_release_marked_as_the_plans_when_the_plan_has_no_org_entry(api: Api) -> None:
    node_release(api, "engineering", epsilon="0.2")
    entry, = payloads(api.chorus, "release")
    # A copy of the genuine entry (so also a double release), marked as the plan's.
    forged = {**entry, "release_id": "f" * 32, "plan": True,
              "budget_spent_after": {t: "0.4" for t in entry["teams"]}}
    api.chorus.db.run(lambda tx: api.chorus.ledger.append(tx, "release", forged, api.chorus.clock.now()),
                      name="forge")
    violations = _verified(api.chorus).violations
    assert [v.rule for v in violations] == ["double_release", "plan"]
    assert "is not in the release plan frozen for its window at level org" in violations[1].message


@pytest.mark.slow
def test_the_verifier_flags_a_node_release_for_a_window_never_opened(api: Api) -> None:
    node_release(api, "engineering", epsilon="0.2")
    entry, = payloads(api.chorus, "release")
    forged = {**entry, "release_id": "f" * 32, "window": "2026-01-01"}
    api.chorus.db.run(lambda tx: api.chorus.ledger.append(tx, "release", forged, api.chorus.clock.now()),
                      name="forge")
    violations = _verified(api.chorus).violations
    assert [v.rule for v in violations] == ["window"]
    assert "for engineering in 2026-01-01 before any window_open entry for 2026-01-01" in violations[0].message


def test_hierarchy_levels_and_sizes() -> None:
    tree = hierarchy.Hierarchy.of((t, o, n) for t, (o, n) in COMPANY.items())
    assert tree.parent("team-a") == "engineering/platform" and tree.parent("engineering/platform") == "engineering"
    assert tree.parent("engineering") == hierarchy.COMPANY and tree.parent("team-flat") == hierarchy.COMPANY
    assert [tree.level(n) for n in ("/", "engineering", "team-a")] == ["company", "org", "team"]
    assert tree.size("engineering") == 14 and tree.size("/") == 38
    assert tree.org_nodes() == ["engineering", "legal", "ops", "sales", "engineering/platform"]


# -- chorus report --------------------------------------------------------------------------------

def _cli(api: Api, *args: str) -> str:
    """`chorus report --release` (repeats are answered from storage)."""
    secret, _ = api.chorus.tokens.create(Role.ANALYST, f"cli-{len(args)}-{args[-1]}", api.chorus.clock.now(),
                                         actor="test")
    result = CliRunner().invoke(app, ["report", "--server", api.server.address, "--token", secret,
                                      "--window", WINDOW, "--metric", "ai.tokens", "--release", "--yes", *args],
                                env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.slow
def test_report_level_org_without_release_reads_and_prices_the_orgs(api: Api) -> None:
    secret, _ = api.chorus.tokens.create(Role.ANALYST, "cli-read", api.chorus.clock.now(), actor="test")
    before = budgets(api.chorus)
    result = CliRunner().invoke(app, ["report", "--server", api.server.address, "--token", secret, "--window",
                                      WINDOW, "--metric", "ai.tokens", "--level", "org", "--statistic", "count",
                                      "--epsilon", "0.1", "--format", "json"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    records = json.loads(result.output)
    priced = {r["team"]: r["epsilon"] for r in records if r["outcome"] == "not released" and r["statistic"] == "count"}
    assert priced == dict.fromkeys(("engineering", "ops", "sales", "engineering/platform"), "0.1")
    assert budgets(api.chorus) == before  # reading spends nothing


@pytest.mark.slow
def test_report_level_org_releases_every_org_and_names_the_teams_charged(api: Api) -> None:
    records = json.loads(_cli(api, "--level", "org", "--statistic", "count", "--format", "json"))
    nodes = {r["team"]: r for r in records if r["outcome"] == "released" and r["statistic"] == "count"}
    assert set(nodes) == {"engineering", "ops", "sales", "engineering/platform"}
    assert {r["team"] for r in records if r["outcome"] == "suppressed"} == {"legal"}
    assert nodes["ops"]["level"] == "org" and nodes["ops"]["teams_charged"] == ["ops-1", "ops-2"]
    # engineering and engineering/platform are nested: both consistent, the org the sum of its parts
    assert nodes["engineering/platform"]["consistent_value"] is not None
    # nothing released above or below ops: its consistent estimate is its release
    ops = nodes["ops"]
    assert max(0.0, ops["consistent_value"]) == ops["value"] and ops["consistent_ci95"] <= ops["ci95"]
    # what was asked (count) and nothing else (no adoption added), twice (two orgs above team-a)
    assert budgets(api.chorus)["team-a"] == Epsilon.parse("0.1")
    assert not [r for r in records if r["statistic"] in ("active", "adoption")]


@pytest.mark.slow
def test_report_node_shows_consistent_estimates_and_the_other_small_teams(api: Api) -> None:
    _cli(api, "--node", "ops", "--statistic", "count")  # ops alone: no consistency yet
    out = _cli(api, "--node", "/", "--node", "ops", "--team", "team-flat", "--statistic", "count")
    assert "count per node" in out and "†" in out
    assert "Other teams (no release of their own) under ops: count of ai.tokens" in out
    assert "(ops-1, ops-2: 6 people)" in out
    assert "consistent across the levels of the organisation tree" in out
    records = json.loads(_cli(api, "--node", "ops", "--statistic", "count", "--format", "json"))
    other, = [r for r in records if r["outcome"] == "remainder" and r["statistic"] == "count"]
    assert (other["parent"], other["children"], other["roster_size"]) == ("ops", ["ops-1", "ops-2"], 6)


@pytest.mark.slow
def test_histograms_are_not_made_consistent(api: Api) -> None:
    reply = node_release(api, "/", "engineering", statistic=common_pb2.STATISTIC_HISTOGRAM)
    assert all(t.estimates and not t.estimates[0].HasField("consistent") for t in reply.teams)
    counts = node_release(api, "/", "engineering")  # the count at both levels: consistent
    assert all(t.estimates[0].HasField("consistent") for t in counts.teams)


@pytest.mark.slow
def test_concurrent_team_and_org_releases_never_overspend_a_team_window(api: Api) -> None:
    """24 requests at once, each charging team-a 0.1 of its cap of 1: half name engineering (also
    charging team-b and team-small), half team-a. Exactly ten pass; every charge is in the ledger."""
    calls = []
    for metric in ("ai.tokens", "ai.requests", "ai.suggestions_accepted", "ai.tasks_completed"):
        for statistic in (SUM, COUNT, common_pb2.STATISTIC_HISTOGRAM):
            for nodes, teams in ((("engineering",), ()), ((), ("team-a",))):
                calls.append(lambda n=nodes, t=teams, m=metric, s=statistic: api.stub.Release(
                    release_pb2.ReleaseRequest(window=WINDOW, nodes=n, teams=t, metrics=[m], statistics=[
                        release_pb2.StatisticRequest(statistic=s, epsilon="0.1")]), metadata=api.metadata,
                    timeout=60))
    results = run_together(calls)
    ok = [r for r in results if isinstance(r, release_pb2.ReleaseResponse)]
    assert len(ok) == 10
    assert all(r.code() == grpc.StatusCode.RESOURCE_EXHAUSTED for r in results if isinstance(r, grpc.RpcError))
    spent = budgets(api.chorus)
    nodes = sum(1 for r in ok if r.teams[0].team == "engineering")
    assert spent["team-a"] == Epsilon.parse("1")
    assert spent["team-b"] == spent["team-small"] == Epsilon(100_000 * nodes)
    report = _verified(api.chorus)
    assert report.ok, [str(v) for v in report.violations]
    assert {team: t.spent for (_, team), t in report.totals.items()} == spent


@pytest.mark.slow
def test_the_readme_org_example_releases_what_was_asked_and_names_orgs(api: Api) -> None:
    """`chorus report --level org --statistic sum --metric ai.tokens --release`: a sum at every org and
    nothing else; a refusal names each org as an org."""
    secret, _ = api.chorus.tokens.create(Role.ANALYST, "readme-org", api.chorus.clock.now(), actor="test")
    base = ["report", "--server", api.server.address, "--token", secret, "--window", WINDOW, "--level", "org",
            "--statistic", "sum", "--metric", "ai.tokens", "--release", "--yes"]
    over = CliRunner().invoke(app, [*base, "--epsilon", "0.9"], env={"COLUMNS": "300"})
    assert over.exit_code == 8, over.output
    words = " ".join(over.output.split())
    assert (f"team team-a in {WINDOW} would pay epsilon 1.8 in all (for orgs engineering and engineering/platform) "
            "but has 1 left") in words and "team engineering" not in words
    assert "RESOURCE_EXHAUSTED, not sent" in words  # refused here, before anything was sent
    ops = [a for a in base if a not in ("--level", "org")] + ["--node", "ops", "--epsilon", "0.6"]
    assert CliRunner().invoke(app, ops).exit_code == 0
    one = CliRunner().invoke(app, [*ops, "--statistic", "count"], env={"COLUMNS": "300"})
    assert (f"org ops in {WINDOW} needs epsilon 0.6 but has 0.4 left (the least any team below it has) of 1"
            in " ".join(one.output.split()))
    assert budgets(api.chorus)["team-a"] == Epsilon.parse("0")
    done = CliRunner().invoke(app, [*base, "--format", "json"])
    assert done.exit_code == 0, done.output
    records = json.loads(done.stdout)
    assert {r["statistic"] for r in records if r["outcome"] == "released"} == {"sum"}
    assert budgets(api.chorus)["team-a"] == Epsilon.parse("0.1")  # one sum at each of its two orgs
