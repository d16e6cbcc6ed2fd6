"""One OTLP metrics export, counted in one transaction through the ordinary ingest rules.

Per data point of a mapped instrument, in order: the window by `time_unix_nano` (late and
future points are rejected as for `Report`); the window's frozen mapping (an instrument or a
point its filter leaves out is ignored, not rejected); a countable kind and value; an identity
on the roster. Then a delta point counts its value once (its exactly-once key is recorded),
and a cumulative point counts its increase since the series' previous point (the first point
of a series, or one after a reset, counts in full). What counts becomes an ordinary
`Contribution`, counted through the same `IngestSession` as a `Report`'s (the window and
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
from dataclasses import dataclass
from datetime import UTC, datetime

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest

from chorus.server import store
from chorus.server.domain import windows as window_store
from chorus.server.domain.ingest import Contribution, Entrance, Ingestor, IngestSession, Outcome, Reason, Rejection
from chorus.server.domain.otlp import series
from chorus.server.domain.otlp.points import InvalidExport, Point, PointOutcome, count_points, flatten
from chorus.server.model import config
from chorus.server.model.clock import Clock
from chorus.server.model.config import Limits
from chorus.server.model.otlp_mapping import OtlpMapping
from chorus.server.model.policy import Policy
from chorus.server.store import Database, Tx

_log = logging.getLogger(__name__)
#: `_increase`'s answer for a point that only sets a series' baseline (values are never negative).
BASELINE = -1.0
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
            out[self.name(outcome)] += n  # type: ignore[arg-type]
        return dict(out)

    def points_by_instrument(self) -> dict[tuple[str, str], int]:
        """(outcome name, instrument label) -> data points, for Prometheus."""
        return {(self.name(outcome), instrument): n  # type: ignore[arg-type]
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
        points = sorted(flat.points, key=lambda p: p.time_ns)
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
        self._ingestor.stats.record_points(labelled)  # type: ignore[arg-type]
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
        ingest rules counted of the points' contributions (None when nothing was left to count)."""
        by_instrument: Counter[tuple[PointOutcome, str]] = Counter()
        open_keys: list[tuple[str, bytes]] | None = None
        closed_until_ns = 0  # the latest end of a closed window, read with open_keys
        # What counts, summed per (person, metric, time) before the ingest rules: an export often
        # carries several points per person (input and output tokens, several sessions).
        sums: dict[tuple[str, str, datetime], int] = {}
        deltas: list[tuple[tuple[str, bytes], Point, tuple[OtlpMapping, ...], datetime]] = []
        by_time: dict[int, tuple[datetime, window_store.OpenWindow | Rejection] | None] = {}  # points share times
        for p in points:
            if p.time_ns in by_time:
                cached = by_time[p.time_ns]
            else:
                try:
                    when = datetime.fromtimestamp(p.time_ns / 1e9, UTC)
                except (OverflowError, ValueError, OSError):
                    cached = None
                else:
                    cached = (when, session.window_at(when))
                by_time[p.time_ns] = cached
            if cached is None:
                by_instrument[(PointOutcome.BAD_TIME, p.instrument)] += 1
                continue
            when, window = cached
            if isinstance(window, Rejection):
                by_instrument[(PointOutcome.FUTURE if window.reason is Reason.FUTURE else PointOutcome.LATE,
                               p.instrument)] += 1
                continue
            frozen = window.record.policy.otlp
            mappings = frozen.admitted(p.instrument, p.strings, p.resource) if frozen else ()
            outcome = _check(p, mappings, session)
            if outcome is not None:
                by_instrument[(outcome, p.instrument)] += 1
                continue
            assert frozen is not None and p.identity is not None  # it admitted the point, which has one
            if p.value * frozen.max_scale(p.instrument) > MAX_VALUE:
                by_instrument[(PointOutcome.TOO_LARGE, p.instrument)] += 1
                continue
            if p.cumulative:
                if open_keys is None:
                    open_keys = store.windows.open_keys(tx)
                    closed_until_ns = (store.windows.closed_until(tx) or 0) * 10**9
                increase = self._increase(tx, window, open_keys, closed_until_ns, p)
                if increase is None:
                    by_instrument[(PointOutcome.DUPLICATE, p.instrument)] += 1
                    continue
                if increase is BASELINE:
                    by_instrument[(PointOutcome.BASELINE, p.instrument)] += 1
                    continue
                _add(sums, p.identity, increase, mappings, when)
                by_instrument[(PointOutcome.COUNTED, p.instrument)] += 1
            else:
                deltas.append(((window.record.id, series.point_key(window.key, p.series, p.time_ns)), p, mappings,
                               when))
        fresh = series.first_sights(tx, [pair for pair, *_ in deltas])
        for pair, p, mappings, when in deltas:
            if pair not in fresh:  # recorded by an earlier export, or earlier in this one
                by_instrument[(PointOutcome.DUPLICATE, p.instrument)] += 1
                continue
            fresh.discard(pair)
            assert p.identity is not None
            _add(sums, p.identity, p.value, mappings, when)
            by_instrument[(PointOutcome.COUNTED, p.instrument)] += 1
        if not sums:
            return by_instrument, None
        negative = sum(1 for value in sums.values() if value < 0)
        if negative:  # a subtracted count without its total in the same export: nothing to count
            by_instrument[(PointOutcome.IGNORED_NEGATIVE_NET, "")] += negative
        counted = session.count([Contribution(user, metric, value, when)
                                 for (user, metric, when), value in sums.items() if value > 0])
        if counted.clamped:
            by_instrument[(PointOutcome.CLAMPED, "")] += counted.clamped
        for r in counted.rejections:  # the checks above make this unreachable; never silent
            by_instrument[(_RULES[r.reason], "")] += 1
        return by_instrument, counted

    @staticmethod
    def _increase(tx: Tx, window: window_store.OpenWindow, open_keys: list[tuple[str, bytes]],
                  closed_until_ns: int, p: Point) -> float | None:
        """The increase a cumulative point carries; None when it is not newer than the series'
        last; BASELINE when it is the first seen of a series that started in a closed window."""
        assert p.identity is not None
        before = series.previous(tx, open_keys, p.identity, p.series)
        if before is not None and p.time_ns <= before.time_ns:
            return None  # a retry or an out-of-order point: already counted
        series.remember(tx, window.record.id, window.key, p.identity, p.series,
                        series.Previous(p.start_ns, p.time_ns, p.value))
        if before is None and p.start_ns < closed_until_ns:
            # A series that began before a closed window ended, unseen in any open one: part of its
            # count belongs to that window, whose state was deleted at its close. A baseline only.
            return BASELINE
        if before is None or before.start_ns != p.start_ns or p.value < before.value:
            return p.value  # first point of a series, or a reset: the increase since its start
        return p.value - before.value


def _check(p: Point, mappings: tuple[OtlpMapping, ...], session: IngestSession) -> PointOutcome | None:
    """Why a point in an open window counts nothing, in the order the rules are checked; None
    when it may count."""
    if not mappings:
        return PointOutcome.IGNORED_FILTERED
    if p.problem:
        return p.problem
    if p.identity is None:
        return PointOutcome.NO_IDENTITY
    if session.team_of(p.identity) is None:
        return PointOutcome.NOT_ON_ROSTER
    return None


def _add(sums: dict[tuple[str, str, datetime], int], person: str, increase: float,
         mappings: tuple[OtlpMapping, ...], when: datetime) -> None:
    """Add what a point's value (or increase) gives each metric it feeds, scaled and rounded."""
    for m in mappings:
        key = (person, m.metric, when)
        value = round(increase * m.scale)
        sums[key] = sums.get(key, 0) + (-value if m.subtract else value)
