"""OTLP ingest throughput (gRPC and HTTP) against native `Report`, measured on the same server in the same run.

    python bench/bench_otlp.py [--users 10000] [--rounds 10] [--clients 4] [--repeats 5]

One `chorus serve` child process (its own GIL, SQLite synchronous=FULL) with the shipped
default `[otlp]` mappings enabled. Both measurements send pre-built requests of `--batch`
items from `--clients` threads and wait for every answer, alternated `--repeats` times (the
machine is shared; the median ratio is the figure):

* native: `IngestService.Report` batches in the SDK's shape: per person and flush, one
  contribution per metric counted (`ai.tokens` and `ai.requests`; `ai.tokens` alone with
  `--points-per-person 1`), a person's contributions side by side;
* OTLP: `MetricsService.Export` requests of `claude_code.token.usage` delta data points shaped
  like Claude Code's (identity, session id, model and type attributes): by default two per
  person and export, input and output tokens, as Claude Code sends them (`--points-per-person 1`
  for one);
* OTLP/HTTP: the same requests, serialised, as `POST /v1/metrics` (`application/x-protobuf`)
  on the server's `--otlp-http-listen` (waitress), each client thread on one keep-alive
  connection.

Every OTLP point is its own series with its own exactly-once key, so this includes the cost of
OTLP's per-point de-duplication over Report's per-batch id. Target: OTLP data points per second
>= 0.5 of native contributions per second, over each transport.
"""

from __future__ import annotations

import argparse
import http.client
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import grpc
from _bench import load_average, parse
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, InstrumentationScope, KeyValue
from opentelemetry.proto.metrics.v1 import metrics_pb2
from opentelemetry.proto.resource.v1.resource_pb2 import Resource

from chorus.server.model import config
from chorus.v1 import admin_pb2, admin_pb2_grpc, ingest_pb2, ingest_pb2_grpc

READY = re.compile(r"serving on (127\.0\.0\.1:\d+)")
HTTP_READY = re.compile(r"OTLP/HTTP on http://(127\.0\.0\.1:\d+)/v1/metrics")
#: What a tool counting tokens and requests reports through the SDK per person and flush.
NATIVE_METRICS = ("ai.tokens", "ai.requests")


def start(data: Path, config_file: Path) -> tuple[subprocess.Popen[str], str, str]:
    """The server process, its gRPC address and its OTLP/HTTP address."""
    proc = subprocess.Popen([sys.executable, "-m", "chorus.server.cli", "serve", "--data-dir", str(data),
                             "--config", str(config_file), "--listen", "127.0.0.1:0", "--log-level", "WARNING",
                             "--otlp-http-listen", "127.0.0.1:0"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "COLUMNS": "200"})
    assert proc.stdout is not None
    http = None
    for line in proc.stdout:
        if m := HTTP_READY.search(line):
            http = m[1]
        if (m := READY.search(line)) and http:
            return proc, m[1], http
    raise RuntimeError("server did not start")


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of one process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _kv(key: str, value: str) -> KeyValue:
    return KeyValue(key=key, value=AnyValue(string_value=value))


def report_requests(users: Sequence[str], rounds: int, batch: int,
                    metrics: Sequence[str]) -> list[ingest_pb2.ReportRequest]:
    """Reports in the SDK's shape: a flush sends one contribution per (person, metric) counted
    since the last one, a person's contributions side by side, `batch` per request."""
    when = Timestamp()
    when.GetCurrentTime()
    per_request = max(1, batch // len(metrics))
    return [ingest_pb2.ReportRequest(batch_id=uuid.uuid4().hex, source="bench", contributions=[
        ingest_pb2.Contribution(user=u, metric=m, value=1, event_time=when)
        for u in users[i:i + per_request] for m in metrics])
        for _ in range(rounds) for i in range(0, len(users), per_request)]


def otlp_requests(users: Sequence[str], rounds: int, batch: int, types: Sequence[str],
                  offset: int = 0, span: int = 60) -> list[metrics_service_pb2.ExportMetricsServiceRequest]:
    """Requests of `rounds` one-minute delta intervals per person (an exporter's default period),
    one point per token type, `batch` points per request; `offset` (in minutes) shifts the
    intervals so measurements never collide. Intervals end in the past `span` minutes: the bench
    fails in the first `span` minutes of an ISO week, when they would fall in the previous,
    closed window."""
    minute = 60_000_000_000
    first = time.time_ns() - span * minute
    per_request = max(1, batch // len(types))
    out = []
    for r in range(rounds):
        end = first + (offset + r) * minute
        for i in range(0, len(users), per_request):
            points = [metrics_pb2.NumberDataPoint(
                start_time_unix_nano=end - minute, time_unix_nano=end, as_double=1.0,
                attributes=[_kv("user.email", u), _kv("session.id", f"session-{u}"), _kv("model", "model-x"),
                            _kv("type", kind)]) for u in users[i:i + per_request] for kind in types]
            metric = metrics_pb2.Metric(name="claude_code.token.usage", sum=metrics_pb2.Sum(
                data_points=points, is_monotonic=True,
                aggregation_temporality=metrics_pb2.AGGREGATION_TEMPORALITY_DELTA))
            out.append(metrics_service_pb2.ExportMetricsServiceRequest(resource_metrics=[metrics_pb2.ResourceMetrics(
                resource=Resource(attributes=[_kv("service.name", "claude-code")]),
                scope_metrics=[metrics_pb2.ScopeMetrics(scope=InstrumentationScope(name="bench"),
                                                        metrics=[metric])])]))
    return out


def _timed(shards: Sequence[Sequence[Any]], run: Callable[[Sequence[Any]], None], what: str) -> float:
    """Seconds for one thread per shard to `run` it; the first error of any thread is raised."""
    errors: list[BaseException] = []

    def guarded(shard: Sequence[Any]) -> None:
        try:
            run(shard)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=guarded, args=(s,)) for s in shards]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise RuntimeError(f"{what} failed: {errors[0]!r}")
    return time.perf_counter() - started


def send_all(address: str, token: str, requests: Sequence[Message], stub_of: Callable[[grpc.Channel], Callable],
             clients: int, check: Callable[[Message], None]) -> float:
    """Seconds to send every request from `clients` threads, each on its own channel."""
    metadata = (("authorization", f"Bearer {token}"),)

    def run(shard: Sequence[Message]) -> None:
        with grpc.insecure_channel(address) as channel:
            call = stub_of(channel)
            for request in shard:
                check(call(request, metadata=metadata, timeout=300))

    return _timed([requests[i::clients] for i in range(clients)], run, "send")


def post_all(address: str, token: str, bodies: Sequence[bytes], clients: int) -> float:
    """Seconds to POST every body to /v1/metrics from `clients` threads, each on one keep-alive
    connection; every answer must be 200 without a partial success."""
    host, port = address.rsplit(":", 1)
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/x-protobuf"}

    def run(shard: Sequence[bytes]) -> None:
        conn = http.client.HTTPConnection(host, int(port), timeout=300)
        try:
            for body in shard:
                conn.request("POST", "/v1/metrics", body, headers)
                reply = conn.getresponse()
                answer = metrics_service_pb2.ExportMetricsServiceResponse.FromString(reply.read())
                assert reply.status == 200 and not answer.HasField("partial_success"), (reply.status, answer)
        finally:
            conn.close()

    return _timed([bodies[i::clients] for i in range(clients)], run, "post")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=10, help="export intervals (one minute each) per repeat")
    parser.add_argument("--batch", type=int, default=5_000, help="contributions or data points per request")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5, help="alternated native/OTLP measurements")
    parser.add_argument("--points-per-person", type=int, choices=(1, 2), default=2,
                        help="2: input and output token points per person and export, as Claude Code sends them")
    args = parse(parser, smoke={"users": 500, "rounds": 2, "repeats": 1, "batch": 500})
    types = ("input", "output")[:args.points_per_person]
    users = [f"bench-user-{i:07d}" for i in range(args.users)]
    total = args.users * args.rounds
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        config_file = Path(tmp) / "chorus.toml"
        config_file.write_text(config.with_otlp_enabled(config.DEFAULT_TOML).replace(
            "max_per_user = 500000", "max_per_user = 1000000000000"))  # never clamp: every unit is counted
        proc, address, http_address = start(data, config_file)
        try:
            admin = (("authorization", f"Bearer {(data / 'admin.token').read_text().strip()}"),)
            with grpc.insecure_channel(address) as channel:
                stub = admin_pb2_grpc.AdminServiceStub(channel)
                stub.ImportRoster(iter([admin_pb2.ImportRosterRequest(entries=[
                    admin_pb2.RosterEntry(user=u, team=f"team-{i % 100}") for i, u in enumerate(users)])]),
                    metadata=admin, timeout=300)
                token = stub.CreateToken(admin_pb2.CreateTokenRequest(role=admin_pb2.ROLE_INGEST, name="bench"),
                                         metadata=admin).token
            print(f"{args.users:,} people, {args.rounds} rounds, {total * len(types):,} contributions "
                  f"({len(types)} per person) and {total * len(types):,} data points ({len(types)} per person) "
                  "per measurement, "
                  f"{args.batch:,} per request, {args.clients} client threads")

            def report_ok(reply: Message) -> None:
                assert not reply.rejections and not reply.duplicate, reply  # type: ignore[attr-defined]

            def otlp_ok(reply: Message) -> None:
                assert not reply.HasField("partial_success"), reply

            rates: list[tuple[float, float, float]] = []  # native, OTLP/gRPC, OTLP/HTTP per second
            cpus: list[tuple[float, float, float]] = []  # server CPU seconds per item, the same three
            items = total * len(types)
            span = 2 * args.repeats * args.rounds + 1  # minutes: one block of intervals per OTLP measurement
            for repeat in range(args.repeats):  # alternated, so a noisy neighbour hits both alike
                native_requests = report_requests(users, args.rounds, args.batch, NATIVE_METRICS[:len(types)])
                cpu = process_cpu_seconds(proc.pid)
                native = items / send_all(address, token, native_requests,
                                          lambda ch: ingest_pb2_grpc.IngestServiceStub(ch).Report, args.clients,
                                          report_ok)
                native_cpu = (process_cpu_seconds(proc.pid) - cpu) / items
                otlp_reqs = otlp_requests(users, args.rounds, args.batch, types, offset=2 * repeat * args.rounds,
                                          span=span)
                cpu = process_cpu_seconds(proc.pid)
                otlp = items / send_all(address, token, otlp_reqs,
                                        lambda ch: metrics_service_pb2_grpc.MetricsServiceStub(ch).Export,
                                        args.clients, otlp_ok)
                otlp_cpu = (process_cpu_seconds(proc.pid) - cpu) / items
                bodies = [r.SerializeToString() for r in otlp_requests(
                    users, args.rounds, args.batch, types, offset=(2 * repeat + 1) * args.rounds, span=span)]
                cpu = process_cpu_seconds(proc.pid)
                over_http = items / post_all(http_address, token, bodies, args.clients)
                http_cpu = (process_cpu_seconds(proc.pid) - cpu) / items
                rates.append((native, otlp, over_http))
                cpus.append((native_cpu, otlp_cpu, http_cpu))
                print(f"  repeat {repeat + 1}: native Report {native:10,.0f} contributions/s "
                      f"({native_cpu * 1e6:.1f} us server CPU each), OTLP/gRPC {otlp:10,.0f} data points/s "
                      f"({otlp_cpu * 1e6:.1f} us each), ratio {otlp / native:.2f}; OTLP/HTTP {over_http:10,.0f} "
                      f"({http_cpu * 1e6:.1f} us each), ratio {over_http / native:.2f}   {load_average()}",
                      flush=True)
        finally:
            proc.terminate()
            proc.wait(30)
    native, otlp, over_http = (statistics.median(r[i] for r in rates) for i in (0, 1, 2))
    print(f"  median native Report (anchor): {native:12,.0f} contributions/s")
    print(f"  median OTLP/gRPC Export      : {otlp:12,.0f} data points/s")
    print(f"  median OTLP/HTTP POST        : {over_http:12,.0f} data points/s")
    for name, i in (("OTLP/gRPC", 1), ("OTLP/HTTP", 2)):
        ratios = [r[i] / r[0] for r in rates]
        print(f"  median ratio {name} / native: {statistics.median(ratios):8.2f}   (target >= 0.5; ranges "
              f"{min(ratios):.2f}-{max(ratios):.2f})")
    native_cpu, otlp_cpu, http_cpu = (statistics.median(c[i] for c in cpus) * 1e6 for i in (0, 1, 2))
    print(f"  median server CPU            : native {native_cpu:.1f} us per contribution, OTLP/gRPC "
          f"{otlp_cpu:.1f} us per data point (target <= 8; {otlp_cpu / native_cpu:.2f} x native), OTLP/HTTP "
          f"{http_cpu:.1f} us ({http_cpu / native_cpu:.2f} x native)")


if __name__ == "__main__":
    main()
