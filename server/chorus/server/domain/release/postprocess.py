"""Stored releases read back, and what is computed from them at no privacy cost: the answer
of a noisy release, the mean (sum over count), adoption (active over the public roster) and
the consistent estimates across the tree's levels (`privacy.consistency`). Functions of stored
values only: nothing here draws, charges or writes."""

from __future__ import annotations

import functools
import json
import math
import threading
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import NamedTuple, TypeVar

from chorus.server import store
from chorus.server.domain.release.answers import Estimate, RemainderResult
from chorus.server.domain.release.request import TEAM_LEVEL
from chorus.server.model import hierarchy
from chorus.server.model.policy import MetricPolicy, Policy
from chorus.server.model.statistics import ACTIVE, NOISY_PARTS
from chorus.server.privacy import consistency, mechanisms
from chorus.server.privacy.epsilon import ZERO, Loss
from chorus.server.store import Tx

#: (team or node, metric, noisy statistic)
Key = tuple[str, str, str]
#: How many entries (parsed rows and built answers) the replay caches hold at most, all windows
#: together, before they start over: a full 2,000-team report is 70,000 (30,000 releases, their
#: answers, 10,000 means), about 42 MB; the bound holds about 120 MB.
CACHE_MAX = 200_000


class Stored(NamedTuple):
    """A noisy release as stored (and as first answered)."""

    release_id: str
    value: int | list[int]
    ci95: float
    scale: float
    sensitivity: int
    epsilon: Loss
    #: What this request charged for it: ZERO when it was released before.
    charged: Loss
    #: The window's mechanism (privacy.mechanisms.LAPLACE or GAUSSIAN).
    mechanism: str


def result_json(item: Stored) -> str:
    return json.dumps({"value": item.value, "ci95": item.ci95, "scale": item.scale,
                       "sensitivity": item.sensitivity}, separators=(",", ":"))


@functools.cache
def parts(metric: str, stat: str, denominator: tuple[str, ...] = ()) -> tuple[tuple[str, str], ...]:
    """The (metric, noisy statistic) releases a statistic of `metric` is made of (a ratio's: the
    sums of `metric` and of each metric of its `denominator`)."""
    names = dict.fromkeys((metric, *denominator)) if stat == "ratio" else (metric,)
    return tuple((TEAM_LEVEL if need == ACTIVE else name, need) for need in NOISY_PARTS[stat] for name in names)


def noisy_estimate(metric: str, histogram_edges: tuple[int, ...], stat: str, item: Stored,
           consistent: tuple[float, float] | None) -> Estimate:
    """A sum, count, histogram or active; negative noisy values are shown as 0 and the answer
    says so."""
    if isinstance(item.value, list):
        buckets = tuple(max(0, v) for v in item.value)
        negative = [i for i, v in enumerate(item.value) if v < 0]
        note = (f"negative noisy counts in bucket(s) {', '.join(map(str, negative))} shown as 0 "
                f"(noisy values {item.value})" if negative else "")
        value = 0.0
        edges = histogram_edges
    else:
        buckets, edges = (), ()
        value = float(max(0, item.value))
        note = f"noisy {stat} {item.value} was negative; shown as 0" if item.value < 0 else ""
    return Estimate(metric, stat, value, item.ci95, buckets, edges, item.charged, item.epsilon,
                    item.mechanism, item.sensitivity, item.scale, not item.charged.micros,
                    item.release_id, note, (), consistent,
                    noisy_value=None if isinstance(item.value, list) else float(item.value),
                    noisy_buckets=tuple(item.value) if isinstance(item.value, list) else ())


def mean_estimate(metric: MetricPolicy, total: Stored, count: Stored) -> Estimate:
    assert isinstance(total.value, int) and isinstance(count.value, int)
    value, ci95 = mechanisms.mean_interval(total.value, total.scale, count.value, count.scale,
                                           metric.max_per_user, total.mechanism)
    raw = total.value / max(count.value, 1)
    note = ""
    if count.value < 1 or not 0 <= raw <= metric.max_per_user:
        note = (f"noisy sum {total.value} over noisy count {count.value} (at least 1) is clamped to "
                f"[0, {metric.max_per_user}]")
    return _post_processed(metric.name, "mean", value, ci95, (total, count), note)


def ratio_estimate(metric: str, denominator: tuple[str, ...], numerator: Stored, others: list[Stored]) -> Estimate:
    """The sum of `metric` over the sums of `denominator` (which may include `metric`: then a
    share, within [0, 1]); `others` are the denominator's sums but the numerator's."""
    assert isinstance(numerator.value, int)
    sums: list[tuple[int, float]] = []
    for other in others:
        assert isinstance(other.value, int)
        sums.append((other.value, other.scale))
    nested = metric in denominator
    value, ci95 = mechanisms.ratio_interval([(numerator.value, numerator.scale)], sums, nested, numerator.mechanism)
    below = sum(v for v, _ in sums) + (numerator.value if nested else 0)
    upper = 1 if nested else math.inf
    notes = []
    if below < 1 or not 0 <= numerator.value / below <= upper:
        notes.append(f"noisy sum {numerator.value} over noisy sum {below} is clamped to [0, {upper}]")
    if math.isinf(ci95):
        notes.append("the denominator is within its noise of 0: no upper end can be claimed")
    estimate = _post_processed(metric, "ratio", value, ci95, (numerator, *others), "; ".join(notes))
    return estimate._replace(denominator=denominator)


def adoption_estimate(active: Stored, roster_size: int) -> Estimate:
    assert isinstance(active.value, int)
    value, ci95 = mechanisms.adoption_interval(active.value, active.scale, roster_size, active.mechanism)
    note = (f"noisy active people {active.value} over roster size {roster_size} is outside [0, 1]; "
            "clamped" if not 0 <= active.value <= roster_size else "")
    return _post_processed(TEAM_LEVEL, "adoption", value, ci95, (active,), note)


def _post_processed(metric: str, stat: str, value: float, ci95: float, parts: tuple[Stored, ...],
                    note: str) -> Estimate:
    """An answer computed from stored releases: it charges nothing itself (its parts carry the
    charges) and names them; cached when every part was."""
    return Estimate(metric, stat, value, ci95, (), (), ZERO, ZERO, mechanisms.POST_PROCESSING, 0, 0.0,
                    all(not p.charged.micros for p in parts), "", note, tuple(p.release_id for p in parts))



#: Statistics made consistent across the levels of the tree (scalars; histograms are not).
CONSISTENT = ("sum", "count", ACTIVE)


def consistent_estimates(tree: hierarchy.Hierarchy, policy: Policy, stored: Mapping[Key, Stored],
                         released: Sequence[str]) -> tuple[dict[Key, tuple[float, float]], list[RemainderResult]]:
    """Consistent estimates of the released subjects' sums, counts and active, for every such
    statistic the window holds at nested levels; and the remainders under released nodes that
    hold at least k people. Computed from all of the window's stored releases and its tree."""
    if all(tree.level(subject) == hierarchy.TEAM for subject in {key[0] for key in stored}):
        return {}, []  # teams only: nothing nested (and a full report's replay stays cheap)
    by_statistic: dict[tuple[str, str], dict[str, Stored]] = {}
    for (node, metric, stat), item in stored.items():
        if stat in CONSISTENT and node in tree:
            by_statistic.setdefault((metric, stat), {})[node] = item
    out: dict[Key, tuple[float, float]] = {}
    remainders: list[RemainderResult] = []
    k = policy.min_team_size
    for (metric, stat), items in sorted(by_statistic.items()):
        if not any(_released_above(tree, node, items) for node in items):
            continue  # one level only: the raw releases are already consistent
        plan = consistency_plan(tuple(consistency.Node(n, p, items[n].scale if n in items else None)
                                      for n, p in tree.nodes()), policy.mechanism)
        result = plan.estimate({n: int(item.value) for n, item in items.items()  # type: ignore[arg-type]
                                if n in plan.released})
        for subject in released:
            if subject in result.estimates and subject in items:
                e = result.estimates[subject]
                out[(subject, metric, stat)] = (float(e.value), e.ci95)
            rest = result.remainders.get(subject)
            if rest is not None and subject in items:
                size = sum(tree.size(m) for m in rest.members)
                if size >= k:
                    remainders.append(RemainderResult(subject, rest.members, size, metric, stat,
                                                      float(rest.estimate.value), rest.estimate.ci95))
    return out, remainders


def _released_above(tree: hierarchy.Hierarchy, node: str, items: Mapping[str, Stored]) -> bool:
    parent = tree.parent(node)
    while parent is not None:
        if parent in items:
            return True
        parent = tree.parent(parent)
    return False


@functools.lru_cache(maxsize=64)
def consistency_plan(nodes: tuple[consistency.Node, ...], mechanism: str) -> consistency.Plan:
    """The consistency plan of one tree and set of scales (deterministic; cached: a 500-team
    company's intervals take a while to compute)."""
    return consistency.plan(nodes, mechanism=mechanism)


class Replay:
    """The stored releases of windows frozen with one mechanism and set of metrics, each parsed
    once per process, and the answers a replay of them gives (charged nothing now, no consistent
    estimate: every answer of a flat report asked again), each built once.

    Why: a stored release never changes (its row is immutable once claimed; a row read in a
    transaction that rolls back is a row nobody reads again), and a report's replay reads
    thousands of them again; re-parsing their JSON and rebuilding their answers was most of its
    cost, and its small objects most of the garbage collector's. Every value here is published
    (a stored release and what is computed from it at no privacy cost): nothing secret is kept.
    Thread-safe by the interpreter lock: each entry is written whole and never changed, so two
    threads racing on one store the same value.
    """

    __slots__ = ("_adoptions", "_means", "_mechanism", "_noisy", "_rows", "_unit")

    def __init__(self, policy: Policy) -> None:
        self._mechanism, self._unit = policy.mechanism, policy.unit
        self._rows: dict[store.releases.Row, tuple[Key, Stored]] = {}
        self._noisy: dict[str, Estimate] = {}  # release id -> its replayed answer
        self._means: dict[tuple[str, str], Estimate] = {}  # (sum's, count's release id) -> the mean's
        self._adoptions: dict[tuple[str, int], Estimate] = {}  # (active's release id, roster size)

    def stored(self, rows: list[store.releases.Row]) -> dict[Key, Stored]:
        """The stored releases of `rows`, keyed (team or node, metric, statistic), amounts in
        the window's unit, charged nothing."""
        known = self._rows
        unparsed = [row for row in rows if row not in known]
        if unparsed:  # one JSON document for all of them: a first replay parses thousands
            _make_room(len(unparsed))
            epsilons = {micros: self._unit(micros) for *_, micros in unparsed}  # a few values
            results = json.loads(f"[{','.join(row[4] for row in unparsed)}]")
            for row, r in zip(unparsed, results, strict=True):
                release_id, team, metric, stat, _, micros = row
                known[row] = ((team, metric, stat), Stored(release_id, r["value"], r["ci95"], r["scale"],
                                                           r["sensitivity"], epsilons[micros], ZERO,
                                                           self._mechanism))
        return dict(map(known.__getitem__, rows))

    def noisy(self, metric: str, histogram_edges: tuple[int, ...], stat: str, item: Stored,
              consistent: tuple[float, float] | None) -> Estimate:
        """`noisy_estimate`, built once per stored release for a replay."""
        if consistent is not None or item.charged.micros:
            return noisy_estimate(metric, histogram_edges, stat, item, consistent)
        return _memo(self._noisy, item.release_id,
                     lambda: noisy_estimate(metric, histogram_edges, stat, item, None))

    def mean(self, metric: MetricPolicy, total: Stored, count: Stored) -> Estimate:
        """`mean_estimate`, built once per pair of stored releases for a replay."""
        if total.charged.micros or count.charged.micros:
            return mean_estimate(metric, total, count)
        return _memo(self._means, (total.release_id, count.release_id), lambda: mean_estimate(metric, total, count))

    def adoption(self, active: Stored, roster_size: int) -> Estimate:
        """`adoption_estimate`, built once per stored release and roster size for a replay."""
        if active.charged.micros:
            return adoption_estimate(active, roster_size)
        return _memo(self._adoptions, (active.release_id, roster_size), lambda: adoption_estimate(active, roster_size))

    def size(self) -> int:
        return len(self._rows) + len(self._noisy) + len(self._means) + len(self._adoptions)


K = TypeVar("K", bound=Hashable)


def _memo(cache: dict[K, Estimate], key: K, build: Callable[[], Estimate]) -> Estimate:
    """The answer kept under `key`, built (and kept) the first time."""
    found = cache.get(key)
    if found is None:
        found = cache[key] = build()
    return found


#: One Replay per frozen (mechanism, metrics): what a stored release's answer depends on.
_REPLAYS: dict[tuple[str, tuple[MetricPolicy, ...]], Replay] = {}


def replay_of(policy: Policy) -> Replay:
    """The replay cache of windows frozen with `policy`'s mechanism and metrics."""
    key = (policy.mechanism, policy.metrics)
    found = _REPLAYS.get(key)
    if found is None:
        found = _REPLAYS.setdefault(key, Replay(policy))
    return found


class WindowReleases:
    """The stored releases of the windows one database's read transactions read last, each
    reused while the window's count of releases is unchanged: rows are only ever added
    (`store.releases`), so one count in one database is one set of rows. Owned by the service
    over that database (chorus.server.domain.release.service.Releases), never shared between two.

    Only for read transactions: a write transaction sees its own claims before it commits or
    rolls back. A set is kept only when its count and its rows agree (on PostgreSQL each
    statement has its own snapshot, so a commit in between can add rows). At most
    WINDOWS_KEPT windows, the least recently read dropped first.
    """

    WINDOWS_KEPT = 16

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._windows: dict[str, tuple[int, dict[Key, Stored]]] = {}

    def read(self, tx: Tx, window: str, replay: Replay) -> dict[Key, Stored]:
        """The window's stored releases as `Replay.stored` gives them; never to be mutated."""
        count = store.releases.count(tx, window)
        with self._lock:
            found = self._windows.pop(window, None)
            if found is not None and found[0] == count:
                self._windows[window] = found  # now the most recently read
                return found[1]
        stored = replay.stored(store.releases.of_window(tx, window))
        if len(stored) == count:
            with self._lock:
                self._windows[window] = (count, stored)
                while len(self._windows) > self.WINDOWS_KEPT:
                    del self._windows[next(iter(self._windows))]
        return stored


def _make_room(rows: int) -> None:
    """Start the caches over when `rows` more would pass CACHE_MAX entries."""
    if sum(r.size() for r in list(_REPLAYS.values())) + rows > CACHE_MAX:
        _REPLAYS.clear()
