"""`Policy`, the central domain type: everything a window freezes when it opens (window length,
grace, metrics with their per-person bounds and histogram edges, the noise mechanism, the
per-window budget, default charges, k, retention, the release plan, the OTLP mapping), and its
JSON form, which the ledger records and the offline verifier reads back. Parsed and validated
from TOML by chorus.server.model.config.

Every privacy amount of a policy is in its mechanism's unit (`privacy.mechanisms.UNITS`):
epsilon for the discrete Laplace, rho for the discrete Gaussian. The JSON of a Laplace policy
has no `mechanism` key and names its amounts `epsilon...`, exactly as policies frozen before
the Gaussian existed, so old windows read and verify as they are; a Gaussian policy says
`"mechanism": "discrete_gaussian"` and names them `rho...`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from chorus.server.model.calendar import WindowLength
from chorus.server.model.hierarchy import TEAM
from chorus.server.model.otlp_mapping import OtlpPolicy
from chorus.server.model.statistics import NOISY_PARTS
from chorus.server.privacy import mechanisms
from chorus.server.privacy.epsilon import ZERO, Loss
from chorus.server.privacy.mechanisms import LAPLACE, UNITS

#: The default of `Policy.imprecise_adoption_points`; a policy at it leaves the key out of its JSON.
IMPRECISE_ADOPTION_POINTS = 25
#: Metrics per policy: a person's usage row has one total column per metric slot.
MAX_METRICS = 32


@dataclass(frozen=True, slots=True)
class MetricPolicy:
    name: str
    description: str
    max_per_user: int
    histogram_edges: tuple[int, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "max_per_user": self.max_per_user,
            "histogram_edges": list(self.histogram_edges),
        }


def sensitivity(statistic: str, metric: MetricPolicy | None) -> int:
    """How much one person can move a noisy statistic: a sum by its metric's bound, a count, a
    histogram (add or remove one person: one bucket by one) or the active people by 1.

    The one owner of the rule for the server (release, plan intervals, default-config); the
    offline verifier keeps its own copy on purpose, so a bug here cannot hide from it."""
    if statistic == "sum":
        assert metric is not None, "a sum has a metric"
        return metric.max_per_user
    return 1


def expected_ci95(statistic: str, metric: MetricPolicy | None, charge: Loss, size: int) -> float:
    """The 95% half-width a noisy statistic (or adoption) will have once released at `charge`, for a
    node of `size` people: it depends on no data (adoption divides the active count's by the public
    size, capped at 1). A mean's depends on the count it will be divided by (`mean_interval`), a
    ratio's on both its sums (`ratio_interval`)."""
    if statistic == "adoption":
        return min(mechanisms.calibrate(1, charge).ci95 / max(size, 1), 1.0)
    return mechanisms.calibrate(sensitivity(statistic, metric), charge, statistic == "histogram").ci95


@dataclass(frozen=True, slots=True)
class PlanEntry:
    """One statistic the release plan publishes when a window closes, for every team of at least k.

    `metric` is "" for adoption (a team-level statistic); `charge` (epsilon or rho, the
    policy's unit) applies to each noisy statistic it needs (sum and count for a mean; for a
    ratio the sum of `metric`, its numerator, and of each metric of `denominator`). A later
    entry releases at every team, every org node or the company (`level`); a team's budget pays
    for the entries of its own level and of every node above it.
    """

    statistic: str
    metric: str
    charge: Loss
    #: hierarchy.TEAM (every team), ORG (every org node) or ROOT (the company).
    level: str = TEAM
    #: For a ratio: the metrics whose sums add up to its denominator; () for other statistics.
    denominator: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        # A team entry has no level key, as entries frozen before levels existed.
        return {"statistic": self.statistic, "metric": self.metric, self.charge.UNIT: str(self.charge),
                **({"level": self.level} if self.level != TEAM else {}),
                **({"denominator": list(self.denominator)} if self.denominator else {})}

    def noisy_parts(self) -> list[tuple[str, str]]:
        """(metric, noisy statistic) pairs this entry releases; "" is the metric of active."""
        return [("" if part == "active" else metric, part) for part in NOISY_PARTS[self.statistic]
                for metric in dict.fromkeys((self.metric, *self.denominator))]


def plan_parts(plan: tuple[PlanEntry, ...]) -> dict[tuple[str, str, str], Loss]:
    """(level, metric, noisy statistic) -> charge over the whole plan; each part once per level."""
    parts: dict[tuple[str, str, str], Loss] = {}
    for entry in plan:
        for part in entry.noisy_parts():
            parts.setdefault((entry.level, *part), entry.charge)
    return parts


@dataclass(frozen=True, slots=True)
class Policy:
    """Everything a window freezes at open: bounds, buckets, mechanism, budget, k, default charges."""

    window_length: WindowLength
    grace_seconds: int
    metrics: tuple[MetricPolicy, ...]
    #: The cap of each team-window, in the mechanism's unit.
    budget_per_window: Loss
    #: Noisy statistic -> what a request charges for it when it names no amount.
    default_charge: dict[str, Loss]
    min_team_size: int
    retention_windows: int
    #: Released automatically, once, right after the window closes (chorus.server.domain.release).
    release_plan: tuple[PlanEntry, ...] = ()
    otlp: OtlpPolicy | None = None  # how OpenTelemetry instruments feed the metrics (otlp/mapping.py)
    #: privacy.mechanisms.LAPLACE (charges in epsilon) or GAUSSIAN (charges in rho).
    mechanism: str = LAPLACE
    #: A team's adoption with a 95% half-width above this many points is flagged as too few
    #: people for a weekly number (`TeamResult.imprecise`).
    imprecise_adoption_points: int = IMPRECISE_ADOPTION_POINTS

    _by_name: dict[str, MetricPolicy] = field(init=False, repr=False, compare=False)
    _slots: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        unit = UNITS[self.mechanism]
        amounts = [self.budget_per_window, *self.default_charge.values(), *(e.charge for e in self.release_plan)]
        if any(not isinstance(a, unit) for a in amounts):
            raise ValueError(f"every amount of a {self.mechanism} policy is in {unit.UNIT}")
        object.__setattr__(self, "_by_name", {m.name: m for m in self.metrics})
        object.__setattr__(self, "_slots", {m.name: i for i, m in enumerate(self.metrics)})

    def metric(self, name: str) -> MetricPolicy | None:
        return self._by_name.get(name)

    def slot(self, name: str) -> int:
        """The metric's column in a person's usage row: its position in this policy."""
        return self._slots[name]

    def retention_end(self, window_end: datetime) -> datetime:
        """When a window ending at `window_end` stops being releasable: retention_windows lengths later."""
        return window_end + self.retention_windows * self.window_length.duration

    @property
    def unit(self) -> type[Loss]:
        """Epsilon or Rho: the unit of every amount of this policy."""
        return UNITS[self.mechanism]

    def plan_cost(self) -> Loss:
        """What the release plan charges each released team-window under one org level: each
        noisy part once per level (a team under nested orgs pays the org level once per org)."""
        return sum((charge for charge in plan_parts(self.release_plan).values()), ZERO)

    def to_json(self) -> dict[str, Any]:
        # An empty plan is left out, so the policies frozen before plans existed read the same;
        # so is the mechanism of a Laplace policy (see the module docstring).
        plan = {"release_plan": [e.to_json() for e in self.release_plan]} if self.release_plan else {}
        unit = self.unit.UNIT
        return {
            **({} if self.mechanism == LAPLACE else {"mechanism": self.mechanism}),
            "window_length": self.window_length.value,
            "grace_seconds": self.grace_seconds,
            "metrics": [m.to_json() for m in self.metrics],
            f"{unit}_per_window": str(self.budget_per_window),
            f"default_{unit}": {k: str(v) for k, v in sorted(self.default_charge.items())},
            "min_team_size": self.min_team_size,
            "retention_windows": self.retention_windows,
            **plan,
            **({"otlp": self.otlp.to_json()} if self.otlp else {}),
            **({"imprecise_adoption_points": self.imprecise_adoption_points}
               if self.imprecise_adoption_points != IMPRECISE_ADOPTION_POINTS else {}),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Policy:
        mechanism = str(data.get("mechanism", LAPLACE))
        if mechanism not in UNITS:
            raise ValueError(f"mechanism {mechanism!r} is not one of {', '.join(UNITS)}")
        unit = UNITS[mechanism]
        name = unit.UNIT
        return cls(
            window_length=WindowLength(data["window_length"]),
            grace_seconds=int(data["grace_seconds"]),
            metrics=tuple(
                MetricPolicy(m["name"], m["description"], int(m["max_per_user"]),
                             tuple(int(e) for e in m["histogram_edges"]))
                for m in data["metrics"]
            ),
            budget_per_window=unit.parse(data[f"{name}_per_window"]),
            default_charge={k: unit.parse(v) for k, v in data[f"default_{name}"].items()},
            min_team_size=int(data["min_team_size"]),
            retention_windows=int(data["retention_windows"]),
            release_plan=tuple(PlanEntry(str(e["statistic"]), str(e["metric"]), unit.parse(e[name]),
                                         str(e.get("level", TEAM)), tuple(str(m) for m in e.get("denominator", ())))
                               for e in data.get("release_plan", ())),
            otlp=OtlpPolicy.from_json(data["otlp"]) if "otlp" in data else None,
            mechanism=mechanism,
            imprecise_adoption_points=int(data.get("imprecise_adoption_points", IMPRECISE_ADOPTION_POINTS)),
        )
