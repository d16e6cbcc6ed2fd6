"""`chorus serve --workers N` on SQLite, as real processes: one port shared by this parent's
workers only, one closer, SIGTERM stops all, a SIGKILLed worker comes back, and ingest,
de-duplication, budgets and the ledger stay exact across workers (the replica tests' checks,
tests/replicas, with workers on one SQLite file)."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from importlib.metadata import version as package_version
from pathlib import Path

import grpc
import pytest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest

from chorus.client import Client
from chorus.server.cli._common import ExitCode
from chorus.server.domain.ingest import Batch, Contribution
from chorus.server.model.calendar import window_of
from chorus.server.model.roles import Role
from chorus.server.root import Chorus
from chorus.server.store import SQLITE_FILE
from chorus.server.transport import workers
from chorus.v1 import admin_pb2, admin_pb2_grpc, common_pb2, ingest_pb2, ingest_pb2_grpc, release_pb2, release_pb2_grpc
from tests._policy import OTLP_TOML, SUITE_TOML, suite_config, suite_config_file
from tests._race import run_together
from tests._roster import replica_roster as roster_rows
from tests._traffic import FixedClock, Traffic
from tests.otlp._requests import export_grpc, now_ns, point, post, request, sum_metric
from tests.store.postgres_schema import fresh_schema

READY = re.compile(r"chorus serving on (\S+)")
CLOSER = "window closer started"
BOUNDS = {m.name: m.max_per_user for m in suite_config().policy.metrics}


@dataclass
class Served:
    """A `chorus serve --workers N` parent process and its log."""

    proc: subprocess.Popen[bytes]
    log: Path
    data_dir: Path
    address: str = ""

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, pattern: re.Pattern[str], timeout: float = 90.0) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if m := pattern.search(self.text()):
                return m
            assert self.proc.poll() is None, f"the server exited:\n{self.text()}"
            time.sleep(0.05)
        raise AssertionError(f"no {pattern.pattern!r} in:\n{self.text()}")

    def workers(self) -> list[int]:
        """The worker pids, by worker index."""
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()
        index = {int(pid): Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0--worker-index\0")[1].split(b"\0")[0]
                 for pid in children}
        return [pid for pid, _ in sorted(index.items(), key=lambda item: int(item[1]))]

    def wait_count(self, text: str, count: int, timeout: float = 60.0) -> None:
        """Until the log holds `text` `count` times."""
        deadline = time.monotonic() + timeout
        while self.text().count(text) < count:
            assert time.monotonic() < deadline, f"{text!r} not {count} times in:\n{self.text()}"
            time.sleep(0.05)

    def kill_mid_transaction(self, pid: int, timeout: float = 20.0) -> bool:
        """SIGKILL worker `pid` the moment it holds the SQLite writer lock (inside a transaction,
        /proc/locks); returns whether it was seen holding it (else it is killed at the timeout)."""
        inode = (self.data_dir / f"{SQLITE_FILE}.writer-lock").stat().st_ino
        deadline = time.monotonic() + timeout
        seen = False
        while not seen and time.monotonic() < deadline:
            seen = any(f.split()[4] == str(pid) and f.split()[5].endswith(f":{inode}")
                       for f in Path("/proc/locks").read_text().splitlines() if "FLOCK" in f)
        os.kill(pid, signal.SIGKILL)
        return seen

    def channel(self) -> grpc.Channel:
        # Its own TCP connection, so that channels spread over the workers.
        return grpc.insecure_channel(self.address, options=[("grpc.use_local_subchannel_pool", 1)])

    def sql(self, query: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
        with sqlite3.connect(self.data_dir / SQLITE_FILE) as conn:
            return conn.execute(query, params).fetchall()


def serve(tmp_path: Path, *extra: str, count: int = 2, log_level: str = "INFO", config: Path | None = None) -> Served:
    data_dir = tmp_path / "data"
    log = tmp_path / f"serve-{time.monotonic_ns()}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "chorus.server.cli", "serve", "--data-dir", str(data_dir),
             "--config", str(config or suite_config_file(tmp_path)), "--listen", "127.0.0.1:0",
             "--log-level", log_level, "--workers", str(count), *extra],
            stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "COLUMNS": "400"})
    served = Served(proc, log, data_dir)
    served.address = served.wait_for(READY)[1]
    return served


@pytest.fixture
def started(tmp_path: Path) -> Iterator[list[Served]]:
    running: list[Served] = []
    yield running
    for served in running:
        pids = served.workers() if served.proc.poll() is None else []
        if served.proc.poll() is None:
            served.proc.send_signal(signal.SIGKILL)
            served.proc.wait(10)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        print(served.text())  # shown when the test failed


def provision(data_dir: Path) -> dict[str, str]:
    """What an operator does once (in-process, closed before the server starts): roster, tokens."""
    chorus = Chorus(suite_config(), data_dir)
    try:
        chorus.import_roster(roster_rows(), actor="operator")
        return {role.value: chorus.tokens.create(role, f"test-{role.value}", chorus.clock.now(),
                                                 actor="operator")[0]
                for role in (Role.ADMIN, Role.INGEST, Role.ANALYST)}
    finally:
        chorus.close()


def metadata(tokens: dict[str, str], role: Role) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {tokens[role.value]}"),)


def assert_answers_with_the_admin_token(served: Served, connections: int) -> None:
    """Over `connections` fresh connections (spread over the workers), the admin token the server
    wrote lists the tokens, and they are that one alone."""
    admin = (("authorization", f"Bearer {(served.data_dir / 'admin.token').read_text().strip()}"),)
    for _ in range(connections):
        with served.channel() as channel:
            tokens = admin_pb2_grpc.AdminServiceStub(channel).ListTokens(
                admin_pb2.ListTokensRequest(), metadata=admin, timeout=10).tokens
            assert [t.name for t in tokens] == ["admin"]


def test_parse_count() -> None:
    assert workers.parse_count("3") == 3
    assert 1 <= workers.parse_count("auto") == len(os.sched_getaffinity(0))
    for bad in ("0", "-1", "two", str(workers.MAX_WORKERS + 1)):
        with pytest.raises(ValueError, match=f"--workers '{re.escape(bad)}': expected a number from 1 to 64"):
            workers.parse_count(bad)


@pytest.mark.slow
def test_workers_share_the_port_that_no_independent_server_can_take(tmp_path: Path,
                                                                    started: list[Served]) -> None:
    served = serve(tmp_path, count=3)
    started.append(served)
    assert len(served.workers()) == 3
    assert served.text().count(CLOSER) == 1  # exactly one worker runs the window closer
    assert served.text().count("admin token was written") == 1  # created once, by the parent
    for extra in ([], ["--workers", "2"]):
        other = subprocess.run(
            [sys.executable, "-m", "chorus.server.cli", "serve", "--data-dir", str(tmp_path / "other"),
             "--listen", served.address, *extra], capture_output=True, text=True, timeout=60,
            env={**os.environ, "COLUMNS": "400"})
        assert other.returncode == ExitCode.UNAVAILABLE, other.stderr
        assert f"cannot listen on {served.address}: Address already in use" in other.stderr
        assert not (tmp_path / "other").exists()
    # Every worker answers on the one port: fresh connections land on all of them.
    assert_answers_with_the_admin_token(served, 12)


@pytest.mark.slow
@pytest.mark.parametrize("everyone", [False, True], ids=["parent", "control-group"])
def test_sigterm_to_the_parent_stops_every_worker_gracefully(tmp_path: Path, started: list[Served],
                                                             everyone: bool) -> None:
    """SIGTERM to the parent alone, or to every process at once (systemd's default
    KillMode=control-group): all drain, none is started again, the parent exits 0."""
    served = serve(tmp_path, count=2)
    started.append(served)
    pids = served.workers()
    served.proc.send_signal(signal.SIGTERM)
    if everyone:
        for pid in pids:
            os.kill(pid, signal.SIGTERM)
    assert served.proc.wait(30) == 0
    assert served.text().count("shutting down") == 2  # each worker's graceful stop
    assert "starting it again" not in served.text()
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]


def scrape(url: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Sample name -> (labels, value) of every sample of one scrape."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url, timeout=10) as answer:
        assert answer.status == 200
        text = answer.read().decode()
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return samples


@pytest.mark.slow
def test_one_metrics_target_carries_every_worker(tmp_path: Path, started: list[Served]) -> None:
    """--metrics-listen with --workers 2: one target (the parent's), each worker's series labelled
    `worker`, store-wide gauges and build info once; a killed worker is `chorus_worker_up 0` while
    it restarts, then counted in `chorus_worker_restarts_total` (docs/deployment.md, Workers)."""
    from chorus.server.transport.metrics import ONCE_PER_SERVER

    served = serve(tmp_path, "--metrics-listen", "127.0.0.1:0", count=2)
    started.append(served)
    url = re.search(r"metrics on (http://127.0.0.1:\d+/metrics) \(2 workers\)", served.text())
    assert url is not None, served.text()
    assert_answers_with_the_admin_token(served, 12)
    samples = scrape(url[1])
    calls = [(labels["worker"], value) for labels, value in samples["chorus_rpc_duration_seconds_count"]
             if labels["method"] == "ListTokens"]
    assert sum(value for _, value in calls) == 12  # every worker's calls, none twice
    assert {labels["worker"] for labels, _ in samples["process_cpu_seconds_total"]} == {"0", "1"}
    assert {labels["worker"] for labels, _ in samples["chorus_store_up"]} == {"0", "1"}
    for name in ONCE_PER_SERVER - {"chorus_windows"}:
        assert len(samples[name]) == 1 and "worker" not in samples[name][0][0], name
    assert len(samples["chorus_windows"]) == 2  # open, closed: once
    assert samples["chorus_build_info"][0][0]["version"] == package_version("chorus-telemetry")
    assert samples["chorus_worker_up"] == [({"worker": "0"}, 1.0), ({"worker": "1"}, 1.0)]

    os.kill(served.workers()[1], signal.SIGKILL)
    down = scrape(url[1])  # still answered, without worker 1
    assert ({"worker": "1"}, 0.0) in down["chorus_worker_up"]
    assert {labels["worker"] for labels, _ in down["process_cpu_seconds_total"]} == {"0"}
    served.wait_for(re.compile(r"worker 1 \(pid \d+\) serves again"))
    again = scrape(url[1])
    assert ({"worker": "1"}, 1.0) in again["chorus_worker_restarts_total"]
    assert again["chorus_worker_up"] == [({"worker": "0"}, 1.0), ({"worker": "1"}, 1.0)]


@pytest.mark.slow
def test_a_taken_metrics_port_is_refused_before_any_worker_starts(tmp_path: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        run = subprocess.run(
            [sys.executable, "-m", "chorus.server.cli", "serve", "--data-dir", str(tmp_path / "data"),
             "--listen", "127.0.0.1:0", "--workers", "2", "--metrics-listen", address],
            capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "400"})
    assert run.returncode == 1, run.stdout + run.stderr
    assert f"cannot serve metrics on {address}: Address already in use" in run.stderr
    assert "window closer started" not in run.stdout + run.stderr  # no worker ran


CLIENTS = 4
MIN_ROUNDS, MAX_ROUNDS = 60, 400


@pytest.mark.slow
def test_sdk_traffic_through_worker_kills_is_counted_exactly_once(tmp_path: Path, started: list[Served]) -> None:
    tokens = provision(tmp_path / "data")
    served = serve(tmp_path, count=2)
    started.append(served)
    clock = FixedClock()
    clients = [Client(served.address, tokens["ingest"], source="worker-test", flush_interval=0.05, timeout=5.0,
                      clock=clock) for _ in range(CLIENTS)]
    # Even-numbered people stay under the ai.requests bound (at most 1600 < 2000);
    # odd-numbered ones pass it after MIN_ROUNDS (at least 4 * 60 * 9 > 2000).
    traffic = Traffic(clients, heavy=9, max_rounds=MAX_ROUNDS)
    caught: list[bool] = []
    with traffic.running():
        for kills, victim in enumerate((0, 1, 0), start=1):  # worker 0 runs the closer: it comes back with it
            traffic.after_rounds(10)
            caught.append(served.kill_mid_transaction(served.workers()[victim]))
            served.wait_count("serves again", kills)
        traffic.after_rounds(max(0, MIN_ROUNDS - min(traffic.rounds)))
    assert caught == [True, True, True], "a worker was killed outside a transaction"
    assert traffic.delivered() >= 1  # the kills interrupted batches in flight, which the SDK sent again
    # the message docs/deployment.md quotes
    assert served.text().count("exited with signal 9; starting it again") == served.text().count("serves again") == 3
    assert served.text().count(CLOSER) == 3  # the first, and after each kill of the closer's worker

    window = time.strftime("%Y-%m-%d", time.gmtime(clock.time()))
    with served.channel() as channel:
        closed = admin_pb2_grpc.AdminServiceStub(channel).CloseWindow(
            admin_pb2.CloseWindowRequest(window=window), metadata=metadata(tokens, Role.ADMIN), timeout=30)
    assert not closed.already_closed

    folded = {(team, metric): [int(total), int(people)] for team, metric, total, people in served.sql(  # type: ignore[misc]
        "SELECT team, metric, total, people FROM team_metrics WHERE window_id = ? AND metric IN "
        "('ai.requests', 'ai.tokens')", (window,))}
    assert folded == traffic.expected(BOUNDS)
    assert served.sql("SELECT (SELECT COUNT(*) FROM usage) + (SELECT COUNT(*) FROM window_keys)") == [(0,)]


@pytest.mark.slow
def test_concurrent_releases_on_different_workers_charge_each_statistic_once(tmp_path: Path,
                                                                             started: list[Served]) -> None:
    data_dir = tmp_path / "data"
    tokens = provision(data_dir)
    chorus = Chorus(suite_config(), data_dir)
    try:
        now = chorus.clock.now()
        chorus.ingestor.report(Batch("setup", "test", "1", 0, [
            Contribution(user, metric, 10 + i, now) for i, (user, team) in enumerate(roster_rows())
            if team == "team-red" for metric in BOUNDS]))
        span = window_of(now, chorus.config.policy.window_length)
        window = chorus.close_window(span.id, "operator").window.id
    finally:
        chorus.close()
    served = serve(tmp_path, count=3)
    started.append(served)
    # 4 metrics x 3 statistics = 12 distinct releases at 0.1, each asked for twice over separate
    # connections (spread over the workers); the team-window's cap of 1 pays for exactly 10.
    statistics = (common_pb2.STATISTIC_SUM, common_pb2.STATISTIC_COUNT, common_pb2.STATISTIC_HISTOGRAM)
    asks = [(metric, stat) for metric in BOUNDS for stat in statistics] * 2
    channels = [served.channel() for _ in asks]

    def ask(i: int) -> Callable[[], release_pb2.ReleaseResponse]:
        metric, stat = asks[i]
        request = release_pb2.ReleaseRequest(
            window=window, teams=["team-red"], metrics=[metric],
            statistics=[release_pb2.StatisticRequest(statistic=stat, epsilon="0.1")])
        stub = release_pb2_grpc.ReleaseServiceStub(channels[i])
        return partial(stub.Release, request, metadata=metadata(tokens, Role.ANALYST), timeout=60)

    answers = run_together([ask(i) for i in range(len(asks))])  # built first, sent together
    for channel in channels:
        channel.close()

    stored = {(m, s): rid for rid, m, s in served.sql(
        "SELECT release_id, metric, statistic FROM releases WHERE window_id = ? AND team = 'team-red'", (window,))}
    assert len(stored) == 10
    assert served.sql("SELECT spent_micros, cap_micros, releases FROM budgets WHERE window_id = ? "
                      "AND team = 'team-red'", (window,)) == [(1_000_000, 1_000_000, 10)]
    assert served.sql("SELECT COUNT(*) FROM ledger WHERE kind = 'release'") == [(10,)]
    refused = [a for a in answers if isinstance(a, grpc.RpcError)]
    assert {a.code() for a in refused} <= {grpc.StatusCode.RESOURCE_EXHAUSTED}
    for answer in answers:
        if isinstance(answer, release_pb2.ReleaseResponse):
            (estimate,) = answer.teams[0].estimates
            name = common_pb2.Statistic.Name(estimate.statistic).removeprefix("STATISTIC_").lower()
            assert stored[(estimate.metric, name)] == estimate.release_id  # the one stored release


@pytest.mark.slow
def test_a_worker_whose_parent_is_killed_stops(tmp_path: Path, started: list[Served]) -> None:
    served = serve(tmp_path, count=2)
    started.append(served)
    pids = served.workers()
    served.proc.send_signal(signal.SIGKILL)
    served.proc.wait(10)
    deadline = time.monotonic() + 30
    while any(Path(f"/proc/{pid}").exists() for pid in pids):
        assert time.monotonic() < deadline, "a worker outlived its parent"
        time.sleep(0.1)


@pytest.mark.slow
def test_stats_are_those_of_the_worker_that_answers(tmp_path: Path, started: list[Served]) -> None:
    """`chorus stats` (GetStats) counts per process: after one batch, fresh connections spread
    over two workers see 1 batch on one worker and 0 on the other (docs/deployment.md, Workers)."""
    tokens = provision(tmp_path / "data")
    served = serve(tmp_path, count=2)
    started.append(served)
    client = Client(served.address, tokens["ingest"], source="stats-test", flush_interval=3600)
    client.count("ai.requests", 1, user=roster_rows()[0][0])
    assert client.flush(timeout=30)
    client.close()
    seen = set()
    for _ in range(24):  # 2**-23 that all land on one worker
        with served.channel() as channel:
            seen.add(admin_pb2_grpc.AdminServiceStub(channel).GetStats(
                admin_pb2.GetStatsRequest(), metadata=metadata(tokens, Role.ADMIN), timeout=10).batches)
    assert seen == {0, 1}


@pytest.mark.slow
def test_the_ingest_rate_limit_applies_per_worker(tmp_path: Path, started: list[Served]) -> None:
    """A token's bucket lives in each worker: with a burst of 10 and (almost) no refill, two
    workers admit one 10-contribution batch each (docs/deployment.md, Workers)."""
    tokens = provision(tmp_path / "data")
    config = tmp_path / "limited.toml"
    config.write_text(SUITE_TOML + "\n[limits]\ningest_rate_per_token = 0.001\ningest_burst_per_token = 10\n")
    served = serve(tmp_path, count=2, config=config)
    started.append(served)
    codes = []
    for n in range(24):  # fresh connections: 2**-23 that all land on one worker
        request = ingest_pb2.ReportRequest(batch_id=f"limited-{n:02d}-{'x' * 24}", source="t")
        for user, _ in roster_rows()[:10]:
            c = request.contributions.add(user=user, metric="ai.requests", value=1)
            c.event_time.GetCurrentTime()
        with served.channel() as channel:
            try:
                ingest_pb2_grpc.IngestServiceStub(channel).Report(request, metadata=metadata(tokens, Role.INGEST),
                                                                 timeout=10)
                codes.append(grpc.StatusCode.OK)
            except grpc.RpcError as exc:
                codes.append(exc.code())
    assert Counter(codes) == {grpc.StatusCode.OK: 2, grpc.StatusCode.RESOURCE_EXHAUSTED: 22}


@pytest.mark.slow
def test_workers_on_postgresql_share_one_schema_and_keep_the_url_out_of_ps(tmp_path: Path,
                                                                          started: list[Served]) -> None:
    with fresh_schema() as url:
        served = serve(tmp_path, "--database", url, count=2)
        started.append(served)
        assert served.text().count(CLOSER) == 1
        for pid in served.workers():  # the parent hands the URL over in CHORUS_DATABASE
            assert url.encode() not in Path(f"/proc/{pid}/cmdline").read_bytes()
        assert_answers_with_the_admin_token(served, 8)
        served.proc.send_signal(signal.SIGTERM)
        assert served.proc.wait(30) == 0


@pytest.mark.slow
def test_a_worker_that_cannot_start_stops_them_all(tmp_path: Path) -> None:
    """Worker 0's OTLP/HTTP port is taken: the parent says so, stops worker 1, and exits 1."""
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        run = subprocess.run(
            [sys.executable, "-m", "chorus.server.cli", "serve", "--data-dir", str(tmp_path / "data"),
             "--listen", "127.0.0.1:0", "--workers", "2", "--otlp-http-listen", f"127.0.0.1:{port}"],
            capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "400"})
    assert run.returncode == 1, run.stdout + run.stderr
    assert "worker 0: " in run.stderr and "did not become ready (exit code 1)" in run.stderr
    assert "chorus serving on" not in run.stdout
    left = subprocess.run(["pgrep", "-f", f"{tmp_path / 'data'} .*--worker-index"], capture_output=True, text=True)
    assert left.stdout == ""


@pytest.mark.slow
def test_worker_zero_alone_serves_otlp_http_and_every_worker_counts_otlp_grpc(tmp_path: Path,
                                                                             started: list[Served]) -> None:
    """With --workers, OTLP/HTTP is one listener, in worker 0 (docs/deployment.md, Workers); OTLP/gRPC
    shares the gRPC port with every other service. An export through each is counted once."""
    tokens = provision(tmp_path / "data")
    config = tmp_path / "otlp.toml"
    config.write_text(OTLP_TOML)
    served = serve(tmp_path, "--otlp-http-listen", "127.0.0.1:0", count=2, config=config)
    started.append(served)
    listeners = re.findall(r"worker (\d): OTLP/HTTP on (http://\S+/v1/metrics)", served.text())
    assert [index for index, _ in listeners] == ["0"]
    user = roster_rows()[0][0]
    end = now_ns() - 60 * 10**9

    def export(value: int, seconds_earlier: int) -> bytes:
        t = end - seconds_earlier * 10**9
        return request([sum_metric("tool.requests", [point(value, t - 60 * 10**9, t, user__email=user)])]
                       ).SerializeToString()

    code, _, _ = post(listeners[0][1], export(3, 0), {"Content-Type": "application/x-protobuf",
                                                      "Authorization": f"Bearer {tokens['ingest']}"})
    assert code == 200
    assert not export_grpc(served.address, tokens["ingest"],
                           ExportMetricsServiceRequest.FromString(export(4, 120))).HasField("partial_success")
    slot = [m.name for m in suite_config().policy.metrics].index("ai.requests")
    assert served.sql(f"SELECT SUM(t{slot}) FROM usage") == [(7,)]
