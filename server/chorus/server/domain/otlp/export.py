"""One OTLP metrics export, counted in one transaction through the ordinary ingest rules.

Per data point of a mapped instrument, in order: the window by `time_unix_nano` (late and
future points are rejected as for `Report`); the window's frozen mapping (an instrument or a
point its filter leaves out is ignored, not rejected); a countable kind and value; an identity
on the roster. Then a delta point counts its value once (its exactly-once key is recorded),
and a cumulative point counts its increase since the series' previous point (the first point
of a series, or one after a reset, counts in full). What counts becomes an ordinary
contribution, counted through the same `IngestSession` as a `Report`'s (the window and
roster checks above are the session's too), so pseudonym, clamp, team at first contribution
and the usage row are exactly `Report`'s.

Every point gets one `PointOutcome`, recorded in the one `IngestStats` (GetStats and
Prometheus read it). Rejections are summarised by reason with counts; no message names a
person or an attribute.
"""

from __future__ import annotations

import logging
import tomllib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import NamedTuple

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest

from chorus.server import store
from chorus.server.domain import windows as window_store
from chorus.server.domain.ingest import Entrance, Grouped, Groups, Ingestor, IngestSession, Outcome, Reason, Rejection
from chorus.server.domain.otlp import series
from chorus.server.domain.otlp.points import InvalidExport, Point, PointOutcome, count_points, flatten
from chorus.server.model import config
from chorus.server.model.clock import Clock
from chorus.server.model.config import Limits
from chorus.server.model.otlp_mapping import OtlpMapping, OtlpPolicy
from chorus.server.model.policy import Policy
from chorus.server.store import Database, Tx

_log = logging.getLogger(__name__)
#: Scaled values (and cumulative totals) above this cannot be a real count.
MAX_VALUE = 2.0**62


@dataclass(frozen=True, slots=True)
class ExportResult:
    counted: int  # points whose value (or increase) went to a metric
    rejected: int  # partial_success.rejected_data_points
    error_message: str  # partial_success.error_message; empty when nothing was rejected
    outcomes: Counter[PointOutcome]  # every point's outcome


#: An instrument label for names neither the configuration nor the shipped presets know: a
#: client's invented name never becomes a Prometheus series.
OTHER = "other"
#: A warning per outcome (ignored or rejected) at most this often.
LOG_EVERY_SECONDS = 60.0
#: What an export's counted points add, per (time, person) and metric, before the ingest rules.
Sums = dict[tuple[datetime, str], dict[str, int]]
#: The ingest rules' rejections as point outcomes (unreachable after the export's own checks).
_RULES = {Reason.UNKNOWN_USER: PointOutcome.NOT_ON_ROSTER, Reason.UNKNOWN_METRIC: PointOutcome.UNKNOWN_METRIC,
          Reason.NEGATIVE_VALUE: PointOutcome.NEGATIVE_VALUE, Reason.LATE: PointOutcome.LATE,
          Reason.FUTURE: PointOutcome.FUTURE}


def _preset_instruments() -> frozenset[str]:
    otlp = config.parse(tomllib.loads(config.with_otlp_enabled(config.DEFAULT_TOML))).policy.otlp
    return frozenset(m.name for m in otlp.metrics) if otlp else frozenset()


class OtlpIngestor:
    """Counts OTLP exports through the `Ingestor`'s sessions, into its `IngestStats`."""

    def __init__(self, db: Database, policy: Policy, limits: Limits, clock: Clock, ingestor: Ingestor) -> None:
        self._db = db
        self._policy = policy
        self._limits = limits
        self._clock = clock
        self._ingestor = ingestor
        mapped = frozenset(m.name for m in policy.otlp.metrics) if policy.otlp else frozenset()
        self._known = mapped | _preset_instruments()
        self._identity = policy.otlp.identity_attributes if policy.otlp else ()
        self._logged: dict[PointOutcome, float] = {}  # outcome -> when it was last logged (clock seconds)

    def label(self, instrument: str) -> str:
        """An instrument's Prometheus label: its name if the configuration or a preset maps it."""
        return instrument if instrument in self._known else OTHER

    def name(self, outcome: PointOutcome) -> str:
        """An outcome's name in GetStats, Prometheus and the log."""
        return outcome.name_with(self._identity)

    def points(self) -> dict[str, int]:
        """OTLP data points by outcome name since start (GetStats' `otlp_points`)."""
        out: Counter[str] = Counter()
        for (outcome, _), n in self._ingestor.stats.snapshot().points.items():
            out[self.name(outcome)] += n
        return dict(out)

    def points_by_instrument(self) -> dict[tuple[str, str], int]:
        """(outcome name, instrument label) -> data points, for Prometheus."""
        return {(self.name(outcome), instrument): n
                for (outcome, instrument), n in self._ingestor.stats.snapshot().points.items()}

    def check(self, request: ExportMetricsServiceRequest) -> int:
        """The request's data point count; InvalidExport when it is over the limit."""
        points = count_points(request)
        if points > self._limits.max_batch_contributions:
            raise InvalidExport(f"the export has {points} data points; the limit per request is "
                                f"{self._limits.max_batch_contributions} (set the exporter's max_export_batch_size)",
                                "resource_metrics")
        return points

    def export(self, request: ExportMetricsServiceRequest) -> ExportResult:
        """Count a checked request; InvalidExport (nothing counted) for an attribute bomb."""
        flat = flatten(request, self._policy.otlp, self._limits.max_string_length)
        # Cumulative points of a series must be seen in time order.
        points = sorted(flat.points, key=_end) if flat.cumulative else flat.points
        now = self._clock.now()
        by_instrument, counted = self._db.run(lambda tx: self._apply(self._ingestor.session(tx, now), tx, points),
                                              name="otlp_export")
        for name, n in flat.unmapped.items():
            by_instrument[(PointOutcome.IGNORED_UNMAPPED, name)] += n
        labelled: Counter[tuple[PointOutcome, str]] = Counter()
        outcomes: Counter[PointOutcome] = Counter()
        for (outcome, name), n in by_instrument.items():
            labelled[(outcome, self.label(name))] += n
            outcomes[outcome] += n
        self._ingestor.stats.record_points(labelled)
        if counted is not None:
            self._ingestor.stats.record(Entrance.OTLP, counted)
        self._log_unusual(labelled, now.timestamp())
        rejected = {self.name(o).removeprefix("rejected: "): n for o, n in outcomes.items() if o.kind == "rejected"}
        total = sum(rejected.values())
        message = ""
        if total:
            message = f"{total} data point(s) rejected: " + "; ".join(
                f"{n} {reason}" for reason, n in sorted(rejected.items()))
        return ExportResult(outcomes[PointOutcome.COUNTED], total, message, outcomes)

    def _log_unusual(self, by_instrument: Counter[tuple[PointOutcome, str]], now: float) -> None:
        """Warn about ignored and rejected points, at most once a minute per outcome; the
        message names the outcome and instrument names (never an attribute value or person)."""
        unusual: dict[PointOutcome, Counter[str]] = {}
        for (outcome, name), n in by_instrument.items():
            if outcome.kind.startswith(("ignored", "rejected")):
                unusual.setdefault(outcome, Counter())[name] += n
        for outcome, names in sorted(unusual.items(), key=lambda item: item[0].value):
            if now - self._logged.get(outcome, -LOG_EVERY_SECONDS) >= LOG_EVERY_SECONDS:
                self._logged[outcome] = now
                _log.warning("OTLP: %d data point(s) %s (%s); this warning repeats at most once a minute",
                             sum(names.values()), self.name(outcome).replace(": ", " "),
                             ", ".join(f"{name}: {n}" for name, n in sorted(names.items())))

    def _apply(self, session: IngestSession, tx: Tx,
               points: list[Point]) -> tuple[Counter[tuple[PointOutcome, str]], Outcome | None]:
        """Each point's outcome by instrument (an instrument-less outcome under ""), and what the
        ingest rules counted of the points' contributions (None when nothing was left to count).

        Per point only dictionary lookups: the window by end time, the mappings a point's filter
        values admit and the per-window key hasher are resolved once per distinct value; the
        exactly-once keys and the cumulative series' state are read and written in bulk."""
        by_instrument: Counter[tuple[PointOutcome, str]] = Counter()
        current = self._policy.otlp
        named = current.named_attributes if current else frozenset()
        # What counts, summed per (time, person) and metric before the ingest rules: an export
        # often carries several points per person (input and output tokens, several sessions).
        sums: Sums = {}
        # Delta points by exactly-once key, added to `sums` at once: usually none was seen before,
        # and those that were are taken away again once the store has said which.
        deltas: dict[tuple[str, bytes], tuple[Point, tuple[OtlpMapping, ...], datetime]] = {}
        counted: Counter[str] = Counter()  # by instrument (str keys hash faster than the enum's)
        duplicate: Counter[str] = Counter()
        cumulative: list[tuple[window_store.OpenWindow, Point, tuple[OtlpMapping, ...], datetime]] = []
        by_time: dict[int, _At] = {}  # an export's points share a few end times
        windows: dict[str, _Window] = {}
        # (window, stream) -> (the keys its mappings filter on, mappings admitted by their values)
        admitted: dict[tuple[str, int], tuple[tuple[str, ...], dict[object, _Admitted]]] = {}
        team_of = session.team_of
        for p in points:
            at = by_time.get(p.time_ns)
            if at is None:
                at = by_time[p.time_ns] = _at(session, p.time_ns, windows, named)
            stream = p.stream
            instrument = stream.instrument
            w = at.window
            if w is None:
                assert at.refused is not None
                by_instrument[(at.refused, instrument)] += 1
                continue
            frozen = w.frozen
            if frozen is None:
                by_instrument[(PointOutcome.IGNORED_FILTERED, instrument)] += 1
                continue
            # A window frozen with other filters than the configuration's may read other attributes.
            strings = _strings(p) if w.reads_more else p.strings
            of_stream = admitted.get((w.id, id(stream)))
            if of_stream is None:
                of_stream = admitted[(w.id, id(stream))] = (frozen.filter_keys(instrument), {})
            filter_keys, by_values = of_stream
            # Mappings usually filter on one attribute: its value alone is the cache key.
            values = strings.get(filter_keys[0]) if len(filter_keys) == 1 else tuple(map(strings.get, filter_keys))
            found = by_values.get(values)
            if found is None:
                mappings = frozen.admitted(instrument, strings, stream.resource)
                found = by_values[values] = _Admitted(mappings, frozen.max_scale(instrument) if mappings else 0)
            mappings = found.mappings
            if not mappings:
                outcome = PointOutcome.IGNORED_FILTERED
            elif p.problem:
                outcome = p.problem
            elif p.identity is None:
                outcome = PointOutcome.NO_IDENTITY
            elif team_of(p.identity) is None:
                outcome = PointOutcome.NOT_ON_ROSTER
            elif p.value * found.scale > MAX_VALUE:
                outcome = PointOutcome.TOO_LARGE
            elif stream.cumulative:
                cumulative.append((w.window, p, mappings, at.when))
                continue
            else:
                key = (w.id, w.point_key(p.series, at.minute))
                if key in deltas:  # the same point twice in one export
                    duplicate[instrument] += 1
                else:
                    deltas[key] = (p, mappings, at.when)
                    _add(sums, p.identity, p.value, mappings, at.when)
                    counted[instrument] += 1
                continue
            by_instrument[(outcome, instrument)] += 1
        if cumulative:
            self._cumulative(tx, cumulative, sums, by_instrument)
        fresh = series.first_sights(tx, list(deltas))
        if len(fresh) < len(deltas):
            for key, (p, mappings, when) in deltas.items():
                if key not in fresh:  # recorded by an earlier export: counts nothing
                    assert p.identity is not None
                    _add(sums, p.identity, -p.value, mappings, when)  # exact: round(-x) == -round(x)
                    counted[p.stream.instrument] -= 1
                    duplicate[p.stream.instrument] += 1
        for outcome, names in ((PointOutcome.COUNTED, counted), (PointOutcome.DUPLICATE, duplicate)):
            for name, n in names.items():
                if n:
                    by_instrument[(outcome, name)] += n
        grouped, negative = _grouped(sums)
        if negative:  # a subtracted count without its total in the same export: nothing to count
            by_instrument[(PointOutcome.IGNORED_NEGATIVE_NET, "")] += negative
        if not grouped.size:
            return by_instrument, None
        rules = session.count(grouped)
        if rules.clamped:
            by_instrument[(PointOutcome.CLAMPED, "")] += rules.clamped
        for r in rules.rejections:  # the checks above make this unreachable; never silent
            by_instrument[(_RULES[r.reason], "")] += 1
        return by_instrument, rules

    @staticmethod
    def _cumulative(tx: Tx, points: list[tuple[window_store.OpenWindow, Point, tuple[OtlpMapping, ...], datetime]],
                    sums: Sums,
                    by_instrument: Counter[tuple[PointOutcome, str]]) -> None:
        """Count the increases cumulative points carry, in time order: a point not newer than its
        series' latest (in any open window) is a duplicate; the first seen of a series that began
        before a closed window ended only sets a baseline; else the increase since the previous
        point (in full for a series' first point or after a reset). The series' latest points are
        read in bulk first, followed in memory through the export, and written in bulk."""
        open_keys = store.windows.open_keys(tx)
        closed_until_ns = (store.windows.closed_until(tx) or 0) * 10**9
        latest = series.latest(tx, open_keys, [(p.identity or "", p.series) for _, p, _, _ in points])
        remembered: list[tuple[str, bytes, str, bytes, series.Previous]] = []
        for window, p, mappings, when in points:
            assert p.identity is not None
            pair = (p.identity, p.series)
            before = latest.get(pair)
            if before is not None and p.time_ns <= before.time_ns:
                by_instrument[(PointOutcome.DUPLICATE, p.stream.instrument)] += 1  # a retry, or out of order
                continue
            latest[pair] = point = series.Previous(p.start_ns, p.time_ns, p.value)
            remembered.append((window.record.id, window.key, p.identity, p.series, point))
            if before is None and p.start_ns < closed_until_ns:
                # A series that began before a closed window ended, unseen in any open one: part of its
                # count belongs to that window, whose state was deleted at its close. A baseline only.
                by_instrument[(PointOutcome.BASELINE, p.stream.instrument)] += 1
                continue
            if before is None or before.start_ns != p.start_ns or p.value < before.value:
                increase = p.value  # first point of a series, or a reset: the increase since its start
            else:
                increase = p.value - before.value
            _add(sums, p.identity, increase, mappings, when)
            by_instrument[(PointOutcome.COUNTED, p.stream.instrument)] += 1
        series.remember(tx, remembered)


class _Window(NamedTuple):
    """An open window as an export's points use it, resolved once per export."""

    window: window_store.OpenWindow
    id: str
    frozen: OtlpPolicy | None
    reads_more: bool  # its frozen filters or identity name attributes the configuration's do not
    point_key: Callable[[bytes, bytes], bytes]


class _At(NamedTuple):
    """What a point's end time decides: its window (None: `refused` says why) and key minute."""

    when: datetime
    window: _Window | None
    refused: PointOutcome | None
    minute: bytes


class _Admitted(NamedTuple):
    mappings: tuple[OtlpMapping, ...]
    scale: int  # the largest of their scales


def _at(session: IngestSession, time_ns: int, windows: dict[str, _Window], named: frozenset[str]) -> _At:
    try:
        when = datetime.fromtimestamp(time_ns / 1e9, UTC)
    except (OverflowError, ValueError, OSError):
        return _At(datetime.min, None, PointOutcome.BAD_TIME, b"")
    found = session.window_at(when)
    if isinstance(found, Rejection):
        return _At(when, None, PointOutcome.FUTURE if found.reason is Reason.FUTURE else PointOutcome.LATE, b"")
    window = windows.get(found.record.id)
    if window is None:
        frozen = found.record.policy.otlp
        window = windows[found.record.id] = _Window(
            found, found.record.id, frozen, frozen is not None and not frozen.named_attributes <= named,
            series.point_keys(found.key))
    return _At(when, window, None, series.minute(time_ns))


def _end(p: Point) -> int:
    return p.time_ns


def _strings(p: Point) -> dict[str, str]:
    """All of a point's string attributes (non-string values read as "")."""
    return {kv.key: kv.value.string_value for kv in p.attributes}


def _add(sums: Sums, person: str, increase: float, mappings: tuple[OtlpMapping, ...], when: datetime) -> None:
    """Add what a point's value (or increase) gives each metric it feeds, scaled and rounded."""
    totals = sums.get((when, person))
    if totals is None:
        totals = sums[(when, person)] = {}
    for m in mappings:
        value = round(increase * m.scale)
        totals[m.metric] = totals.get(m.metric, 0) + (-value if m.subtract else value)


def _grouped(sums: Sums) -> tuple[Grouped, int]:
    """What an export counts as a batch grouped by (time, person), as `ingest.group` groups one
    (the identities are normalised already), and the sums below zero, which count nothing."""
    groups: Groups = {}
    metrics: set[str] = set()
    index = negative = 0
    for person, totals in sums.items():
        entries = []
        for metric, value in totals.items():
            if value > 0:
                entries.append((index, metric, value))
                metrics.add(metric)
                index += 1
            elif value < 0:
                negative += 1
        if entries:
            groups[person] = entries
    return Grouped(index, groups, metrics), negative
