"""What an OTLP data point counts for: delta, cumulative, resets, windows, retries, rejections."""

from __future__ import annotations

import math
import struct
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter

from chorus.server.domain.ingest import pseudonym
from chorus.server.domain.otlp import series
from chorus.server.domain.otlp.points import flatten
from chorus.server.model.clock import FakeClock
from chorus.server.root import Chorus
from tests._roster import ROSTER
from tests._usage import person_totals
from tests.e2e._proxy import CuttingProxy
from tests.e2e._servers import sqlite_rows

from ._requests import CUMULATIVE, DELTA, Request, export_grpc, now_ns, point, request, sum_metric
from .conftest import OtlpServer, otlp_config, provider, temporality

RED0 = "user-team-red-0"
MIN = 60 * 10**9


@pytest.mark.slow
def test_cumulative_points_count_increases_and_resets_start_new_series(otlp_server: OtlpServer) -> None:
    t = now_ns() - 30 * MIN
    s1, s2 = t - MIN, t + 5 * MIN
    series = [(s1, t, 10), (s1, t + MIN, 25), (s1, t + 2 * MIN, 25),  # +10 (first, in full), +15, +0
              (s2, t + 6 * MIN, 5),                                  # new start time: a reset, +5
              (s2, t + 7 * MIN, 40), (s2, t + 8 * MIN, 3)]           # +35, then smaller: a reset, +3
    for start, end, value in series:
        export_grpc(otlp_server.address, otlp_server.ingest_token, request([sum_metric(
            "tool.requests", [point(value, start, end, user__email=RED0, session__id="abc")], CUMULATIVE)]))
    # The same points again (a retrying exporter), and an out-of-order old one: nothing more.
    for start, end, value in series[:3]:
        export_grpc(otlp_server.address, otlp_server.ingest_token, request([sum_metric(
            "tool.requests", [point(value, start, end, user__email=RED0, session__id="abc")], CUMULATIVE)]))
    assert otlp_server.totals() == {(RED0, "ai.requests"): 10 + 15 + 5 + 35 + 3}
    assert otlp_server.chorus.otlp.points()["duplicate"] == 3


@pytest.mark.slow
def test_series_are_told_apart_by_their_whole_attribute_set(otlp_server: OtlpServer) -> None:
    t = now_ns() - 10 * MIN
    points = [point(7, t - MIN, t, user__email=RED0, session__id=s, model=m)
              for s in ("a", "b") for m in ("m1", "m2")]
    export_grpc(otlp_server.address, otlp_server.ingest_token,
                request([sum_metric("tool.requests", points, CUMULATIVE)]))
    assert otlp_server.totals() == {(RED0, "ai.requests"): 28}


@pytest.mark.slow
def test_a_retried_delta_export_counts_once(otlp_server: OtlpServer) -> None:
    t = now_ns() - MIN
    req = request([sum_metric("tool.requests", [point(4, t - MIN, t, user__email=RED0),
                                                point(4.0, t, t, user__email=RED0)])])  # start may equal end
    first = export_grpc(otlp_server.address, otlp_server.ingest_token, req)
    again = export_grpc(otlp_server.address, otlp_server.ingest_token, req)
    assert not first.HasField("partial_success") and not again.HasField("partial_success")
    assert otlp_server.totals() == {(RED0, "ai.requests"): 8}


@pytest.mark.slow
def test_an_export_cut_after_commit_is_retried_by_the_sdk_and_counted_once(otlp_server: OtlpServer) -> None:
    host, port = otlp_server.address.rsplit(":", 1)
    proxy = CuttingProxy((host, int(port)))
    try:
        exporter = OTLPMetricExporter(endpoint=f"127.0.0.1:{proxy.port}", insecure=True, timeout=20,
                                      headers={"authorization": f"Bearer {otlp_server.ingest_token}"},
                                      preferred_temporality=temporality(True))
        meters = provider(exporter)
        counter = meters.get_meter("tool").create_counter("tool.requests")
        proxy.arm(lambda: bool(otlp_server.rows("SELECT COUNT(*) FROM otlp_points")[0][0]))
        counter.add(9, {"user.email": RED0, "session.id": "s"})
        assert meters.force_flush(30_000)
        meters.shutdown()
        assert proxy.cuts == 1
        assert otlp_server.totals() == {(RED0, "ai.requests"): 9}
        assert otlp_server.chorus.otlp.points()["duplicate"] == 1
    finally:
        proxy.close()


@pytest.mark.slow
def test_points_that_cannot_count_are_rejected_in_partial_success_naming_nobody(otlp_server: OtlpServer) -> None:
    t = now_ns() - MIN
    req = request([
        sum_metric("tool.requests", [
            point(1, t - MIN, t, user__email=RED0),                  # counts
            point(1, t - MIN, t, session__id="no-identity"),         # no identity
            point(1, t - MIN, t, user__email="user-stranger-1"),     # not on the roster
            point(-1.0, t - MIN, t, user__email=RED0),               # negative
            point(math.nan, t - MIN, t, user__email=RED0),           # NaN
            point(math.inf, t - MIN, t, user__email=RED0)]),         # infinite
        sum_metric("tool.requests", [point(1, t - MIN, t, user__email=RED0, x="y")], monotonic=False),
        sum_metric("unmapped.instrument", [point(1, t - MIN, t, user__email=RED0)]),   # ignored
        sum_metric("claude_code.token.usage", [point(5, t - MIN, t, user__email=RED0, type="cacheRead")]),  # filtered
    ])
    reply = export_grpc(otlp_server.address, otlp_server.ingest_token, req)
    assert reply.partial_success.rejected_data_points == 6
    message = reply.partial_success.error_message
    assert message.startswith("6 data point(s) rejected: ")
    for words in ("1 a negative value", "1 a non-monotonic sum", "1 with an identity not on the roster",
                  "1 without an identity attribute (user.email, enduser.id)", "2 a value that is NaN or infinite"):
        assert words in message
    assert "user-" not in message and "stranger" not in message
    assert otlp_server.totals() == {(RED0, "ai.requests"): 1}
    stats = otlp_server.chorus.otlp.points()
    assert stats["ignored_unmapped"] == 1 and stats["ignored_filtered"] == 1 and stats["counted"] == 1


@pytest.mark.slow
def test_a_gauge_of_a_mapped_instrument_is_rejected(otlp_server: OtlpServer) -> None:
    from opentelemetry.proto.metrics.v1 import metrics_pb2
    t = now_ns() - MIN
    gauge = metrics_pb2.Metric(name="tool.gauge", gauge=metrics_pb2.Gauge(
        data_points=[point(3, t - MIN, t, user__email=RED0)]))
    reply = export_grpc(otlp_server.address, otlp_server.ingest_token, request([gauge]))
    assert reply.partial_success.rejected_data_points == 1
    assert "a gauge cannot be summed" in reply.partial_success.error_message


@pytest.mark.slow
def test_identity_falls_back_to_the_resource(otlp_server: OtlpServer) -> None:
    t = now_ns() - MIN
    export_grpc(otlp_server.address, otlp_server.ingest_token, request(
        [sum_metric("tool.requests", [point(2, t - MIN, t, session__id="s")])],
        resource={"service.name": "x", "enduser.id": "user-team-blue-3"}))
    assert otlp_server.totals() == {("user-team-blue-3", "ai.requests"): 2}


@pytest.mark.slow
def test_late_and_future_points_are_rejected_like_report(otlp_server: OtlpServer) -> None:
    t = now_ns()
    reply = export_grpc(otlp_server.address, otlp_server.ingest_token, request([sum_metric("tool.requests", [
        point(1, 0, 10**9, user__email=RED0), point(1, t, t + 3600 * 10**9, user__email=RED0)])]))
    assert reply.partial_success.rejected_data_points == 2
    assert "1 late" in reply.partial_success.error_message and "1 future" in reply.partial_success.error_message


@pytest.mark.slow
def test_the_clamp_applies_to_otlp_points(otlp_server: OtlpServer) -> None:
    t = now_ns() - MIN
    export_grpc(otlp_server.address, otlp_server.ingest_token, request([sum_metric(
        "claude_code.token.usage", [point(5_000_000.0, t - MIN, t, user__email=RED0, type="input")])]))
    assert otlp_server.totals() == {(RED0, "ai.tokens"): 200_000}


def _domain(tmp_path: Path, clock: FakeClock) -> Chorus:
    chorus = Chorus(otlp_config(), tmp_path / "data", clock=clock)
    chorus.import_roster(ROSTER, "test")
    return chorus


def _ns(when: datetime) -> int:
    return int(when.timestamp()) * 10**9


def test_a_cumulative_series_across_a_window_boundary_counts_each_increase_once(tmp_path: Path) -> None:
    day = datetime(2026, 3, 10, tzinfo=UTC)
    clock = FakeClock(day + timedelta(hours=23))
    chorus = _domain(tmp_path, clock)
    start = _ns(day + timedelta(hours=22))

    def send(at: datetime, value: int) -> None:
        chorus.otlp.export(request([sum_metric("tool.requests", [point(value, start, _ns(at), user__email=RED0)],
                                               CUMULATIVE)]))

    def totals(window: str) -> dict:
        return person_totals(lambda sql, p: sqlite_rows(tmp_path / "data", sql, tuple(p)), window, [RED0])

    send(day + timedelta(hours=23), 10)                   # day 1: first point, in full
    clock.set(day + timedelta(hours=24, minutes=30))
    send(day + timedelta(hours=24, minutes=20), 25)       # day 2, while day 1 is in its grace period: +15
    send(day + timedelta(hours=23, minutes=30), 12)       # a late day-1 point older than the day-2 one: stale
    clock.set(day + timedelta(hours=26, minutes=30))      # past day 1's end + 2 h grace
    chorus.closer.tick()                                  # closes day 1: its state is deleted, day 2 has its own
    assert sqlite_rows(tmp_path / "data", "SELECT window_id FROM otlp_series") == [("2026-03-11",)]
    send(day + timedelta(hours=26), 40)                   # day 2: +15
    assert totals("2026-03-11") == {(RED0, "ai.requests"): 30}
    (folded,), = sqlite_rows(tmp_path / "data", "SELECT total FROM team_metrics WHERE window_id = '2026-03-10' "
                                                "AND team = 'team-red' AND metric = 'ai.requests'")
    assert folded == 10
    chorus.close()


def test_a_closed_window_leaves_no_state_and_the_next_counts_from_a_baseline(tmp_path: Path) -> None:
    """Nothing about a person of a closed window remains (no carried series, whatever key it
    would be under): a series unseen in the next window before the close counts there from
    its first point, which only sets the baseline (at most one export interval lost)."""
    day = datetime(2026, 3, 10, tzinfo=UTC)
    clock = FakeClock(day + timedelta(hours=23))
    chorus = _domain(tmp_path, clock)
    start = _ns(day + timedelta(hours=22))

    def export(value: int, at: datetime) -> Request:
        return request([sum_metric("tool.requests", [point(value, start, _ns(at), user__email=RED0)], CUMULATIVE)])

    chorus.otlp.export(export(777_777, clock.now()))
    clock.set(day + timedelta(hours=26, minutes=30))
    chorus.closer.tick()  # opens day 2, then closes day 1
    data = tmp_path / "data"
    assert sqlite_rows(data, "SELECT COUNT(*) FROM otlp_series") == [(0,)]
    (next_key,), = sqlite_rows(data, "SELECT hmac_key FROM window_keys WHERE window_id = '2026-03-11'")
    digest = flatten(export(777_777, clock.now()), chorus.config.policy.otlp, 1024).points[0].series
    needles = {"series under the next key": series.series_key(bytes(next_key), RED0, digest),
               "pseudonym under the next key": pseudonym(bytes(next_key), RED0),
               "the value": struct.pack("<d", 777_777.0)}  # (the roster holds the user id by design)
    for path in sorted(data.rglob("*")):
        if path.is_file():
            blob = path.read_bytes()
            assert [name for name, needle in needles.items() if needle in blob] == [], path.name
    at = day + timedelta(hours=26)
    chorus.otlp.export(export(777_781, at))  # the first point of day 2: a baseline
    totals = lambda: person_totals(lambda sql, p: sqlite_rows(data, sql, tuple(p)), "2026-03-11", [RED0])  # noqa: E731
    assert totals() == {}
    chorus.otlp.export(export(777_790, at + timedelta(minutes=1)))
    assert totals() == {(RED0, "ai.requests"): 9}
    assert chorus.otlp.points()["baseline"] == 1
    clock.set(day + timedelta(days=2, hours=3))
    chorus.closer.tick()
    chorus.close_window("2026-03-12", "test")
    assert sqlite_rows(data, "SELECT COUNT(*) FROM otlp_series") == [(0,)]
    assert sqlite_rows(data, "SELECT COUNT(*) FROM otlp_points") == [(0,)]
    chorus.close()


@pytest.mark.slow
@pytest.mark.parametrize("token_kind", ["none", "unknown", "analyst"])
def test_grpc_export_needs_an_ingest_token(otlp_server: OtlpServer, token_kind: str) -> None:
    token = {"none": "", "unknown": "chorus_" + "x" * 43, "analyst": otlp_server.analyst_token}[token_kind]
    t = now_ns() - MIN
    req = request([sum_metric("tool.requests", [point(1, t - MIN, t, user__email=RED0)])])
    with pytest.raises(grpc.RpcError) as err:
        export_grpc(otlp_server.address, token, req)
    expected = grpc.StatusCode.PERMISSION_DENIED if token_kind == "analyst" else grpc.StatusCode.UNAUTHENTICATED
    assert err.value.code() == expected
    assert otlp_server.totals() == {}


@pytest.mark.slow
def test_delta_points_keep_no_state_beyond_their_keys(otlp_server: OtlpServer) -> None:
    t = now_ns() - MIN
    export_grpc(otlp_server.address, otlp_server.ingest_token, request(
        [sum_metric("tool.requests", [point(1, t - MIN, t, user__email=RED0)], DELTA)]))
    assert otlp_server.rows("SELECT COUNT(*) FROM otlp_points") == [(1,)]
    assert otlp_server.rows("SELECT COUNT(*) FROM otlp_series") == [(0,)]


@pytest.mark.slow
def test_operators_see_otlp_outcomes_in_get_stats(otlp_server: OtlpServer) -> None:
    from chorus.v1 import admin_pb2, admin_pb2_grpc
    t = now_ns() - MIN
    export_grpc(otlp_server.address, otlp_server.ingest_token, request([
        sum_metric("tool.requests", [point(1, t - MIN, t, user__email=RED0), point(1, t - MIN, t)]),
        sum_metric("unmapped.instrument", [point(1, t - MIN, t, user__email=RED0)] * 3)]))
    with grpc.insecure_channel(otlp_server.address) as channel:
        reply = admin_pb2_grpc.AdminServiceStub(channel).GetStats(
            admin_pb2.GetStatsRequest(), metadata=(("authorization", f"Bearer {otlp_server.admin_token}"),))
    assert dict(reply.otlp_points) == {"counted": 1, "ignored_unmapped": 3,
                                       "rejected: without an identity attribute (user.email, enduser.id)": 1}


@pytest.mark.slow
def test_chorus_stats_prints_otlp_outcomes(otlp_server: OtlpServer) -> None:
    from typer.testing import CliRunner

    from chorus.server.cli import app
    t = now_ns() - MIN
    export_grpc(otlp_server.address, otlp_server.ingest_token, request([
        sum_metric("tool.requests", [point(1, t - MIN, t, user__email=RED0)]),
        sum_metric("unmapped.instrument", [point(1, t - MIN, t, user__email=RED0)])]))
    result = CliRunner().invoke(app, ["stats", "--server", otlp_server.address, "--token", otlp_server.admin_token],
                                env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "OTLP data points counted" in result.output
    assert "OTLP data points ignored: no mapping names the instrument" in result.output


@pytest.mark.slow
def test_a_store_outage_during_a_grpc_export_is_unavailable_with_retry_info(
        otlp_server: OtlpServer, monkeypatch: pytest.MonkeyPatch) -> None:
    from chorus.server.store import StoreUnavailable
    real_run = otlp_server.chorus.db.run

    def flaky(fn, *, name):  # type: ignore[no-untyped-def]
        if name == "otlp_export":
            raise StoreUnavailable("database /secret/path is locked")
        return real_run(fn, name=name)

    monkeypatch.setattr(otlp_server.chorus.db, "run", flaky)
    t = now_ns() - MIN
    with pytest.raises(grpc.RpcError) as err:
        export_grpc(otlp_server.address, otlp_server.ingest_token,
                    request([sum_metric("tool.requests", [point(1, t - MIN, t, user__email=RED0)])]))
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    trailing = dict(err.value.trailing_metadata() or ())  # type: ignore[attr-defined]
    assert "grpc-status-details-bin" in trailing  # the google.rpc.RetryInfo the exporter honours
    assert "/secret/path" not in (err.value.details() or "")


def test_histograms_exponential_histograms_and_several_mappings_per_instrument(tmp_path: Path) -> None:
    import tomllib

    from opentelemetry.proto.metrics.v1 import metrics_pb2

    from chorus.server.model import config
    from tests._policy import SUITE_TOML
    cfg = config.parse(tomllib.loads(SUITE_TOML + """
[otlp]
identity_attributes = ["enduser.id"]
[[otlp.metrics]]
name = "tool.usage"
metric = "ai.tokens"
[[otlp.metrics]]
name = "tool.usage"
metric = "ai.requests"
attributes = { kind = "request" }
"""))
    chorus = Chorus(cfg, tmp_path / "data")
    chorus.import_roster(ROSTER, "test")
    t = now_ns() - MIN
    who = point(0, 0, 0, enduser__id=RED0).attributes
    histogram = metrics_pb2.Metric(name="tool.usage", histogram=metrics_pb2.Histogram(
        aggregation_temporality=DELTA, data_points=[
            metrics_pb2.HistogramDataPoint(start_time_unix_nano=t - MIN, time_unix_nano=t, count=2, sum=30.0,
                                           attributes=who),
            metrics_pb2.HistogramDataPoint(start_time_unix_nano=t - MIN, time_unix_nano=t, count=1,
                                           attributes=point(0, 0, 0, enduser__id=RED0, x="nosum").attributes)]))
    exponential = metrics_pb2.Metric(name="tool.usage", exponential_histogram=metrics_pb2.ExponentialHistogram(
        aggregation_temporality=DELTA, data_points=[metrics_pb2.ExponentialHistogramDataPoint(
            start_time_unix_nano=t - MIN, time_unix_nano=t, count=1, sum=12.0,
            attributes=point(0, 0, 0, enduser__id=RED0, kind="request").attributes)]))
    result = chorus.otlp.export(request([histogram, exponential]))
    assert result.rejected == 1 and "1 a histogram point without a sum" in result.error_message
    totals = person_totals(lambda sql, p: sqlite_rows(tmp_path / "data", sql, tuple(p)),
                           datetime.now(UTC).date().isoformat(), [RED0])
    # 30 + 12 tokens; the exponential histogram point also passes the second mapping's filter.
    assert totals == {(RED0, "ai.tokens"): 42, (RED0, "ai.requests"): 12}
    chorus.close()
