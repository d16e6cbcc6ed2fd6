"""`Policy`, the central domain type: everything a window freezes when it opens (window length,
grace, metrics with their per-person bounds and histogram edges, the per-window budget, default
epsilons, k, retention, the release plan, the OTLP mapping), and its JSON form, which the ledger records and the
offline verifier reads back. Parsed and validated from TOML by chorus.server.model.config.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from chorus.server.model.calendar import WindowLength
from chorus.server.model.otlp_mapping import OtlpPolicy
from chorus.server.model.statistics import NOISY_PARTS
from chorus.server.privacy.epsilon import Epsilon

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


@dataclass(frozen=True, slots=True)
class PlanEntry:
    """One statistic the release plan publishes when a window closes, for every team of at least k.

    `metric` is "" for adoption (a team-level statistic); `epsilon` applies to each noisy
    statistic it needs (sum and count for a mean). A later entry may name the level of an org
    tree it is released at; today every entry is released per team.
    """

    statistic: str
    metric: str
    epsilon: Epsilon

    def to_json(self) -> dict[str, Any]:
        return {"statistic": self.statistic, "metric": self.metric, "epsilon": str(self.epsilon)}

    def noisy_parts(self) -> list[tuple[str, str]]:
        """(metric, noisy statistic) pairs this entry releases; "" is the metric of active."""
        return [("" if part == "active" else self.metric, part) for part in NOISY_PARTS[self.statistic]]


def plan_parts(plan: tuple[PlanEntry, ...]) -> dict[tuple[str, str], Epsilon]:
    """(metric, noisy statistic) -> epsilon over the whole plan; each part once."""
    parts: dict[tuple[str, str], Epsilon] = {}
    for entry in plan:
        for part in entry.noisy_parts():
            parts.setdefault(part, entry.epsilon)
    return parts


@dataclass(frozen=True, slots=True)
class Policy:
    """Everything a window freezes at open: bounds, buckets, budget, k, default epsilons."""

    window_length: WindowLength
    grace_seconds: int
    metrics: tuple[MetricPolicy, ...]
    epsilon_per_window: Epsilon
    default_epsilon: dict[str, Epsilon]
    min_team_size: int
    retention_windows: int
    #: Released automatically, once, right after the window closes (chorus.server.domain.release).
    release_plan: tuple[PlanEntry, ...] = ()
    otlp: OtlpPolicy | None = None  # how OpenTelemetry instruments feed the metrics (otlp/mapping.py)

    _by_name: dict[str, MetricPolicy] = field(init=False, repr=False, compare=False)
    _slots: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
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

    def plan_cost(self) -> Epsilon:
        """What the release plan charges each released team-window: each noisy part once."""
        return sum((eps for eps in plan_parts(self.release_plan).values()), Epsilon(0))

    def to_json(self) -> dict[str, Any]:
        # An empty plan is left out, so the policies frozen before plans existed read the same.
        plan = {"release_plan": [e.to_json() for e in self.release_plan]} if self.release_plan else {}
        return {
            "window_length": self.window_length.value,
            "grace_seconds": self.grace_seconds,
            "metrics": [m.to_json() for m in self.metrics],
            "epsilon_per_window": str(self.epsilon_per_window),
            "default_epsilon": {k: str(v) for k, v in sorted(self.default_epsilon.items())},
            "min_team_size": self.min_team_size,
            "retention_windows": self.retention_windows,
            **plan,
            **({"otlp": self.otlp.to_json()} if self.otlp else {}),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Policy:
        return cls(
            window_length=WindowLength(data["window_length"]),
            grace_seconds=int(data["grace_seconds"]),
            metrics=tuple(
                MetricPolicy(m["name"], m["description"], int(m["max_per_user"]),
                             tuple(int(e) for e in m["histogram_edges"]))
                for m in data["metrics"]
            ),
            epsilon_per_window=Epsilon.parse(data["epsilon_per_window"]),
            default_epsilon={k: Epsilon.parse(v) for k, v in data["default_epsilon"].items()},
            min_team_size=int(data["min_team_size"]),
            retention_windows=int(data["retention_windows"]),
            release_plan=tuple(PlanEntry(str(e["statistic"]), str(e["metric"]), Epsilon.parse(e["epsilon"]))
                               for e in data.get("release_plan", ())),
            otlp=OtlpPolicy.from_json(data["otlp"]) if "otlp" in data else None,
        )
