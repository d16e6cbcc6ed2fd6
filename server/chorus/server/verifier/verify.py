"""The offline ledger verifier: trusts nothing the server says, only the file and the public key.

Input is an export in JSON Lines (one entry per line: body, hash, signature; the body is the
exact RFC 8785 text that was hashed, see `chorus.server.domain.ledger` and docs/audit.md) and the
officer's copy of the server's Ed25519 public key. The verifier recomputes everything it can:

* the chain: each body in canonical form, sequence numbers contiguous from 1, each prev_hash
  equal to the previous entry's hash, each hash recomputed over the body, each signature checked;
* each release: its charge recomputed with OpenDP from mechanism, sensitivity and scale
  (epsilon for the discrete Laplace, rho for the discrete Gaussian; a stated charge below that
  is a violation), its mechanism the one frozen in its window's policy, its sensitivity against the bound frozen in
  its window's window_open entry, its window opened and closed before it, its team in that
  close with at least the frozen k people, its time within the frozen retention, its
  statistic not released before; a release marked `"plan": true` against the release plan
  frozen in that window_open entry (a planned statistic and metric, charged at most the
  planned epsilon);
* each release at a node of the organisation tree (an org or the company): the node, its
  level and the teams charged against the tree frozen in its window_close entry (`team_orgs`),
  the node's roster size against k, and its epsilon charged to every team below it;
* each team-window: the sum of charges (its own releases and those of every node above it)
  against the frozen cap and against the server's stated running total;
* the yearly bound: over any twelve months (54 weekly or 367 daily windows from each window's
  start), the sum per window of the most any one team-window spent (a person may move between
  teams), as pure epsilon, rho, and (epsilon, delta) at `budget.DELTA` (`Report.yearly`);
* optionally a head pinned from an earlier verification, which catches a truncated tail or
  a rewritten history even when everything was re-signed consistently.

Pure functions: no server, no database, no clock.
"""

from __future__ import annotations

import functools
import json
import math
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

import opendp.prelude as dp
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from chorus.server.model import hierarchy
from chorus.server.model.calendar import parse_window_id
from chorus.server.model.ledger_format import GENESIS_HASH, entry_hash, format_time, parse_body, policy_sha256
from chorus.server.model.policy import Policy, plan_parts
from chorus.server.model.statistics import ACTIVE, Statistic
from chorus.server.model.statistics import NOISY as NOISY_STATISTICS
from chorus.server.privacy.budget import DELTA, Budget
from chorus.server.privacy.epsilon import ZERO, Epsilon, Loss, Rho
from chorus.server.privacy.mechanisms import approx_dp

dp.enable_features("contrib")

MECHANISM = "discrete_laplace"
GAUSSIAN = "discrete_gaussian"
#: Each mechanism's unit of charge: the verifier's own copy of `privacy.mechanisms.UNITS`, kept on
#: purpose (like its sensitivity rule in `check_statistic`), so that a bug in the server's cannot
#: hide from it.
UNITS: dict[str, type[Loss]] = {MECHANISM: Epsilon, GAUSSIAN: Rho}
_LEAP_YEAR = timedelta(days=366)
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_HEX128 = re.compile(r"^[0-9a-f]{128}$")
#: A released value: a decimal integer without leading zeros or plus sign.
_DECIMAL = re.compile(r"^(0|-?[1-9][0-9]*)$")
_HEAD = re.compile(r"^(\d+):([0-9a-f]{64})$")
#: One export line: the entry's body (the exact text hashed), its hash and its signature.
_LINE_FIELDS = {"body": str, "hash": str, "signature": str}
_RELEASE_FIELDS = {"release_id": str, "window": str, "team": str, "metric": str, "statistic": str,
                   "mechanism": str, "sensitivity": int, "scale": (int, float), "epsilon": str,
                   "value": (str, list), "budget_cap": str, "budget_spent_after": str, "by": str}
#: A release at an org or the company: the node and the teams charged instead of a team, and
#: each team's spent-after.
_NODE_RELEASE_FIELDS = {**{k: v for k, v in _RELEASE_FIELDS.items() if k != "team"}, "node": str, "level": str,
                        "teams": list, "budget_spent_after": dict}


class VerifyError(ValueError):
    """The verifier cannot start: unreadable key or malformed pinned head (not a ledger violation)."""


@dataclass(frozen=True, slots=True)
class Head:
    """A ledger position an officer pins: the entry with this seq must have this hash."""

    seq: int
    hash: str

    def __str__(self) -> str:
        return f"{self.seq}:{self.hash}"


@dataclass(frozen=True, slots=True)
class Violation:
    """One broken rule, naming the entry (seq as stated in the file) and its line.

    `line` is None for a finding about the file as a whole (a missing pinned head).
    """

    line: int | None
    seq: int | None
    rule: str
    message: str

    def __str__(self) -> str:
        where = f"entry {self.seq}" if self.seq is not None else "entry ?"
        line = f"line {self.line}" if self.line is not None else "end of file"
        return f"{where} ({line}) [{self.rule}] {self.message}"


@dataclass(slots=True)
class TeamWindowTotal:
    """Budget of one team-window as recomputed from the ledger alone."""

    window: str
    team: str
    cap: Loss
    spent: Loss = ZERO
    releases: int = 0

    @property
    def remaining(self) -> Loss:
        return Budget(self.cap, self.spent).remaining


@dataclass(slots=True)
class Report:
    """The verifier's findings; `ok` only when there is no violation at all."""

    entries: int = 0
    kinds: Counter[str] = field(default_factory=Counter)
    totals: dict[tuple[str, str], TeamWindowTotal] = field(default_factory=dict)
    violations: list[Violation] = field(default_factory=list)
    head: Head | None = None
    #: The worst twelve months for one person, recomputed from the charges (see `yearly_bound`).
    yearly: YearlyBound | None = None

    @property
    def ok(self) -> bool:
        return not self.violations


@dataclass(frozen=True, slots=True)
class YearlyBound:
    """The most one person can have lost over any twelve months of the ledger: per window the
    largest spent of any of its team-windows (whichever team the person was in), summed over the
    windows any twelve months touching the first one can touch, worst such year. Laplace windows add
    up in pure epsilon, Gaussian ones in rho; both are stated together as (epsilon, delta) by
    basic composition: epsilon + the rho's OpenDP conversion at `delta`."""

    first_window: str
    windows: int
    epsilon: Epsilon
    rho: Rho
    approx_epsilon: float
    delta: float


def yearly_bound(totals: Iterable[TeamWindowTotal], delta: float = DELTA) -> YearlyBound | None:
    """The worst twelve months of `totals` (see YearlyBound); None without any team-window."""
    worst: dict[str, Loss] = {}
    for total in totals:
        if total.window not in worst or worst[total.window] < total.spent:
            worst[total.window] = total.spent
    spans = sorted(((parse_window_id(w), w) for w in worst), key=lambda pair: (pair[0].start, pair[1]))
    best: YearlyBound | None = None
    for i, (span, window) in enumerate(spans):
        # Twelve months that touch this window first reach windows starting before its end + 366 days.
        year = [w for later, w in spans[i:] if later.start < span.end + _LEAP_YEAR]
        eps = Epsilon(sum(worst[w].micros for w in year if isinstance(worst[w], Epsilon)))
        rho = Rho(sum(worst[w].micros for w in year if isinstance(worst[w], Rho)))
        bound = YearlyBound(window, len(year), eps, rho, eps.as_float + approx_dp(rho, delta), delta)
        if best is None or bound.approx_epsilon > best.approx_epsilon:
            best = bound
    return best


def parse_head(text: str) -> Head:
    """"SEQ:HASH" as printed by a previous verification."""
    match = _HEAD.match(text.strip())
    if not match or int(match[1]) < 1:
        raise VerifyError(f"expected head {text!r}: must be SEQ:HASH with SEQ >= 1 and a 64-digit "
                          "lowercase hex SHA-256")
    return Head(int(match[1]), match[2])


def load_public_key(pem: bytes) -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(pem)
    except ValueError as exc:
        raise VerifyError(f"public key is not a PEM public key: {exc}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise VerifyError(f"public key is {type(key).__name__}, expected an Ed25519 public key")
    return key


@functools.lru_cache(maxsize=4096)
def implied_epsilon(mechanism: str, vector: bool, scale: float, sensitivity: int) -> Loss:
    """The charge OpenDP's privacy map gives at d_in = sensitivity, rounded up to a micro-unit:
    epsilon for the discrete Laplace (L1), rho for the discrete Gaussian (L2).

    Cached: a ledger repeats a few (scale, sensitivity) pairs many times, and building an
    OpenDP measurement costs more than checking a signature (about 0.2 ms against 0.1 ms).
    """
    if mechanism not in UNITS:
        raise ValueError(f"mechanism {mechanism!r} is not one of {', '.join(UNITS)}")
    gaussian = mechanism == GAUSSIAN
    make = dp.m.make_gaussian if gaussian else dp.m.make_laplace
    atom = dp.atom_domain(T="i64")
    try:
        if vector:
            measurement = make(dp.vector_domain(atom), dp.l2_distance(T="i64") if gaussian
                               else dp.l1_distance(T="i64"), scale)
        else:
            measurement = make(atom, dp.absolute_distance(T="i64"), scale)
        return UNITS[mechanism].ceil(measurement.map(sensitivity))
    except dp.OpenDPException as exc:
        raise ValueError(f"OpenDP rejects scale {scale} at sensitivity {sensitivity}: "
                         f"{exc.message}") from None


@dataclass(slots=True)
class _Window:
    policy: Policy
    opened: int
    #: Releases at or after this moment are past the frozen retention.
    releasable_until: datetime
    closed: int | None = None
    team_sizes: dict[str, int] = field(default_factory=dict)
    tree: hierarchy.Hierarchy | None = None


class Verifier:
    """Checks a ledger one exported line at a time, in order. `finish()` may be called after
    any line (without an expected head it changes nothing), so a long-running reader can keep
    one Verifier and feed it only the entries appended since its last look."""

    def __init__(self, key: Ed25519PublicKey, expect: Head | None = None) -> None:
        self.key = key
        self.expect = expect
        self.report = Report()
        self.prev_seq = 0
        self.prev_hash = GENESIS_HASH
        self.pinned: tuple[int, str] | None = None  # (line, hash) of the entry at the pinned seq
        self.windows: dict[str, _Window] = {}
        self.released: dict[tuple[str, str, str, str], int] = {}
        self.line = 0
        self.seq: int | None = None
        self.time = datetime.min.replace(tzinfo=UTC)

    def flag(self, rule: str, message: str) -> None:
        self.report.violations.append(Violation(self.line, self.seq, rule, message))

    def feed(self, text: str) -> None:
        self.line += 1
        self.seq = None
        if not text.strip():
            return
        entry = self.parse(text)
        if entry is None:
            return
        self.seq = seq = entry["seq"]
        self.time = datetime.fromisoformat(entry["time"])
        self.report.entries += 1
        self.report.kinds[entry["kind"]] += 1
        self.check_chain(entry)
        self.prev_seq, self.prev_hash = seq, entry["hash"]
        self.report.head = Head(seq, entry["hash"])
        if self.expect is not None and seq == self.expect.seq and self.pinned is None:
            self.pinned = (self.line, entry["hash"])
        check = _KIND_CHECKS.get(entry["kind"])
        if check is not None:
            check(self, entry["payload"])

    def parse(self, text: str) -> dict[str, Any] | None:
        """The line's body fields plus its body, hash and signature; None (flagged) if malformed."""
        try:
            line = json.loads(text)
        except (ValueError, RecursionError) as exc:
            self.flag("format", f"not a JSON object: {exc}")
            return None
        if not isinstance(line, dict):
            self.flag("format", "not a JSON object")
            return None
        problem = _field_problem(line, _LINE_FIELDS)
        if problem is None and set(line) != set(_LINE_FIELDS):
            problem = f"unexpected fields {sorted(set(line) - set(_LINE_FIELDS))}"
        if problem is None and not _HEX64.match(line["hash"]):
            problem = "hash must be 64 lowercase hex digits"
        if problem is None and not _HEX128.match(line["signature"]):
            problem = "signature must be 128 lowercase hex digits"
        if problem is not None:
            self.flag("format", problem)
            return None
        try:
            entry = parse_body(line["body"])
        except ValueError as exc:
            self.flag("format", str(exc))
            return None
        self.seq = entry["seq"]
        if not _is_time(entry["time"]):
            self.flag("format", f"time {entry['time']!r} is not a UTC timestamp in the ledger's format")
            return None
        return {**entry, **line}

    def check_chain(self, entry: dict[str, Any]) -> None:
        seq = entry["seq"]
        if seq != self.prev_seq + 1:
            what = "the ledger starts at 1" if self.prev_seq == 0 else f"previous entry is {self.prev_seq}"
            self.flag("seq", f"sequence number {seq} out of order: expected {self.prev_seq + 1} "
                             f"({what}); an entry was deleted, inserted or moved")
        if entry["prev_hash"] != self.prev_hash:
            self.flag("chain", f"prev_hash {entry['prev_hash'][:16]}... does not match the previous "
                               f"entry's hash {self.prev_hash[:16]}...")
        recomputed = entry_hash(entry["body"])
        if recomputed != entry["hash"]:
            self.flag("hash", f"stated hash {entry['hash'][:16]}... differs from the recomputed "
                              f"{recomputed[:16]}...: the entry was altered")
        try:
            self.key.verify(bytes.fromhex(entry["signature"]), bytes.fromhex(entry["hash"]))
        except InvalidSignature:
            self.flag("signature", "Ed25519 signature does not verify with the given public key")

    def config(self, payload: dict[str, Any]) -> None:
        policy = payload.get("policy")
        if not isinstance(policy, dict) or _policy(policy) is None:
            self.flag("config", "payload.policy is not a valid policy")
        elif payload.get("policy_sha256") != policy_sha256(policy):
            self.flag("config", "policy_sha256 does not match the SHA-256 of the recorded policy")

    def window_open(self, payload: dict[str, Any]) -> None:
        window, raw = payload.get("window"), payload.get("policy")
        policy = _policy(raw) if isinstance(raw, dict) else None
        try:
            span = parse_window_id(window if isinstance(window, str) else "")
        except ValueError:
            span = None
        if not isinstance(window, str) or span is None or policy is None:
            self.flag("window", "window_open without a valid window id and frozen policy")
            return
        if window in self.windows:
            self.flag("window", f"window {window} opened again (first opened at entry "
                                f"{self.windows[window].opened}); its frozen policy cannot change")
            return
        assert self.seq is not None
        until = policy.retention_end(span.end)
        self.windows[window] = _Window(policy, self.seq, until)

    def window_close(self, payload: dict[str, Any]) -> None:
        window, sizes = payload.get("window"), payload.get("team_sizes")
        if not isinstance(window, str) or not isinstance(sizes, dict) or not all(
                _is_int(n) for n in sizes.values()):
            self.flag("window", "window_close without a window id and team_sizes")
            return
        state = self.windows.get(window)
        if state is None:
            self.flag("window", f"window {window} closed without an earlier window_open entry")
            return
        if state.closed is not None:
            self.flag("window", f"window {window} closed again (first closed at entry {state.closed})")
            return
        orgs = payload.get("team_orgs", {})
        try:
            if not isinstance(orgs, dict) or not all(isinstance(o, str) and hierarchy.org_path(o) == o and t in sizes
                                                     for t, o in orgs.items()):
                raise hierarchy.HierarchyError("team_orgs must map teams of team_sizes to org paths")
            tree = hierarchy.Hierarchy.of((t, orgs.get(t, ""), n) for t, n in sizes.items())
        except hierarchy.HierarchyError as exc:
            self.flag("window", f"window_close of {window}: {exc}")
            tree = None
        assert self.seq is not None
        state.closed = self.seq
        state.team_sizes = sizes
        state.tree = tree
        cap = state.policy.budget_per_window
        for team in sorted(sizes):
            self.report.totals[(window, team)] = TeamWindowTotal(window, team, cap)

    def release(self, payload: dict[str, Any]) -> None:
        """A release at a team, or at a node of the organisation tree (a payload with "node")."""
        at_node = "node" in payload
        amounts = _release_amounts(payload, _NODE_RELEASE_FIELDS if at_node else _RELEASE_FIELDS,
                                   self.windows.get(str(payload.get("window"))))
        if isinstance(amounts, str):
            self.flag("release", f"malformed release payload: {amounts}")
            return
        charged, stated_cap, stated_after = amounts
        owner = payload["node" if at_node else "team"]
        subject = (f"{payload['statistic']} of {payload['metric'] or 'activity'} for {owner} in "
                   f"{payload['window']}")
        state = self.check_release(payload, owner, charged, subject)
        if state is None:
            return
        if at_node:
            self.node_release(payload, state, charged, stated_cap, subject)
        else:
            self.team_release(payload, state, charged, stated_cap, str(stated_after), subject)

    def team_release(self, payload: dict[str, Any], state: _Window, charged: Loss, stated_cap: Loss,
                     stated_after: str, subject: str) -> None:
        """A release at a team: the plan, the team in the close, k, and its team-window's charge."""
        window, team = payload["window"], payload["team"]
        if "plan" in payload:
            self.check_plan(payload, state.policy, charged, subject)
        total = self.report.totals.get((window, team))
        if total is None:
            self.flag("team", f"release of {subject}: team {team} was not in the window_close entry "
                              f"of {window} (entry {state.closed})")
            return
        k = state.policy.min_team_size
        if state.team_sizes[team] < k:
            self.flag("min_team_size", f"release of {subject}: the team had {state.team_sizes[team]} "
                                       f"people on the roster at close, below the frozen k = {k}")
        self.account(total, charged, stated_cap, stated_after)

    def account(self, total: TeamWindowTotal, charged: Loss, stated_cap: Loss, stated_after: str | None,
                node: str = "") -> None:
        """Record one charge to a team-window (by its own release, or by `node`'s above it) and
        check the entry's stated cap and spent-after against the accountant's."""
        budget = Budget(total.cap, total.spent).record(charged)
        total.spent = budget.spent
        total.releases += 1
        if stated_cap != total.cap:
            self.flag("budget_cap", f"stated budget_cap {stated_cap} differs from the frozen "
                                    f"{total.cap.UNIT}_per_window {total.cap} of {total.window}")
        at = f" at {node}" if node else ""
        if budget.overspent:
            self.flag("budget_cap", f"{total.team} in {total.window} has spent {total.spent} after this "
                                    f"release{at}, over its cap {total.cap}")
        if stated_after != str(total.spent):
            of = f" of {total.team}" if node else ""
            self.flag("budget_spent", f"stated budget_spent_after {stated_after}{of} differs from the sum "
                                      f"of this team-window's charges, {total.spent}")

    def node_release(self, payload: dict[str, Any], state: _Window, charged: Loss, stated_cap: Loss,
                     subject: str) -> None:
        """A release at an org or the company: charged to every team-window below the node."""
        window, node = payload["window"], payload["node"]
        tree = state.tree
        if tree is None or node not in tree or tree.level(node) == hierarchy.TEAM:
            self.flag("node", f"release of {subject}: {node!r} is not an org or the company in the tree "
                              f"of the window_close entry of {window} (entry {state.closed})")
            return
        below = sorted(tree.teams_below(node))
        if payload["level"] != tree.level(node) or payload["teams"] != below:
            self.flag("node", f"release of {subject}: level {payload['level']!r} and teams charged "
                              f"{payload['teams']} differ from the frozen tree's {tree.level(node)!r} and {below}")
        if "plan" in payload:
            self.check_plan(payload, state.policy, charged, subject, tree.level(node))
        k = state.policy.min_team_size
        if tree.size(node) < k:
            self.flag("min_team_size", f"release of {subject}: the node had {tree.size(node)} people on the "
                                       f"roster at close, below the frozen k = {k}")
        stated = payload["budget_spent_after"]
        for team in below:
            self.account(self.report.totals[(window, team)], charged, stated_cap, stated.get(team), node)

    def check_release(self, payload: dict[str, Any], owner: str, charged: Loss, subject: str) -> _Window | None:
        """The rules every release follows, at a team or a node (`owner`): its mechanism and charge,
        its statistic not released before, its window opened and closed before it, its time within
        the frozen retention, its statistic and value. Returns the window, or None (flagged) when
        the window was not opened and closed: then nothing frozen is there to check against."""
        window = payload["window"]
        frozen = self.windows.get(window)
        if frozen is not None and payload["mechanism"] in UNITS and payload["mechanism"] != frozen.policy.mechanism:
            self.flag("mechanism", f"{subject}: mechanism {payload['mechanism']!r} is not the "
                                   f"{frozen.policy.mechanism!r} frozen in the policy of {window}")
        self.check_mechanism(payload, charged, subject)
        key = (owner, window, payload["metric"], payload["statistic"])
        if key in self.released:
            self.flag("double_release", f"{subject} was already released at entry {self.released[key]}")
        else:
            assert self.seq is not None
            self.released[key] = self.seq
        state = self.windows.get(window)
        if state is None:
            self.flag("window", f"release of {subject} before any window_open entry for {window}")
            return None
        if state.closed is None:
            self.flag("window", f"release of {subject} while {window} was still open (no earlier "
                                "window_close entry)")
            return None
        if self.time >= state.releasable_until:
            self.flag("retention", f"release of {subject} at {format_time(self.time)} is past the "
                                   f"window's retention, which ended {format_time(state.releasable_until)}")
        self.check_statistic(payload, state.policy, subject)
        return state

    def check_mechanism(self, payload: dict[str, Any], charged: Loss, subject: str) -> None:
        scale, sensitivity = payload["scale"], payload["sensitivity"]
        if payload["mechanism"] not in UNITS:
            self.flag("mechanism", f"{subject}: mechanism {payload['mechanism']!r} is not one of "
                                   f"{', '.join(UNITS)}")
        elif not (math.isfinite(scale) and scale > 0) or sensitivity < 0:
            self.flag("mechanism", f"{subject}: scale {scale} must be > 0 and sensitivity "
                                   f"{sensitivity} >= 0")
        else:
            try:
                implied = implied_epsilon(payload["mechanism"], payload["statistic"] == Statistic.HISTOGRAM,
                                          float(scale), sensitivity)
            except ValueError as exc:
                self.flag("mechanism", f"{subject}: {exc}")
                return
            if type(charged) is not type(implied):
                self.flag("epsilon", f"{subject}: charged {charged.UNIT} {charged}, but {payload['mechanism']} "
                                     f"charges in {implied.UNIT}")
            elif charged < implied:
                self.flag("epsilon", f"{subject}: charged {charged.UNIT} {charged} is below the {implied} that "
                                     f"{payload['mechanism']} with scale {scale} at sensitivity {sensitivity} "
                                     "implies")

    def check_plan(self, payload: dict[str, Any], policy: Policy, charged: Loss, subject: str,
                   level: str = hierarchy.TEAM) -> None:
        """A plan release must be part of the window's frozen plan at its level, at no more than its charge."""
        if payload["plan"] is not True:
            self.flag("plan", f"{subject}: plan must be true when present, not {payload['plan']!r}")
            return
        planned = plan_parts(policy.release_plan).get((level, payload["metric"], payload["statistic"]))
        if planned is None:
            self.flag("plan", f"{subject} is marked as a plan release but is not in the release plan frozen "
                              f"for its window at level {level}")
        elif charged > planned:
            self.flag("plan", f"{subject}: plan release charged {charged.UNIT} {charged}, more than the {planned} "
                              "the window's frozen plan allows")

    def check_statistic(self, payload: dict[str, Any], policy: Policy, subject: str) -> None:
        statistic, metric, value = payload["statistic"], payload["metric"], payload["value"]
        if statistic not in NOISY_STATISTICS:
            self.flag("statistic", f"{subject}: statistic must be one of {', '.join(NOISY_STATISTICS)}")
            return
        if statistic == ACTIVE:
            if metric:
                self.flag("statistic", f"{subject}: the team-level statistic active has metric \"\"")
            required, buckets = 1, 0
        else:
            bound = policy.metric(metric)
            if bound is None:
                self.flag("statistic", f"{subject}: metric {metric!r} is not in the window's frozen policy")
                return
            required = bound.max_per_user if statistic == Statistic.SUM else 1
            buckets = len(bound.histogram_edges) + 1 if statistic == Statistic.HISTOGRAM else 0
        if payload["sensitivity"] < required:
            self.flag("sensitivity", f"{subject}: sensitivity {payload['sensitivity']} is below the "
                                     f"frozen bound {required}")
        if buckets:
            if not (isinstance(value, list) and len(value) == buckets
                    and all(isinstance(v, str) and _DECIMAL.match(v) for v in value)):
                self.flag("value", f"{subject}: a histogram value must be a list of {buckets} decimal "
                                   "integer strings")
        elif not (isinstance(value, str) and _DECIMAL.match(value)):
            self.flag("value", f"{subject}: value must be a decimal integer string")

    def finish(self) -> Report:
        self.report.yearly = yearly_bound(self.report.totals.values())
        expect = self.expect
        if expect is None:
            return self.report
        if self.pinned is None:
            last = self.report.head.seq if self.report.head else 0
            self.report.violations.append(Violation(
                None, expect.seq, "expect_head", f"pinned head {expect.seq} is missing: the file ends at "
                                                 f"entry {last}, so the ledger's tail was truncated"))
        elif self.pinned[1] != expect.hash:
            self.report.violations.append(Violation(
                self.pinned[0], expect.seq, "expect_head",
                f"hash {self.pinned[1][:16]}... is not the pinned {expect.hash[:16]}...: "
                "history was rewritten since the head was pinned"))
        return self.report


_KIND_CHECKS = {"config": Verifier.config, "window_open": Verifier.window_open,
                "window_close": Verifier.window_close, "release": Verifier.release}


def _policy(raw: dict[str, Any]) -> Policy | None:
    try:
        return Policy.from_json(raw)
    except (AttributeError, KeyError, TypeError, ValueError):
        return None


def _release_amounts(payload: dict[str, Any], fields: dict[str, Any],
                     window: _Window | None) -> tuple[Loss, Loss, Loss | None] | str:
    """(charged amount, stated cap, stated spent after; None for a node's, a dict checked per
    team) or what is wrong with the payload. The amounts are in the unit of the window's frozen
    mechanism (epsilon when the window is unknown, which is flagged anyway): a Gaussian
    release states "rho" where a Laplace one states "epsilon"."""
    unit = UNITS.get(window.policy.mechanism, Epsilon) if window is not None else Epsilon
    amount = unit.UNIT
    fields = {(amount if name == "epsilon" else name): kind for name, kind in fields.items()}
    problem = _field_problem(payload, fields)
    if problem is not None:
        return problem
    try:
        after = payload["budget_spent_after"]
        return (unit.parse(payload[amount]), unit.parse(payload["budget_cap"]),
                unit.parse(after) if isinstance(after, str) else None)
    except ValueError as exc:
        return str(exc)


def _is_time(text: str) -> bool:
    """Exactly the ledger's own format (UTC, microseconds, "Z"), so the hash input is unambiguous."""
    try:
        return format_time(datetime.fromisoformat(text)) == text
    except ValueError:
        return False


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _field_problem(obj: dict[str, Any], fields: dict[str, Any]) -> str | None:
    for name, kind in fields.items():
        if name not in obj:
            return f"missing field {name!r}"
        value = obj[name]
        if isinstance(value, bool) or not isinstance(value, kind):
            return f"field {name!r} has the wrong type"
    return None


class Signed(Protocol):
    """An entry as exported: a stored `Entry` or a StreamLedger `LedgerEntry` message alike."""

    @property
    def body(self) -> str: ...
    @property
    def hash(self) -> str: ...
    @property
    def signature(self) -> str: ...


def export_line(entry: Signed) -> str:
    """One entry as a line of the export format (without the newline): its body verbatim, as a
    JSON string, then its hash and signature.

    ASCII only (non-ASCII characters as \\u escapes): no reader can mistake a character such as
    U+2028 for a line break, and the file has no encoding to get wrong. Decoding the string
    gives back the body exactly."""
    return json.dumps({"body": entry.body, "hash": entry.hash, "signature": entry.signature},
                      separators=(",", ":"))


def verify_lines(lines: Iterable[str], public_key: Ed25519PublicKey, *,
                 expect_head: Head | None = None) -> Report:
    """Verify an exported ledger given as JSON lines; see the module docstring for the rules."""
    verifier = Verifier(public_key, expect_head)
    for text in lines:
        verifier.feed(text)
    return verifier.finish()


def verify_file(path: Path, public_key_pem: bytes, *, expect_head: Head | None = None) -> Report:
    """Verify the JSON Lines file at `path` with a PEM public key, streaming it line by line."""
    key = load_public_key(public_key_pem)
    with path.open(encoding="utf-8") as lines:
        return verify_lines(lines, key, expect_head=expect_head)
