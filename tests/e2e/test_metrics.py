"""`chorus serve --metrics-listen`: a real server process scraped over HTTP after real gRPC traffic.

The exposition is parsed with prometheus_client's own parser; values are checked against
what the test did, and no label value may name a team or a person.
"""

from __future__ import annotations

import io
import json
import logging
import re
import socket
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from chorus.server.root import Chorus
from chorus.server.transport import logs
from chorus.server.transport.grpc_server import Server
from chorus.v1 import admin_pb2, admin_pb2_grpc, common_pb2, ingest_pb2, ingest_pb2_grpc, release_pb2, release_pb2_grpc
from tests._policy import SUITE_TOML, suite_config
from tests._secrets import CapturingHandler, leaks

from ._servers import ServerProcess
from .conftest import ROSTER, TEAMS, Running, create_token, import_roster, report_request

#: Every test here starts a server, a process or a browser (tests/conftest.py, the fast lane).
pytestmark = pytest.mark.slow

METRICS_LINE = re.compile(r"metrics on (http://\S+/metrics)")
#: A tight ingest limit so one test batch is refused: 50 contributions, refilled at 1 per 1000 s.
LIMITED_TOML = SUITE_TOML + "\n[limits]\ningest_burst_per_token = 50\ningest_rate_per_token = 0.001\n"


def scrape(url: str) -> dict[str, list[Sample]]:
    """Samples by sample name (e.g. chorus_ingest_reports_total), parsed by prometheus_client."""
    with urllib.request.urlopen(url, timeout=10) as reply:
        assert reply.status == 200
        assert reply.headers["Content-Type"].startswith("text/plain")
        text = reply.read().decode()
    samples: dict[str, list[Sample]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append(sample)
    return samples


def value(samples: dict[str, list[Sample]], name: str, **labels: str) -> float:
    found = [s.value for s in samples[name] if all(s.labels.get(k) == v for k, v in labels.items())]
    assert len(found) == 1, (name, labels, samples.get(name))
    return found[0]


@pytest.fixture
def metered(tmp_path: Path) -> Iterator[tuple[ServerProcess, str]]:
    config = tmp_path / "limited.toml"
    config.write_text(LIMITED_TOML)
    proc = ServerProcess(tmp_path / "data", args=("--config", str(config), "--metrics-listen", "127.0.0.1:0"))
    proc.start()
    url = next(m[1] for line in proc.startup if (m := METRICS_LINE.search(line)))
    assert not url.endswith(":0/metrics")  # the bound port, not the requested 0
    import_roster(proc.address, proc.admin_token)
    yield proc, url
    proc.kill()


def contribution(user: str, metric: str, value: int, when: datetime) -> ingest_pb2.Contribution:
    c = ingest_pb2.Contribution(user=user, metric=metric, value=value)
    c.event_time.FromDatetime(when)
    return c


@pytest.mark.slow
def test_scrape_counts_ingest_releases_and_refusals_without_team_or_person_labels(
        metered: tuple[ServerProcess, str]) -> None:
    proc, url = metered
    admin_token = proc.admin_token
    ingest_token = create_token(proc.address, admin_token, "ingest", "metrics-ingest")
    analyst_token = create_token(proc.address, admin_token, "analyst", "metrics-analyst")
    as_ingest = (("authorization", f"Bearer {ingest_token}"),)
    as_admin = (("authorization", f"Bearer {admin_token}"),)
    as_analyst = (("authorization", f"Bearer {analyst_token}"),)
    red0, blue0 = ROSTER[0][0], ROSTER[-1][0]
    now = datetime.now(UTC)
    window = now.date().isoformat()  # the suite policy has UTC-day windows
    with grpc.insecure_channel(proc.address) as channel:
        ingest = ingest_pb2_grpc.IngestServiceStub(channel)
        mixed = report_request(batch_id="mixed", dropped=7, contributions=[
            contribution(red0, "ai.tokens", 5, now), contribution(blue0, "ai.requests", 3, now),
            contribution("user-stranger", "ai.tokens", 1, now), contribution(red0, "ai.unknown", 1, now),
            contribution(red0, "ai.tokens", -1, now)])
        assert ingest.Report(mixed, metadata=as_ingest, timeout=10).accepted == 2
        assert ingest.Report(mixed, metadata=as_ingest, timeout=10).duplicate  # dropped counted once
        with pytest.raises(grpc.RpcError) as invalid:
            ingest.Report(report_request(batch_id=""), metadata=as_ingest, timeout=10)
        assert invalid.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        big = report_request(contributions=[contribution(red0, "ai.tokens", 1, now)] * 60)
        with pytest.raises(grpc.RpcError) as limited:  # 5 + 5 + 1 units taken of a burst of 50
            ingest.Report(big, metadata=as_ingest, timeout=10)
        assert limited.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED

        admin = admin_pb2_grpc.AdminServiceStub(channel)
        admin.CloseWindow(admin_pb2.CloseWindowRequest(window=window), metadata=as_admin, timeout=30)

        release = release_pb2_grpc.ReleaseServiceStub(channel)
        # 0.97 of team-red's budget of 1: too little is left for another statistic at 0.05.
        release.Release(release_pb2.ReleaseRequest(window=window, teams=["team-red"], metrics=["ai.tokens"],
                                                   statistics=[release_pb2.StatisticRequest(
                                                       statistic=common_pb2.STATISTIC_SUM, epsilon="0.97")]),
                        metadata=as_analyst, timeout=30)
        with pytest.raises(grpc.RpcError) as over:
            release.Release(release_pb2.ReleaseRequest(window=window), metadata=as_analyst, timeout=30)
        assert over.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        # Every default statistic of team-blue: 4 metrics x (sum, count, histogram) + active.
        release.Release(release_pb2.ReleaseRequest(window=window, teams=["team-blue"]),
                        metadata=as_analyst, timeout=30)

    samples = scrape(url)
    assert value(samples, "chorus_ingest_reports_total", outcome="applied") == 1
    assert value(samples, "chorus_ingest_reports_total", outcome="duplicate") == 1
    assert value(samples, "chorus_ingest_reports_total", outcome="invalid") == 1
    assert value(samples, "chorus_ingest_reports_total", outcome="rate_limited") == 1
    assert value(samples, "chorus_ingest_contributions_accepted_total", entrance="report") == 2
    assert value(samples, "chorus_ingest_contributions_accepted_total", entrance="otlp") == 0
    for reason, count in (("UNKNOWN_USER", 1), ("UNKNOWN_METRIC", 1), ("NEGATIVE_VALUE", 1), ("LATE", 0)):
        assert value(samples, "chorus_ingest_contributions_rejected_total", reason=reason) == count
    assert value(samples, "chorus_sdk_dropped_contributions_total") == 7
    report = dict(service="chorus.v1.IngestService", method="Report")
    assert value(samples, "chorus_rpc_duration_seconds_count", code="OK", **report) == 2
    assert value(samples, "chorus_rpc_duration_seconds_count", code="INVALID_ARGUMENT", **report) == 1
    assert value(samples, "chorus_rpc_duration_seconds_count", code="RESOURCE_EXHAUSTED", **report) == 1
    assert value(samples, "chorus_rpc_duration_seconds_bucket", code="OK", le="+Inf", **report) == 2
    rel = dict(service="chorus.v1.ReleaseService", method="Release")
    assert value(samples, "chorus_rpc_duration_seconds_count", code="OK", **rel) == 2
    assert value(samples, "chorus_rpc_duration_seconds_count", code="RESOURCE_EXHAUSTED", **rel) == 1
    assert value(samples, "chorus_store_up") == 1
    assert value(samples, "chorus_windows", state="closed") == 1
    assert value(samples, "chorus_shreds_pending") == 0
    assert value(samples, "chorus_releases") == 1 + 13
    assert value(samples, "chorus_epsilon_spent") == pytest.approx(0.97 + 13 * 0.05)
    assert value(samples, "chorus_budgets_exhausted") == 1  # team-red's

    labels = {v for series in samples.values() for s in series for v in s.labels.values()}
    people = {user for user, _ in ROSTER} | {"user-stranger"}
    assert not {v for v in labels if any(name in v for name in (*TEAMS, *people))}


def test_no_listener_unless_asked(running: Running) -> None:
    assert running.server.metrics_address is None


def test_servers_in_one_process_keep_separate_registries(running: Running, tmp_path: Path) -> None:
    other = Running(tmp_path / "other")
    try:
        with grpc.insecure_channel(running.address) as channel:
            ingest_pb2_grpc.IngestServiceStub(channel).Report(
                report_request(), metadata=(("authorization", f"Bearer {running.ingest_token}"),), timeout=10)
        def accepted(server: Running) -> float:
            text = generate_latest(server.server.metrics.registry).decode()
            return next(s.value for f in text_string_to_metric_families(text) for s in f.samples
                        if s.name == "chorus_ingest_contributions_accepted_total" and s.labels["entrance"] == "report")
        assert (accepted(running), accepted(other)) == (1, 0)
    finally:
        other.server.stop(grace=1)


def test_unknown_methods_share_one_series(running: Running, log_guard: CapturingHandler) -> None:
    """A client cannot create series, nor write a person's id into a label or the log, by inventing
    methods (the session's log guard fails on the ids used here)."""
    with grpc.insecure_channel(running.address) as channel:
        for path in ("/chorus.v1.IngestService/user-alice", "/user-bob/Report"):
            with pytest.raises(grpc.RpcError):
                channel.unary_unary(path)(b"", metadata=(("authorization", f"Bearer {running.ingest_token}"),),
                                          timeout=10)
    text = generate_latest(running.server.metrics.registry).decode()
    assert "user-" not in text
    assert leaks(log_guard.snapshot()) == []
    counts = [s for f in text_string_to_metric_families(text) for s in f.samples
              if s.name == "chorus_rpc_duration_seconds_count" and s.labels["method"] == "unknown"]
    assert sorted((s.labels["service"], s.labels["code"], s.value) for s in counts) == [
        ("unknown", "UNIMPLEMENTED", 2)]


def test_health_checks_are_timed_too(running: Running) -> None:
    with grpc.insecure_channel(running.address) as channel:
        health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
    text = generate_latest(running.server.metrics.registry).decode()
    assert 'chorus_rpc_duration_seconds_count{code="OK",method="Check",service="grpc.health.v1.Health"} 1.0' in text


def test_store_that_does_not_answer_is_down_in_the_scrape_and_logged_with_traceback(tmp_path: Path) -> None:
    broken = Running(tmp_path / "broken")
    out = io.StringIO()
    as_json = logs.handler("json", out)
    logging.getLogger().addHandler(as_json)
    try:
        broken.chorus.db.close()  # every transaction now fails, as with a vanished database
        text = generate_latest(broken.server.metrics.registry).decode()
    finally:
        logging.getLogger().removeHandler(as_json)
        broken.server.stop(grace=1)
    names = {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples}
    assert names["chorus_store_up"] == 0
    assert "chorus_windows" not in names and "chorus_shreds_pending" not in names
    assert names["chorus_ingest_contributions_accepted_total"] == 0  # process counters still there
    records = [json.loads(line) for line in out.getvalue().splitlines()]
    warning = next(r for r in records if r["logger"] == "chorus.server.transport.metrics")
    assert warning["level"] == "WARNING" and warning["exception"].startswith("Traceback")


def test_busy_metrics_port_is_refused_by_name(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = f"127.0.0.1:{busy.getsockname()[1]}"
        chorus = Chorus(suite_config(), tmp_path / "data")
        try:
            with pytest.raises(OSError, match=f"cannot serve metrics on {taken}: Address already in use"):
                Server(chorus, "127.0.0.1:0", metrics_listen=taken)
        finally:
            chorus.close()
