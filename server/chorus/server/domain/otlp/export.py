"""One OTLP metrics export, counted in one transaction through the ordinary ingest rules.

Per data point of a mapped instrument, in order: the window by `time_unix_nano` (late and
future points are rejected as for `Report`); the window's frozen mapping (an instrument or a
point its filter leaves out is ignored, not rejected); a countable kind and value; an identity
on the roster. Then a delta point counts its value once (its exactly-once key is recorded),
and a cumulative point counts its increase since the series' previous point (the first point
of a series, or one after a reset, counts in full). What counts becomes an ordinary
`Contribution`, so pseudonym, clamp, team at first contribution and the usage row are
exactly `Ingestor.count`'s.

Rejections are summarised by reason with counts; no message names a person or an attribute.
"""

from __future__ import annotations

import logging
import threading
import tomllib
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest

from chorus.server import store
from chorus.server.domain import windows as window_store
from chorus.server.domain.ingest import Contribution, Ingestor, Rejection
from chorus.server.domain.otlp import series
from chorus.server.domain.otlp.points import InvalidExport, Point, count_points, flatten
from chorus.server.domain.roster import RosterCache
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
    outcomes: Counter[str]  # every point's outcome, for the operator's counters


#: An instrument label for names neither the configuration nor the shipped presets know: a
#: client's invented name never becomes a Prometheus series.
OTHER = "other"
#: A warning per outcome (ignored or rejected) at most this often.
LOG_EVERY_SECONDS = 60.0


def _preset_instruments() -> frozenset[str]:
    otlp = config.parse(tomllib.loads(config.with_otlp_enabled(config.DEFAULT_TOML))).policy.otlp
    return frozenset(m.name for m in otlp.metrics) if otlp else frozenset()


class OtlpStats:
    """Data points by outcome since start (counted, duplicate, ignored_..., rejected: ...), and by
    (outcome, instrument) for the operator's counters, with instrument names limited to `known`."""

    def __init__(self, known: frozenset[str] = frozenset()) -> None:
        self._lock = threading.Lock()
        self._known = known
        self._counts: Counter[str] = Counter()
        self._by_instrument: Counter[tuple[str, str]] = Counter()

    def record(self, outcomes: Counter[str], by_instrument: Counter[tuple[str, str]] | None = None) -> None:
        with self._lock:
            self._counts.update(outcomes)
            for (outcome, name), n in (by_instrument or Counter()).items():
                self._by_instrument[(outcome, self.label(name))] += n

    def label(self, instrument: str) -> str:
        return instrument if instrument in self._known else OTHER

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)

    def by_instrument(self) -> dict[tuple[str, str], int]:
        """(outcome, instrument label) -> data points, for Prometheus."""
        with self._lock:
            return dict(self._by_instrument)


class OtlpIngestor:
    def __init__(self, db: Database, policy: Policy, limits: Limits, clock: Clock, roster: RosterCache,
                 ingestor: Ingestor) -> None:
        self._db = db
        self._policy = policy
        self._limits = limits
        self._clock = clock
        self._roster = roster
        self._ingestor = ingestor
        mapped = frozenset(m.name for m in policy.otlp.metrics) if policy.otlp else frozenset()
        self.stats = OtlpStats(mapped | _preset_instruments())
        self._logged: dict[str, float] = {}  # outcome -> when it was last logged (clock seconds)

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
        outcomes, by_instrument = self._db.run(lambda tx: self._apply(tx, points, now), name="otlp_export")
        for name, n in flat.unmapped.items():
            outcomes["ignored_unmapped"] += n
            by_instrument[("ignored_unmapped", name)] += n
        self.stats.record(outcomes, by_instrument)
        self._log_unusual(by_instrument, now.timestamp())
        rejected = {k.removeprefix("rejected: "): v for k, v in outcomes.items() if k.startswith("rejected: ")}
        total = sum(rejected.values())
        message = ""
        if total:
            message = f"{total} data point(s) rejected: " + "; ".join(
                f"{n} {reason}" for reason, n in sorted(rejected.items()))
        return ExportResult(outcomes["counted"], total, message, outcomes)

    def _log_unusual(self, by_instrument: Counter[tuple[str, str]], now: float) -> None:
        """Warn about ignored and rejected points, at most once a minute per outcome; the
        message names the outcome and instrument names (never an attribute value or person)."""
        unusual: dict[str, Counter[str]] = {}
        for (outcome, name), n in by_instrument.items():
            if outcome.startswith(("ignored", "rejected")):
                unusual.setdefault(outcome, Counter())[self.stats.label(name)] += n
        for outcome, names in sorted(unusual.items()):
            if now - self._logged.get(outcome, -LOG_EVERY_SECONDS) >= LOG_EVERY_SECONDS:
                self._logged[outcome] = now
                _log.warning("OTLP: %d data point(s) %s (%s); this warning repeats at most once a minute",
                             sum(names.values()), outcome.replace(": ", " "),
                             ", ".join(f"{name}: {n}" for name, n in sorted(names.items())))

    def _apply(self, tx: Tx, points: list[Point],
               now: datetime) -> tuple[Counter[str], Counter[tuple[str, str]]]:
        outcomes: Counter[str] = Counter()
        by_instrument: Counter[tuple[str, str]] = Counter()

        def note(outcome: str, p: Point) -> None:
            outcomes[outcome] += 1
            by_instrument[(outcome, p.instrument)] += 1
        team_of = self._roster.current(tx).get
        windows: dict[str, window_store.OpenWindow | Rejection] = {}
        open_keys: list[tuple[str, bytes]] | None = None
        closed_until_ns = 0  # the latest end of a closed window, read with open_keys
        # What counts, summed per (person, metric, time) before the ingest rules: an export often
        # carries several points per person (input and output tokens, several sessions).
        sums: dict[tuple[str, str, datetime], int] = {}
        counted = 0
        deltas: list[tuple[tuple[str, bytes], Point, tuple[OtlpMapping, ...], datetime]] = []
        by_time: dict[int, tuple[datetime, window_store.OpenWindow | Rejection]] = {}  # an export's points share times
        for p in points:
            cached = by_time.get(p.time_ns)
            if cached is None:
                try:
                    when = datetime.fromtimestamp(p.time_ns / 1e9, UTC)
                    cached = by_time[p.time_ns] = (when, self._ingestor.window_for(tx, when, now, windows))
                except (OverflowError, ValueError, OSError):
                    note("rejected: with a time_unix_nano outside years 1..9999", p)
                    continue
            when, window = cached
            if isinstance(window, Rejection):
                note(f"rejected: {window.reason.name.lower()} (window not taking contributions)", p)
                continue
            frozen = window.record.policy.otlp
            mappings = frozen.admitted(p.instrument, p.strings, p.resource) if frozen else ()
            if not mappings:
                note("ignored_filtered", p)
                continue
            if p.problem:
                note(f"rejected: {p.problem}", p)
                continue
            assert frozen is not None  # it admitted the point
            if p.identity is None:
                note(f"rejected: without an identity attribute ({', '.join(frozen.identity_attributes)})", p)
                continue
            if team_of(p.identity) is None:
                note("rejected: with an identity not on the roster", p)
                continue
            if p.value * frozen.max_scale(p.instrument) > MAX_VALUE:
                note("rejected: a value too large to be a count", p)
                continue
            if p.cumulative:
                if open_keys is None:
                    open_keys = store.windows.open_keys(tx)
                    closed_until_ns = (store.windows.closed_until(tx) or 0) * 10**9
                increase = self._increase(tx, window, open_keys, closed_until_ns, p)
                if increase is None:
                    note("duplicate", p)
                    continue
                if increase is BASELINE:
                    note("baseline", p)
                    continue
                _add(sums, p.identity, increase, mappings, when)
                counted += 1
                by_instrument[("counted", p.instrument)] += 1
            else:
                deltas.append(((window.record.id, series.point_key(window.key, p.series, p.time_ns)), p, mappings,
                               when))
        fresh = series.first_sights(tx, [pair for pair, *_ in deltas])
        for pair, p, mappings, when in deltas:
            if pair not in fresh:  # recorded by an earlier export, or earlier in this one
                note("duplicate", p)
                continue
            fresh.discard(pair)
            assert p.identity is not None
            _add(sums, p.identity, p.value, mappings, when)
            counted += 1
            by_instrument[("counted", p.instrument)] += 1
        if counted:
            outcomes["counted"] += counted
        if sums:
            negative = sum(1 for value in sums.values() if value < 0)
            if negative:  # a subtracted count without its total in the same export: nothing to count
                outcomes["ignored_negative_net"] += negative
            contributions = [Contribution(user, metric, value, when) for (user, metric, when), value in sums.items()
                             if value > 0]
            outcome = self._ingestor.count(tx, contributions, now, windows)
            if outcome.clamped:
                outcomes["clamped"] += outcome.clamped
            for r in outcome.rejections:  # the checks above make this unreachable; never silent
                outcomes[f"rejected: {r.reason.name.lower()}"] += 1
        return outcomes, by_instrument

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


def _add(sums: dict[tuple[str, str, datetime], int], person: str, increase: float,
         mappings: tuple[OtlpMapping, ...], when: datetime) -> None:
    """Add what a point's value (or increase) gives each metric it feeds, scaled and rounded."""
    for m in mappings:
        key = (person, m.metric, when)
        value = round(increase * m.scale)
        sums[key] = sums.get(key, 0) + (-value if m.subtract else value)
