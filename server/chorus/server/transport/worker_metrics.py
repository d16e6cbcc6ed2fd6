"""One Prometheus scrape target for `chorus serve --workers N`, however many workers.

Each worker keeps its own registry (chorus.server.transport.metrics) and serves it on a port
of its own on 127.0.0.1, chosen by the kernel and reported to the parent in its ready message
(chorus.server.transport.workers). The parent serves `--metrics-listen`; when Prometheus
scrapes it, it scrapes every live worker (in parallel, `WORKER_TIMEOUT` each) and answers
with the union.

Why not prometheus-client's multiprocess mode: it shares only metric objects that write to
memory-mapped files, while most Chorus numbers are read at scrape time from counters the
server keeps anyway and from the store (metrics.py: nothing extra on the ingest hot path),
and it cannot keep process metrics (CPU, memory) per worker. Gathering at scrape time keeps
every collector as it is.

Invariants:

* Every series of a worker carries `worker="<index>"`, except the families in
  `metrics.ONCE_PER_SERVER` (store-wide gauges and build info, equal in every worker), which
  appear once, from the lowest-numbered worker that has them. The label is needed: a
  restarted worker starts its counters at zero, and Prometheus sees a reset only per series;
  a sum made here would go backwards. Sum over `worker` in queries.
* A worker that does not answer (restarting, stuck) is left out of that scrape and reported
  by `chorus_worker_up{worker} 0`; the scrape itself still succeeds. `chorus_worker_restarts_total`
  counts the restarts the parent made.
* The workers' own listeners are on loopback and carry no other information than the target;
  the parent adds no label value a client chooses (worker indexes only).
"""

from __future__ import annotations

import urllib.request
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from chorus.server.transport.metrics import ONCE_PER_SERVER

#: Seconds the parent waits for one worker's scrape (below Prometheus's default 10 s timeout).
WORKER_TIMEOUT = 5.0
#: Where each worker serves its own registry (port 0: the kernel picks; reported to the parent).
WORKER_LISTEN = "127.0.0.1:0"


@dataclass(frozen=True, slots=True)
class WorkerTarget:
    """One worker as the parent sees it: its metrics port (None while it is not ready) and restarts."""

    port: int | None
    restarts: int


def _scrape(port: int | None) -> str | None:
    if port is None:
        return None
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=WORKER_TIMEOUT) as answer:
            return answer.read().decode()
    except OSError:
        return None


def merge(scrapes: Mapping[int, str]) -> list[Metric]:
    """The families of every worker's scrape text (worker index -> text), as described above."""
    families: dict[str, Metric] = {}
    for index in sorted(scrapes):
        for family in text_string_to_metric_families(scrapes[index]):
            once = family.name in ONCE_PER_SERVER
            merged = families.get(family.name)
            if merged is None:
                merged = families[family.name] = Metric(family.name, family.documentation, family.type)
            elif once:
                continue
            for sample in family.samples:
                labels = sample.labels if once else {"worker": str(index), **sample.labels}
                merged.add_sample(sample.name, labels, sample.value, sample.timestamp, sample.exemplar)
    return list(families.values())


class WorkersCollector(Collector):
    """The parent's registry: every worker's scrape merged, plus which workers answered."""

    def __init__(self, targets: Callable[[], dict[int, WorkerTarget]]) -> None:
        self._targets = targets

    def describe(self) -> Iterable[Metric]:
        return []  # the families are the workers'; known only at scrape time

    def collect(self) -> Iterator[Metric]:
        targets = self._targets()
        with ThreadPoolExecutor(max_workers=min(16, max(1, len(targets))),
                                thread_name_prefix="chorus-scrape") as pool:
            texts = dict(zip(targets, pool.map(_scrape, [t.port for t in targets.values()]), strict=True))
        yield from merge({index: text for index, text in texts.items() if text is not None})
        up = GaugeMetricFamily("chorus_worker_up", "1 if the worker answered this scrape (its series are in "
                               "it), else 0 (restarting or stuck).", labels=["worker"])
        restarts = CounterMetricFamily("chorus_worker_restarts", "Times the parent started the worker again "
                                       "after it exited.", labels=["worker"])
        for index, target in sorted(targets.items()):
            up.add_metric([str(index)], int(texts[index] is not None))
            restarts.add_metric([str(index)], target.restarts)
        yield up
        yield restarts


def registry_of(targets: Callable[[], dict[int, WorkerTarget]]) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=True)
    registry.register(WorkersCollector(targets))
    return registry
