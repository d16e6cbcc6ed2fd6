"""Prometheus metrics of one server, served on an opt-in HTTP listener (`--metrics-listen`).

Invariants:

* No label carries a person or a team. Every label value comes from a fixed set written in
  the code (outcomes, rejection reasons, RPC methods the server implements, status codes,
  transaction names, window states); a method name a client invents is counted as
  "unknown", so a caller cannot create series either. A per-team series would be exact
  per-team usage, which only noisy, charged releases may reveal (docs/privacy.md).
* Each `Server` has its own `CollectorRegistry`, so several servers in one process (tests)
  keep separate numbers; nothing is registered in prometheus_client's global registry.
* The ingest hot path pays nothing extra per contribution: ingest counters are the ones
  `IngestStats` keeps anyway for every entrance (Report and OTLP; the same numbers `chorus
  stats` shows), each keyed by an enum, read at scrape time,
  as are rate-limit refusals. Per RPC the interceptor observes one histogram sample, and
  per store transaction the store's observer hook (`Database.observe`) one more. Store-wide
  state (windows, shreds pending, releases, epsilon spent, exhausted budgets) is read in one
  short read transaction per scrape, so with several replicas those gauges are the same on
  each (aggregate them with `max`), while the `_total` counters are per process (aggregate with `sum`).
* The listener has no authentication and no TLS: bind it to loopback or a monitoring
  network. What it shows is listed in docs/privacy.md (operational counters only).
* With `chorus serve --workers N` each worker's registry is served on a loopback port of its
  own and the parent serves the one scrape target (chorus.server.transport.worker_metrics):
  the families in `ONCE_PER_SERVER` are the same in every worker and appear once, every
  other series gets a `worker` label.
"""

from __future__ import annotations

import logging
import platform
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from importlib.metadata import version as package_version
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf import descriptor_pool
from prometheus_client import CollectorRegistry, Counter, Histogram, Info, ProcessCollector, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from chorus.server import store
from chorus.server.domain import shred
from chorus.server.domain import windows as window_store
from chorus.server.domain.ingest import Entrance, Reason, ReportOutcome
from chorus.server.privacy.epsilon import Epsilon, Rho
from chorus.server.store import Tx
from chorus.server.transport import logs
from chorus.server.transport.handlers import behavior_of, same_kind

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from chorus.server.root import Chorus
    from chorus.server.transport.ratelimit import RateLimiter

_log = logging.getLogger(__name__)

#: RPC latency buckets (seconds): sub-millisecond health checks up to minute-long ledger streams.
RPC_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
UNKNOWN = "unknown"
#: Families whose value is the same in every worker of one server (read from the shared store, or
#: the build): with --workers they appear once in the server's scrape, without a `worker` label.
#: The budget spent, one gauge per unit (the two never add up): pure epsilon of discrete-Laplace
#: windows, rho of discrete-Gaussian ones.
SPENT_UNITS = {Epsilon.UNIT: "chorus_epsilon_spent", Rho.UNIT: "chorus_rho_spent"}
ONCE_PER_SERVER = frozenset({"chorus_build_info", "chorus_windows", "chorus_windows_overdue",
                             "chorus_shreds_pending", "chorus_releases", *SPENT_UNITS.values(),
                             "chorus_budgets_exhausted"})


def parse_address(address: str, flag: str = "--metrics-listen", example: str = "127.0.0.1:9464") -> tuple[str, int]:
    """(host, port) of a HOST:PORT listen address ([::1]:9464 for IPv6); ValueError says what is
    wrong, naming `flag` and a well-formed `example`."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"{flag} {address!r} is not a listen address: expected HOST:PORT, e.g. {example}")
    return host.strip("[]"), int(port)


def known_methods(service_names: Iterable[str]) -> dict[str, tuple[str, str]]:
    """Full method path -> (service, method) for every method of the named services."""
    pool = descriptor_pool.Default()
    out = {}
    for name in service_names:
        try:
            service = pool.FindServiceByName(name)
        except KeyError:
            continue
        for method in service.methods:
            out[f"/{service.full_name}/{method.name}"] = (service.full_name, method.name)
    return out


def serve_registry(registry: CollectorRegistry, address: str) -> tuple[WSGIServer, str]:
    """Serve `registry` at /metrics over HTTP on host:port (port 0: any free port); return the
    server and the host:port bound. OSError names the address."""
    host, port = parse_address(address)
    try:
        http, _ = start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        raise OSError(f"cannot serve metrics on {address}: {exc.strerror or exc}") from None
    return http, f"{address.rpartition(':')[0]}:{http.server_port}"


def stop_serving(http: WSGIServer) -> None:
    http.shutdown()
    http.server_close()


class Metrics:
    """The registry of one server: RPC latency observed by `interceptor()`, the rest read at scrape."""

    def __init__(self, chorus: Chorus, limiter: RateLimiter) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._rpc = Histogram("chorus_rpc_duration_seconds",
                              "RPC handling time on the server, by service, method and status code "
                              "(service and method 'unknown' for methods the server does not implement).",
                              ["service", "method", "code"], buckets=RPC_BUCKETS, registry=self.registry)
        self._methods: dict[str, tuple[str, str]] = {}
        ProcessCollector(registry=self.registry)  # process_cpu_seconds_total, memory, open fds
        Info("chorus_build", "The running Chorus: package version and Python version (value 1).",
             registry=self.registry).info({"version": package_version("chorus-telemetry"),
                                           "python": platform.python_version()})
        self.registry.register(_StateCollector(chorus, limiter))
        self._transactions = _TransactionMetrics(self.registry)
        self._unobserve = chorus.db.observe(self._transactions)
        self._http: WSGIServer | None = None

    def track_services(self, service_names: Iterable[str]) -> None:
        """Label the methods of these services by name; calls to any other method are "unknown"."""
        self._methods.update(known_methods(service_names))

    def interceptor(self) -> grpc.ServerInterceptor:
        return _RpcInterceptor(self._methods, self._rpc)

    def listen(self, address: str) -> str:
        """Serve /metrics over HTTP on host:port (port 0: any free port); return host:port bound."""
        self._http, bound = serve_registry(self.registry, address)
        return bound

    def close(self) -> None:
        self._unobserve()
        if self._http is not None:
            stop_serving(self._http)
            self._http = None


class _TransactionMetrics:
    """A `store.TxObserver`: each store transaction's duration by name and outcome (janus's
    datastore metrics), retries and store errors; one histogram sample per transaction."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._seconds = Histogram("chorus_store_transaction_seconds",
                                  "Store transactions by name and outcome (committed; rolled_back: a "
                                  "domain refusal; unavailable: a lock not granted in time, a busy, full "
                                  "or unreachable store; failed: a store error), from the first attempt "
                                  "to the end.", ["transaction", "outcome"], buckets=RPC_BUCKETS,
                                  registry=registry)
        self._retries = Counter("chorus_store_retries", "Transactions run again after a transient conflict, "
                                "a lock wait or connection loss, by transaction.", ["transaction"],
                                registry=registry)
        self._errors = Counter("chorus_store_errors", "Transactions that failed because of the store (it "
                               "was unavailable, or a store error), by transaction.", ["transaction"],
                               registry=registry)

    def __call__(self, name: str, outcome: str, seconds: float, attempts: int) -> None:
        self._seconds.labels(name, outcome).observe(seconds)
        if attempts > 1:
            self._retries.labels(name).inc(attempts - 1)
        if outcome in (store.UNAVAILABLE, store.FAILED):
            self._errors.labels(name).inc()


class _RpcInterceptor(grpc.ServerInterceptor):
    """Times every RPC and gives it a request id for the log (`logs.rpc_scope`).

    It wraps the handler the inner interceptors return, so the time includes authentication
    and the status is the one the caller receives.
    """

    def __init__(self, methods: dict[str, tuple[str, str]], histogram: Histogram) -> None:
        self._methods = methods
        self._histogram = histogram
        self._children: dict[tuple[str, str], Any] = {}  # (path, code) -> histogram child

    def _observe(self, path: str, context: grpc.ServicerContext, failed: bool, seconds: float) -> None:
        code = context.code()  # set by abort/set_code; None when the handler returned normally
        name = code.name if isinstance(code, grpc.StatusCode) else ("UNKNOWN" if failed else "OK")
        child = self._children.get((path, name))
        if child is None:
            service, method = self._methods.get(path, (UNKNOWN, UNKNOWN))
            child = self._children[(path, name)] = self._histogram.labels(service, method, name)
        child.observe(seconds)
        if _log.isEnabledFor(logging.DEBUG):  # the method only if known: a client chooses the path
            _log.debug("%s %s in %.1f ms", path, name, seconds * 1000)

    def intercept_service(self, continuation: Callable[[grpc.HandlerCallDetails], Any],
                          details: grpc.HandlerCallDetails) -> Any:
        handler = continuation(details)
        if handler is None:
            return None
        path = details.method if details.method in self._methods else UNKNOWN
        observe = self._observe

        inner = behavior_of(handler)

        def streaming(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            with _measured(observe, path, details.method, context):
                yield from inner(request, context)

        def unary(request: Any, context: grpc.ServicerContext) -> Any:
            with _measured(observe, path, details.method, context):
                return inner(request, context)

        return same_kind(handler, streaming if handler.response_streaming else unary,
                         request_deserializer=handler.request_deserializer)


@contextmanager
def _measured(observe: Callable[[str, grpc.ServicerContext, bool, float], None], path: str, method: str,
              context: grpc.ServicerContext) -> Iterator[None]:
    """Run one RPC inside its log scope and observe its duration; it failed unless the body finished."""
    start, failed = time.perf_counter(), True
    with logs.rpc_scope(method):
        try:
            yield
            failed = False
        finally:
            observe(path, context, failed, time.perf_counter() - start)


class _StateCollector(Collector):
    """Reads counters the server keeps anyway, and store-wide state, at scrape time."""

    def __init__(self, chorus: Chorus, limiter: RateLimiter) -> None:
        self._chorus = chorus
        self._limiter = limiter
        #: window id -> the unit of its frozen policy, read once per window (it never changes), so
        #: a scrape costs the same after years of windows.
        self._units: dict[str, str] = {}

    def describe(self) -> Iterable[Metric]:
        return []  # the families depend on the store's answer; skip the registry's collision check

    def collect(self) -> Iterable[Metric]:
        yield from self._ingest()
        yield self._otlp()
        yield from self._store_state()

    def _otlp(self) -> Metric:
        """OTLP data points by outcome, reason and instrument. Outcomes and reasons are the
        `PointOutcome` enum's (domain/otlp/points.py); instrument names are those the configuration
        or the shipped presets map, any other is "other" (and "" for an outcome of an export's
        summed contributions: clamped, ignored_negative_net)."""
        family = CounterMetricFamily("chorus_otlp_data_points", "OTLP data points by outcome (counted, duplicate, "
                                     "baseline, clamped, ignored_unmapped, ignored_filtered, ignored_negative_net, "
                                     "rejected), rejection reason and instrument name.",
                                     labels=["outcome", "reason", "instrument"])
        for (outcome, instrument), n in sorted(self._chorus.otlp.points_by_instrument().items()):
            kind, _, reason = outcome.partition(": ")
            family.add_metric([kind, reason, instrument], n)
        return family

    def _ingest(self) -> Iterator[Metric]:
        counts = self._chorus.ingestor.stats.snapshot()
        reports = CounterMetricFamily("chorus_ingest_reports", "Ingest Report calls by outcome: applied, "
                                      "duplicate (batch_id seen before, nothing counted), invalid (refused "
                                      "whole), rate_limited (refused by the per-token rate limit).",
                                      labels=["outcome"])
        for outcome in ReportOutcome:
            reports.add_metric([outcome.value], counts.reports.get(outcome, 0))
        reports.add_metric(["rate_limited"], self._limiter.refusals)
        yield reports
        accepted = CounterMetricFamily("chorus_ingest_contributions_accepted", "Contributions counted, by "
                                       "entrance: report (IngestService.Report) or otlp (an OTLP export's "
                                       "points, summed per person, metric and time).", labels=["entrance"])
        clamped = CounterMetricFamily("chorus_ingest_contributions_clamped", "Accepted contributions whose "
                                      "value was above the metric's bound, by entrance.", labels=["entrance"])
        for entrance in Entrance:
            accepted.add_metric([entrance.value], counts.accepted.get(entrance, 0))
            clamped.add_metric([entrance.value], counts.clamped.get(entrance, 0))
        yield accepted
        refused = CounterMetricFamily("chorus_ingest_contributions_rejected",
                                      "Contributions rejected inside applied batches, by reason.",
                                      labels=["reason"])
        for reason in Reason:
            refused.add_metric([reason.name], counts.rejected.get(reason, 0))
        yield refused
        yield clamped
        yield CounterMetricFamily("chorus_sdk_dropped_contributions",
                                  "Contributions SDK clients report having dropped (memory or spool "
                                  "bounds), from the 'dropped' field of their batches.",
                                  value=counts.client_dropped)

    def _store_state(self) -> Iterator[Metric]:
        now = int(self._chorus.clock.now().timestamp())

        def read(tx: Tx) -> dict[str, Any]:
            latest = store.windows.latest_closed(tx)
            per_window = store.budgets.totals(tx)
            spent = dict.fromkeys(SPENT_UNITS, 0)
            for window, (_, micros) in per_window.items():  # each window in its frozen policy's unit
                if window not in self._units:
                    self._units[window] = window_store.get(tx, window).policy.unit.UNIT
                spent[self._units[window]] += micros
            return {
                "states": store.windows.count_by_state(tx),
                "overdue": store.windows.count_overdue(tx, now),
                "shreds": len(shred.pending_in(tx)),
                "releases": sum(releases for releases, _ in per_window.values()), "spent": spent,
                "exhausted": 0 if latest is None else _exhausted(tx, latest),
            }

        try:
            state = self._chorus.db.read(read, name="metrics_scrape")
        except Exception:
            _log.warning("metrics: the store did not answer the scrape", exc_info=True)
            state = None
        yield GaugeMetricFamily("chorus_store_up", "1 if the store answered this scrape's read, else 0.",
                                value=int(state is not None))
        if state is None:
            return
        windows = GaugeMetricFamily("chorus_windows", "Windows in the store by state.", labels=["state"])
        for name in (window_store.OPEN, window_store.CLOSED):
            windows.add_metric([name], state["states"].get(name, 0))
        yield windows
        yield GaugeMetricFamily("chorus_windows_overdue", "Open windows past their close time (the closer "
                                "folds them within close_interval_seconds).", value=state["overdue"])
        yield GaugeMetricFamily("chorus_shreds_pending", "Deletions of secrets (a closed window's key and "
                                "per-person rows, removed roster ids) still readable in the database files.",
                                value=state["shreds"])
        yield GaugeMetricFamily("chorus_releases", "Noisy statistics released so far, all teams and windows "
                                "(cached answers not included).", value=state["releases"])
        for unit, name in SPENT_UNITS.items():
            yield GaugeMetricFamily(name, f"Privacy budget spent so far in {unit}, summed over the team-windows "
                                    f"whose frozen policy is in {unit}.", value=state["spent"][unit] / 1_000_000)
        yield GaugeMetricFamily("chorus_budgets_exhausted", "Team-windows of the latest closed window whose "
                                "remaining budget is below the cheapest default statistic.",
                                value=state["exhausted"])


def _exhausted(tx: Tx, window: str) -> int:
    """Team-windows of `window` that cannot pay for the cheapest default statistic of its frozen
    policy, in that policy's unit: the accountant decides."""
    policy = window_store.get(tx, window).policy
    cheapest = min(policy.default_charge.values())
    return sum(not b.allows(cheapest) for b in store.budgets.of_window(tx, window, policy.unit).values())
