"""What a release would charge, read from the validate_only answer of the very same request.

The CLI's `report --release` and the dashboard's Release more form both show this before they
send anything, and both refuse an overspend here, so the one place that words a cost names a
team as a team, an org as an org and the company as the company. The amounts are the
server's own (`epsilon_required`, exact decimals): nothing is recomputed here. A node's
charge goes to every team-window below it (`teams_charged`), so a team under two requested
nodes pays for both, and `per_team` adds them up.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from chorus.server.model import hierarchy
from chorus.server.privacy.epsilon import Epsilon
from chorus.v1 import release_pb2

__all__ = ["Charge", "charges", "describe", "level_of", "naming", "overspent", "per_team", "summary"]

_LEVELS = {release_pb2.NODE_LEVEL_ORG: hierarchy.ORG, release_pb2.NODE_LEVEL_COMPANY: hierarchy.ROOT}


def level_of(node: release_pb2.TeamRelease) -> str:
    """`team`, `org` or `company` (hierarchy's words), from the answer's own level."""
    return _LEVELS.get(node.level, hierarchy.TEAM)


def describe(node: release_pb2.TeamRelease) -> str:
    """`team x`, `org engineering` or `the company`."""
    return hierarchy.describe(node.team, level_of(node))


def naming(nodes: Iterable[release_pb2.TeamRelease | tuple[str, str]]) -> str:
    """Several teams or nodes (answers, or (name, level) pairs) in words: `team red`, `teams red
    and blue`, `12 teams, 3 orgs and the company`."""
    by_level: dict[str, list[str]] = {}
    for node in nodes:
        name, level = node if isinstance(node, tuple) else (node.team, level_of(node))
        by_level.setdefault(level, []).append(name)
    parts = []
    for level in (hierarchy.TEAM, hierarchy.ORG, hierarchy.ROOT):
        names = by_level.get(level, [])
        if level == hierarchy.ROOT and names:
            parts.append("the company")
        elif len(names) == 1:
            parts.append(f"{level} {names[0]}")
        elif 1 < len(names) <= 3:
            parts.append(f"{level}s {', '.join(names[:-1])} and {names[-1]}")
        elif names:
            parts.append(f"{len(names)} {level}s")
    return ", ".join(parts[:-1]) + (" and " if len(parts) > 1 else "") + (parts[-1] if parts else "")


@dataclass(frozen=True, slots=True)
class Charge:
    """What releasing the request would charge at one team or node, in one window."""

    window: str
    node: release_pb2.TeamRelease
    epsilon: Epsilon
    #: The team-windows that pay `epsilon` each: the team itself, or every team below the node.
    teams: tuple[str, ...]

    @property
    def unit(self) -> str:
        """The unit of the amounts (epsilon, or rho for a discrete-Gaussian window); old servers say none."""
        return self.node.unit or "epsilon"

    @property
    def over(self) -> bool:
        return self.epsilon > Epsilon.parse(self.node.budget_remaining)

    def refusal(self) -> str:
        n = self.node
        who = describe(n)
        where = "" if not n.teams_charged else " (the least any team below it has)"
        return (f"{who} in {self.window} needs {self.unit} {self.epsilon} but has {n.budget_remaining} left"
                f"{where} of {n.budget_cap}")


def charges(previews: Iterable[release_pb2.ReleaseResponse]) -> list[Charge]:
    """Every team or node a release of the previewed request would charge something."""
    out = []
    for reply in previews:
        for node in reply.teams:
            if node.outcome != release_pb2.TEAM_OUTCOME_RELEASED or not node.epsilon_required:
                continue
            need = Epsilon.parse(node.epsilon_required)
            if need.micros:
                out.append(Charge(reply.window, node, need, tuple(node.teams_charged) or (node.team,)))
    return out


def overspent(found: list[Charge]) -> list[str]:
    """The refusals, in words, of every charge its budget cannot pay for, then of every team that
    several nodes would charge more, together, than the least budget left under them."""
    out = [c.refusal() for c in found if c.over]
    payers: dict[tuple[str, str], list[Charge]] = {}
    for c in found:
        for team in c.teams:
            payers.setdefault((c.window, team), []).append(c)
    for (window, team), paying in payers.items():
        if len(paying) < 2 or any(c.over for c in paying):
            continue
        total = sum((c.epsilon for c in paying), Epsilon(0))
        left = min((Epsilon.parse(c.node.budget_remaining) for c in paying), key=lambda e: e.micros)
        if total > left:
            out.append(f"team {team} in {window} would pay {paying[0].unit} {total} in all (for "
                       f"{naming(c.node for c in paying)}) but has {left} left")
    return out


def per_team(found: Iterable[Charge]) -> dict[tuple[str, str], Epsilon]:
    """(window, team) -> the total a release would charge that team-window."""
    out: dict[tuple[str, str], Epsilon] = {}
    for c in found:
        for team in c.teams:
            out[(c.window, team)] = out.get((c.window, team), Epsilon(0)) + c.epsilon
    return out


def summary(found: list[Charge]) -> str:
    """One sentence: what would be charged, and to how many team-window budgets."""
    totals = per_team(found)
    if not totals:
        return "Nothing would be charged: everything asked for is already released."
    amounts = sorted(totals.values(), key=lambda e: e.micros)
    each = str(amounts[0]) if amounts[0] == amounts[-1] else f"{amounts[0]} to {amounts[-1]}"
    unit = found[0].unit
    where = "; ".join(f"{describe(c.node)} ({c.window}) {c.unit} {c.epsilon}"
                      + (f" charged to each of its {len(c.teams)} teams" if c.node.teams_charged else "")
                      for c in found)
    return (f"This release spends {unit} {each} of each of {len(totals)} team-window budget(s), once and "
            f"for good: {where}.")
