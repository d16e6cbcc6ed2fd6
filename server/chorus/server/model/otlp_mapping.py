"""The `[otlp]` configuration: which OpenTelemetry instruments feed which Chorus metrics.

It is validated at start (every mapped metric must be in `[[metrics]]`) and frozen into each
window's policy with the metric bounds, so a mapping change applies from the next window,
and the ledger's `window_open` entry records what each window counted.

Errors raise `ValueError` naming the key, the value and the rule; `config.parse` reports
them as `ConfigError` (this module cannot import `config`, which imports it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

#: Keys of the `[otlp]` table and of each `[[otlp.metrics]]` entry, registered in config.KNOWN_KEYS
#: (which refuses any other key).
KNOWN_KEYS = frozenset({"identity_attributes", "metrics"})
KNOWN_MAPPING_KEYS = frozenset({"name", "metric", "attributes", "resource", "scale", "subtract"})
MAX_NAME = 255
MAX_SCALE = 10**12
#: Bounds on what one mapping or identity list may name (the config is not a place for data).
MAX_IDENTITY_ATTRIBUTES = 16
MAX_MAPPINGS = 256
MAX_FILTER_VALUES = 64


@dataclass(frozen=True, slots=True)
class OtlpMapping:
    """Data points of instrument `name` whose attributes pass `attributes` feed `metric`.

    `attributes` maps an attribute key to the string values a point may carry there; a point
    passes when every listed key is present with one of its values. `resource` is the same
    filter on the exporter's resource attributes (e.g. `service.name`), which scopes a
    convention shared by several tools to the one whose own instruments are not mapped.
    Values are multiplied by `scale` and rounded to the nearest integer. `subtract` takes the
    value away instead: a tool whose input count includes cache reads (Gemini CLI, Codex) maps
    its cache-read count with it, so `ai.tokens` means the same for every tool. The result is
    summed per person and export before counting, and a net below zero counts nothing.
    """

    name: str
    metric: str
    attributes: tuple[tuple[str, frozenset[str]], ...] = ()
    scale: int = 1
    resource: tuple[tuple[str, frozenset[str]], ...] = ()
    subtract: bool = False

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"name": self.name, "metric": self.metric, "scale": self.scale,
                                "attributes": {key: sorted(values) for key, values in self.attributes}}
        if self.resource:  # written only when set, so existing windows' policies read the same
            data["resource"] = {key: sorted(values) for key, values in self.resource}
        if self.subtract:
            data["subtract"] = True
        return data

    def passes(self, strings: dict[str, str], resource: dict[str, str]) -> bool:
        """Whether a point with these attributes (and its resource's) passes both filters."""
        return (all(strings.get(key) in allowed for key, allowed in self.attributes)
                and all(resource.get(key) in allowed for key, allowed in self.resource))


@dataclass(frozen=True, slots=True)
class OtlpPolicy:
    identity_attributes: tuple[str, ...]
    metrics: tuple[OtlpMapping, ...]

    _by_name: dict[str, tuple[OtlpMapping, ...]] = field(init=False, repr=False, compare=False)
    _unfiltered: frozenset[str] = field(init=False, repr=False, compare=False)
    _max_scale: dict[str, int] = field(init=False, repr=False, compare=False)
    #: Every point attribute the policy reads: the identity attributes and the filters' keys.
    named_attributes: frozenset[str] = field(init=False, repr=False, compare=False)
    _filter_keys: dict[str, tuple[str, ...]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        by_name: dict[str, list[OtlpMapping]] = {}
        for mapping in self.metrics:
            by_name.setdefault(mapping.name, []).append(mapping)
        object.__setattr__(self, "_by_name", {k: tuple(v) for k, v in by_name.items()})
        object.__setattr__(self, "_unfiltered", frozenset(
            name for name, ms in by_name.items() if not any(m.attributes or m.resource for m in ms)))
        object.__setattr__(self, "_max_scale", {name: max(m.scale for m in ms) for name, ms in by_name.items()})
        object.__setattr__(self, "_filter_keys", {name: tuple(sorted({k for m in ms for k, _ in m.attributes}))
                                                  for name, ms in by_name.items()})
        object.__setattr__(self, "named_attributes", frozenset(self.identity_attributes).union(
            *self._filter_keys.values()))

    def mappings(self, instrument: str) -> tuple[OtlpMapping, ...]:
        """The mappings of an instrument; empty when it is not mapped."""
        return self._by_name.get(instrument, ())

    def admitted(self, instrument: str, strings: dict[str, str],
                 resource: dict[str, str]) -> tuple[OtlpMapping, ...]:
        """The mappings a data point of `instrument` with these string attributes (and its
        resource's) feeds, once per point."""
        mappings = self._by_name.get(instrument, ())
        if instrument in self._unfiltered:
            return mappings
        return tuple(m for m in mappings if m.passes(strings, resource))

    def filter_keys(self, instrument: str) -> tuple[str, ...]:
        """The point attributes the mappings of `instrument` filter on: `admitted` depends on a
        point only through their values (and its resource)."""
        return self._filter_keys.get(instrument, ())

    def max_scale(self, instrument: str) -> int:
        """The largest scale among a mapped instrument's mappings."""
        return self._max_scale[instrument]

    def to_json(self) -> dict[str, Any]:
        return {"identity_attributes": list(self.identity_attributes),
                "metrics": [m.to_json() for m in self.metrics]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> OtlpPolicy:
        return cls(tuple(data["identity_attributes"]), tuple(
            OtlpMapping(m["name"], m["metric"], _filters(m["attributes"]), int(m["scale"]),
                        _filters(m.get("resource", {})), bool(m.get("subtract", False)))
            for m in data["metrics"]))


def _filters(raw: dict[str, list[str]]) -> tuple[tuple[str, frozenset[str]], ...]:
    return tuple(sorted((k, frozenset(v)) for k, v in raw.items()))


def parse_otlp(raw: dict[str, Any], metric_names: list[str]) -> OtlpPolicy | None:
    """Validate the decoded `[otlp]` table; None when there is none (OTLP points are then ignored)."""
    if not raw:
        return None
    identity = raw.get("identity_attributes")
    if (not isinstance(identity, list) or not identity or len(identity) > MAX_IDENTITY_ATTRIBUTES
            or not all(_is_name(a) for a in identity) or len(set(identity)) != len(identity)):
        raise ValueError(f"otlp.identity_attributes = {identity!r}: must be a list of 1 to "
                         f"{MAX_IDENTITY_ATTRIBUTES} distinct attribute names, e.g. [\"user.email\"]")
    mappings_raw = raw.get("metrics", [])
    if not isinstance(mappings_raw, list) or len(mappings_raw) > MAX_MAPPINGS:
        raise ValueError(f"[[otlp.metrics]] must be a list of at most {MAX_MAPPINGS} tables")
    mappings = tuple(_mapping(m, i, metric_names) for i, m in enumerate(mappings_raw))
    return OtlpPolicy(tuple(identity), mappings)


def _is_name(value: object) -> bool:
    return isinstance(value, str) and 0 < len(value) <= MAX_NAME and value.isprintable()


def _mapping(raw: object, index: int, metric_names: list[str]) -> OtlpMapping:
    where = f"otlp.metrics[{index}]"
    if not isinstance(raw, dict):
        raise ValueError(f"{where} must be a table")
    name = raw.get("name")
    if not _is_name(name):
        raise ValueError(f"{where}.name = {name!r}: the OpenTelemetry instrument name, 1 to {MAX_NAME} "
                         "printable characters")
    metric = raw.get("metric")
    if metric not in metric_names:
        raise ValueError(f"{where}.metric = {metric!r} ({name}): must be one of the [[metrics]] names "
                         f"{metric_names}")
    scale = raw.get("scale", 1)
    if isinstance(scale, bool) or not isinstance(scale, int) or not 1 <= scale <= MAX_SCALE:
        raise ValueError(f"{where}.scale = {scale!r} ({name}): must be an integer in [1, {MAX_SCALE}]")
    subtract = raw.get("subtract", False)
    if not isinstance(subtract, bool):
        raise ValueError(f"{where}.subtract = {subtract!r} ({name}): must be true or false")
    return OtlpMapping(str(name), str(metric), _filter_table(raw, "attributes", where, name), scale,
                       _filter_table(raw, "resource", where, name), subtract)


def _filter_table(raw: dict[str, Any], table: str, where: str, name: object) -> tuple[tuple[str, frozenset[str]], ...]:
    filters = raw.get(table, {})
    if not isinstance(filters, dict):
        raise ValueError(f"{where}.{table} ({name}) must be a table like {{ type = [\"input\"] }}")
    out = []
    for key, values in sorted(filters.items()):
        allowed = [values] if isinstance(values, str) else values
        if (not _is_name(key) or not isinstance(allowed, list) or not 0 < len(allowed) <= MAX_FILTER_VALUES
                or not all(isinstance(v, str) and len(v) <= MAX_NAME for v in allowed)):
            raise ValueError(f"{where}.{table}.{key} = {values!r} ({name}): must be a string or a list of "
                             f"1 to {MAX_FILTER_VALUES} strings")
        out.append((key, frozenset(allowed)))
    return tuple(out)
