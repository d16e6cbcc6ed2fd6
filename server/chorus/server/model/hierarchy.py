"""The organisation tree: the company, orgs at any depth, and teams as leaves. Public.

Each team has an org path (`engineering/platform`, segments separated by `/`; empty: the team
sits directly under the company), given per row of the roster. Every prefix of a path is an org
(`engineering` is the parent of `engineering/platform`), and the company is the root, named
`COMPANY` ("/").

Invariants:

* Node names are one namespace: a team's name is never an org path nor `/` (the roster import
  refuses it), so a name alone says which node it is, in requests, releases and the ledger.
* The tree of a closed window is frozen at close with its roster sizes (`team_windows.org`)
  and recorded in the window_close ledger entry (`team_orgs`); a node's size is the sum of
  its teams' roster sizes, so every person is counted in their team and every ancestor of it.
* Like team names and sizes, the tree is public by policy (docs/privacy.md): it describes
  the company, not anyone's usage.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

#: The root: the whole company.
COMPANY = "/"
TEAM, ORG, ROOT = "team", "org", "company"
MAX_DEPTH = 8


class HierarchyError(ValueError):
    """A malformed org path or a name used for two nodes; the message names the value."""


def org_path(value: str) -> str:
    """The org path, validated: empty, or `/`-separated non-empty segments (spaces around them
    removed), at most MAX_DEPTH deep."""
    if not value.strip():
        return ""
    segments = [s.strip() for s in value.strip().split("/")]
    if any(not s for s in segments):
        raise HierarchyError(f"org path {value!r} has an empty segment; write e.g. engineering/platform")
    if len(segments) > MAX_DEPTH:
        raise HierarchyError(f"org path {value!r} is {len(segments)} levels deep; at most {MAX_DEPTH}")
    return "/".join(segments)


def ancestors(org: str) -> list[str]:
    """Every org an org path lies in, outermost first: a/b/c -> a, a/b, a/b/c."""
    if not org:
        return []
    segments = org.split("/")
    return ["/".join(segments[:i]) for i in range(1, len(segments) + 1)]


@dataclass(frozen=True, slots=True)
class Hierarchy:
    """The tree of one window (or of the current roster): each team's org and roster size."""

    orgs: Mapping[str, str]
    sizes: Mapping[str, int]
    _parents: Mapping[str, str] = field(repr=False)
    _teams_below: Mapping[str, tuple[str, ...]] = field(repr=False)

    @classmethod
    def of(cls, teams: Iterable[tuple[str, str, int]]) -> Hierarchy:
        """From (team, org path, roster size); raises HierarchyError when a name is two nodes."""
        orgs: dict[str, str] = {}
        sizes: dict[str, int] = {}
        parents: dict[str, str] = {}
        below: dict[str, list[str]] = {COMPANY: []}
        for team, org, size in sorted(teams):
            orgs[team], sizes[team] = org, size
            chain = ancestors(org)
            for i, node in enumerate(chain):
                parents[node] = chain[i - 1] if i else COMPANY
                below.setdefault(node, []).append(team)
            parents[team] = chain[-1] if chain else COMPANY
            below[COMPANY].append(team)
        clash = sorted((set(orgs) & set(below)) | ({COMPANY} & set(orgs)))
        if clash:
            raise HierarchyError(f"team {clash[0]!r} has the name of an org (or of the company, "
                                 f"{COMPANY!r}); a name must be either a team or an org")
        return cls(MappingProxyType(orgs), MappingProxyType(sizes), MappingProxyType(parents),
                   MappingProxyType({n: tuple(ts) for n, ts in below.items()}))

    def __contains__(self, node: object) -> bool:
        return node in self.orgs or node in self._teams_below

    def level(self, node: str) -> str:
        return ROOT if node == COMPANY else TEAM if node in self.orgs else ORG

    def parent(self, node: str) -> str | None:
        return self._parents.get(node)

    def teams_below(self, node: str) -> tuple[str, ...]:
        """The teams a node's releases touch, by name: a team itself, or every team under an org."""
        return (node,) if node in self.orgs else self._teams_below[node]

    def size(self, node: str) -> int:
        return sum(self.sizes[t] for t in self.teams_below(node))

    def children(self, node: str) -> list[str]:
        """The orgs, then the teams, directly below a node, each by name."""
        below = [n for n, p in self._parents.items() if p == node]
        return sorted(below, key=lambda n: (n in self.orgs, n))

    def org_nodes(self) -> list[str]:
        """Every org, parents before children."""
        return sorted((n for n in self._teams_below if n != COMPANY), key=lambda n: (n.count("/"), n))

    def nodes(self) -> list[tuple[str, str | None]]:
        """(node, parent) for the company, every org and every team."""
        out: list[tuple[str, str | None]] = [(COMPANY, None)]
        return out + [(n, self._parents[n]) for n in self.org_nodes()] + [(t, self._parents[t]) for t in self.orgs]

    @property
    def flat(self) -> bool:
        """True when no team names an org: every team sits directly under the company."""
        return not any(self.orgs.values())


def describe(node: str, level: str) -> str:
    """How a node is named in messages: `team x`, `org engineering`, `the company`."""
    return "the company" if level == ROOT else f"{level} {node}"
