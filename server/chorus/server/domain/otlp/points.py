"""An OTLP `ExportMetricsServiceRequest` as a list of data points Chorus may count.

Only what counting needs survives this module: the instrument name, temporality, the value,
the two timestamps, the string attributes a mapping filters on, the identity, and a SHA-256
digest naming the point's series (resource, scope, instrument and every point attribute; for
a delta point, the point's exact bytes). Neither is stored as is: `series` keys them with
the window's secret. Everything else in the export (session ids, models, any other
attribute) is dropped here, in memory.

Instruments no mapping names are skipped without decoding their points, so a tool that
exports many instruments costs little beyond the few that count.
"""

from __future__ import annotations

import enum
import hashlib
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import KeyValue
from opentelemetry.proto.metrics.v1 import metrics_pb2

from chorus.server.model import user_ids
from chorus.server.model.otlp_mapping import OtlpPolicy

#: Attributes per data point or resource; more is an attribute bomb, refused whole.
MAX_ATTRIBUTES = 128
_CUMULATIVE = metrics_pb2.AGGREGATION_TEMPORALITY_CUMULATIVE
_DELTA = metrics_pb2.AGGREGATION_TEMPORALITY_DELTA
_NO_RECORDED_VALUE = metrics_pb2.DATA_POINT_FLAGS_NO_RECORDED_VALUE_MASK


class PointOutcome(enum.Enum):
    """What became of one OTLP data point: GetStats' `otlp_points` key is the value, Prometheus'
    `chorus_otlp_data_points_total` labels are `kind` and `reason`. Reasons name a rule, never a
    person or an attribute value; NO_IDENTITY's names the configured identity attributes."""

    COUNTED = "counted"
    DUPLICATE = "duplicate"  # a delta point's key, or a cumulative point not newer than its series'
    BASELINE = "baseline"  # the first point seen of a series that began in a closed window
    CLAMPED = "clamped"  # a contribution summed from points, above the metric's bound
    IGNORED_UNMAPPED = "ignored_unmapped"  # no mapping names the instrument
    IGNORED_FILTERED = "ignored_filtered"  # the window's mapping filter leaves the point out
    IGNORED_NEGATIVE_NET = "ignored_negative_net"  # a subtracted count without its total
    GAUGE = "rejected: a gauge cannot be summed (map a monotonic sum or a histogram)"
    SUMMARY = "rejected: a summary cannot be summed (map a monotonic sum or a histogram)"
    NON_MONOTONIC = "rejected: a non-monotonic sum cannot be counted (map a monotonic sum)"
    NO_TEMPORALITY = "rejected: aggregation temporality is unspecified"
    NO_SUM = "rejected: a histogram point without a sum"
    NOT_FINITE = "rejected: a value that is NaN or infinite"
    NEGATIVE = "rejected: a negative value"
    BAD_TIME = "rejected: with a time_unix_nano outside years 1..9999"
    LATE = "rejected: late (window not taking contributions)"
    FUTURE = "rejected: future (window not taking contributions)"
    NO_IDENTITY = "rejected: without an identity attribute"
    NOT_ON_ROSTER = "rejected: with an identity not on the roster"
    TOO_LARGE = "rejected: a value too large to be a count"
    #: The ingest rules' own rejections: the checks before them make these unreachable; never silent.
    UNKNOWN_METRIC = "rejected: unknown_metric"
    NEGATIVE_VALUE = "rejected: negative_value"

    @property
    def kind(self) -> str:
        """counted, duplicate, baseline, clamped, ignored_..., or rejected."""
        return self.value.partition(": ")[0]

    def name_with(self, identity_attributes: Sequence[str]) -> str:
        """The outcome's name (GetStats key, log and partial_success text)."""
        if self is PointOutcome.NO_IDENTITY:
            return f"{self.value} ({', '.join(identity_attributes)})"
        return self.value


class InvalidExport(ValueError):
    """The request as a whole is refused (nothing of it is counted); the message names the limit
    and `field` the part of the request that broke it (a BadRequest field path)."""

    def __init__(self, message: str, field: str) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True, slots=True)
class Stream:
    """What the points of one metric in one export share, resolved once per metric."""

    instrument: str
    cumulative: bool
    problem: PointOutcome | None  # why none of its points can count (its kind or temporality)
    resource: dict[str, str]  # its resource's string attributes, for mapping resource filters
    resource_identity: str | None  # the identity its resource names, for points that name none


class Point(NamedTuple):
    """One data point of a mapped instrument. `problem` says why it cannot count, if it cannot."""

    stream: Stream
    value: float
    start_ns: int
    time_ns: int
    #: The point's string attributes that the configuration's filters or identity name (by the
    #: current configuration; `attributes` has the rest for a window whose frozen filters differ).
    strings: dict[str, str]
    attributes: Sequence[KeyValue]
    identity: str | None
    series: bytes  # cumulative: SHA-256 of the series; delta: the bytes naming the point (see _points)
    problem: PointOutcome | None


@dataclass(frozen=True, slots=True)
class Flattened:
    points: list[Point]
    unmapped: Counter[str]  # data points of instruments no mapping names, by instrument name
    cumulative: bool  # whether any point is cumulative (their series need time order)


def count_points(request: ExportMetricsServiceRequest) -> int:
    """Data points in a request, counted without decoding any of them."""
    total = 0
    for resource_metrics in request.resource_metrics:
        for scope_metrics in resource_metrics.scope_metrics:
            for metric in scope_metrics.metrics:
                kind = metric.WhichOneof("data")
                if kind is not None:
                    total += len(getattr(metric, kind).data_points)
    return total


def flatten(request: ExportMetricsServiceRequest, policy: OtlpPolicy | None, max_string: int) -> Flattened:
    """The points of mapped instruments (by `policy`, the current configuration's mapping).

    One pass over the decoded message: of a point's attributes only the keys are read, and the
    values of those the configuration names (identity and filter attributes)."""
    points: list[Point] = []
    unmapped: Counter[str] = Counter()
    identities: dict[str, str | None] = {}  # raw -> normalised identity, once per distinct value
    cumulative = False
    for resource_metrics in request.resource_metrics:
        resource_attrs = resource_metrics.resource.attributes
        resource_digest: bytes | None = None
        resource_strings: dict[str, str] = {}
        resource_identity: str | None = None
        for scope_metrics in resource_metrics.scope_metrics:
            for metric in scope_metrics.metrics:
                kind = metric.WhichOneof("data")
                if kind is None:
                    continue
                data = getattr(metric, kind)
                if policy is None or not policy.mappings(metric.name):
                    unmapped[metric.name] += len(data.data_points)
                    continue
                if resource_digest is None:
                    _check_bomb(resource_attrs, "resource")
                    resource_strings = {kv.key: kv.value.string_value for kv in resource_attrs}
                    resource_digest = _attribute_digest(resource_attrs)
                    resource_identity = _identity(policy.identity_attributes, resource_strings, max_string,
                                                  identities)
                stream = hashlib.sha256(resource_digest)
                stream.update(b"\0scope\0" + scope_metrics.scope.name.encode() + b"\0metric\0" + metric.name.encode())
                points.extend(_points(metric.name, kind, data, stream.digest(), resource_strings, resource_identity,
                                      policy, max_string, identities))
                cumulative = cumulative or getattr(data, "aggregation_temporality", 0) == _CUMULATIVE
    return Flattened(points, unmapped, cumulative)


def _points(name: str, kind: str, data: metrics_pb2.Sum, prefix: bytes, resource: dict[str, str],
            resource_identity: str | None, policy: OtlpPolicy, max_string: int,
            identities: dict[str, str | None]) -> Iterable[Point]:
    temporality = getattr(data, "aggregation_temporality", 0)
    problem = None
    if kind == "gauge":
        problem = PointOutcome.GAUGE
    elif kind == "summary":
        problem = PointOutcome.SUMMARY
    elif kind == "sum" and not data.is_monotonic:
        problem = PointOutcome.NON_MONOTONIC
    elif temporality not in (_CUMULATIVE, _DELTA):
        problem = PointOutcome.NO_TEMPORALITY
    cumulative = temporality == _CUMULATIVE
    stream = Stream(name, cumulative, problem, resource, resource_identity)
    sha256 = hashlib.sha256
    names = policy.identity_attributes
    wanted = policy.named_attributes
    value_of = _VALUE.get(kind, _no_value)
    new = tuple.__new__  # a Point without NamedTuple's Python-level __new__, per point
    for point in data.data_points:
        if point.flags & _NO_RECORDED_VALUE:
            continue  # a staleness marker, not a value
        attrs = point.attributes
        if len(attrs) > MAX_ATTRIBUTES:
            _check_bomb(attrs, "data point")
        # Non-string values read as "": they match no filter and are no identity.
        strings = {}
        for kv in attrs:
            key = kv.key
            if key in wanted:
                strings[key] = kv.value.string_value
        if cumulative:  # the series: its whole attribute set, in any order
            series = sha256(prefix + _attribute_digest(attrs)).digest()
        else:
            # A delta point counts once: its exact bytes (attributes, times and value) name it, and
            # an exporter's retry resends them unchanged. They are only ever hashed under the
            # window key (series.point_key), so they are not digested here.
            series = prefix + point.SerializeToString(deterministic=True)
        identity = resource_identity
        for attribute in names:
            raw = strings.get(attribute)
            if raw is not None:
                identity = identities[raw] if raw in identities else _normalised(raw, max_string, identities)
                break
        value, why = value_of(point)
        yield new(Point, (stream, value, point.start_time_unix_nano, point.time_unix_nano, strings, attrs, identity,
                          series, problem or why))


def _checked(value: float) -> tuple[float, PointOutcome | None]:
    if not math.isfinite(value):
        return 0.0, PointOutcome.NOT_FINITE
    if value < 0:
        return 0.0, PointOutcome.NEGATIVE
    return value, None


def _number(point: Any) -> tuple[float, PointOutcome | None]:
    """A Number point's value: as_double, else as_int (an unset oneof reads 0 either way)."""
    value = point.as_double or float(point.as_int)
    return (value, None) if 0 <= value < math.inf else _checked(value)


def _histogram(point: Any) -> tuple[float, PointOutcome | None]:
    """A Histogram or ExponentialHistogram point's countable value: its sum."""
    if not point.HasField("sum"):
        return 0.0, PointOutcome.NO_SUM
    return _checked(point.sum)


def _no_value(point: Any) -> tuple[float, PointOutcome | None]:
    return 0.0, None  # a gauge or summary: its stream's problem says why


_VALUE = {"sum": _number, "histogram": _histogram, "exponential_histogram": _histogram}


def _identity(names: Sequence[str], strings: dict[str, str], limit: int,
              identities: dict[str, str | None]) -> str | None:
    """The first identity attribute present in `strings`, normalised (None if none or not a valid id)."""
    for name in names:
        raw = strings.get(name)
        if raw is not None:
            return identities[raw] if raw in identities else _normalised(raw, limit, identities)
    return None


def _normalised(raw: str, limit: int, identities: dict[str, str | None]) -> str | None:
    value = user_ids.normalise(raw)
    identity = identities[raw] = value if 0 < len(value) <= limit and value.isprintable() else None
    return identity


def _attribute_digest(attrs: Sequence[KeyValue]) -> bytes:
    """SHA-256 of an attribute set, independent of the order the exporter sent it in."""
    # repr of sorted (str, bytes) pairs is unambiguous: quotes and escapes delimit every item.
    return hashlib.sha256(repr(sorted((kv.key, kv.value.SerializeToString(deterministic=True))
                                      for kv in attrs)).encode()).digest()


def _check_bomb(attrs: Sequence[KeyValue], where: str) -> None:
    if len(attrs) > MAX_ATTRIBUTES:
        raise InvalidExport(f"a {where} has {len(attrs)} attributes; the limit is {MAX_ATTRIBUTES}",
                            f"{where.replace(' ', '_')}.attributes")
