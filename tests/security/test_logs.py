"""No user id, token or per-person value in any log record, error message or operational metric.

The session-wide guard in tests/conftest.py checks every record of the whole run; the tests
here prove the guard is wired and its detector works, and drive the server through the
paths that handle user ids, with the server logging at DEBUG, in both log formats (text and
`--log-format json`), and scrape its Prometheus metrics.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from prometheus_client import generate_latest

from chorus.server.model.roles import Role
from chorus.server.transport import logs
from chorus.v1 import admin_pb2, admin_pb2_grpc, audit_pb2, audit_pb2_grpc, ingest_pb2, ingest_pb2_grpc
from tests._policy import suite_config_file
from tests._secrets import SECRET_MARKERS, CapturingHandler, leaks, register, user_id

from .conftest import NOON, ROSTER, SecureServer, bearer

#: A per-person total distinctive enough to search for.
PERSONAL_VALUE = 1_234_567


def test_detector_finds_user_ids_tokens_and_registered_markers() -> None:
    lines = ["INFO x: rejected user-alice from team red",
             "DEBUG y: header chorus_" + "Q" * 43,
             "WARNING z: person alice@example.com did something",
             "INFO ok: 12 contributions from 3 tools, 2 rejected (UNKNOWN_USER)"]
    assert leaks(lines, markers=["alice@example.com"]) == lines[:3]
    assert leaks(lines[3:], markers=["alice@example.com"]) == []


@pytest.mark.slow
def test_guard_captures_server_logs(secure_server: SecureServer, log_guard: CapturingHandler) -> None:
    """The session handler sees records from the server's threads, at DEBUG."""
    assert logging.getLogger().isEnabledFor(logging.DEBUG)
    assert secure_server.channel is not None
    with pytest.raises(grpc.RpcError):
        admin_pb2_grpc.AdminServiceStub(secure_server.channel).ListTokens(
            admin_pb2.ListTokensRequest(), metadata=secure_server.metadata(Role.INGEST), timeout=10)
    denied = "denied /chorus.v1.AdminService/ListTokens to token 'sec-ingest'"
    assert any(f"chorus.server.transport.admission: {denied}" in line for line in log_guard.snapshot())


def contribution(request: ingest_pb2.ReportRequest, user: str, value: int, metric: str = "ai.tokens",
                 when: datetime = NOON) -> None:
    request.contributions.add(user=user, metric=metric, value=value).event_time.FromDatetime(when)


@pytest.mark.slow
def test_user_ids_and_values_stay_out_of_answers_logs_and_metrics(secure_server: SecureServer,
                                                                   log_guard: CapturingHandler) -> None:
    assert secure_server.channel is not None
    first_line = len(log_guard.snapshot())
    as_json = io.StringIO()  # the same records as `chorus serve --log-format json` writes them
    json_handler = logs.handler("json", as_json)
    logging.getLogger().addHandler(json_handler)
    stranger, known = user_id("stranger-7f3a"), ROSTER[0][0]
    register(str(PERSONAL_VALUE))
    ingest = ingest_pb2_grpc.IngestServiceStub(secure_server.channel)
    admin = admin_pb2_grpc.AdminServiceStub(secure_server.channel)
    audit = audit_pb2_grpc.AuditServiceStub(secure_server.channel)
    as_ingest, as_admin = secure_server.metadata(Role.INGEST), secure_server.metadata(Role.ADMIN)
    answers: list[str] = []

    # Partial success: a known user with a distinctive value, a stranger, a bad metric, a negative
    # value and a late event, all in one batch.
    request = ingest_pb2.ReportRequest(batch_id="mixed", source="tool")
    contribution(request, known, PERSONAL_VALUE)
    contribution(request, stranger, 5)
    contribution(request, known, 5, metric="ai.unknown_metric")
    contribution(request, known, -5)
    late = request.contributions.add(user=known, metric="ai.tokens", value=1)
    late.event_time.FromDatetime(NOON - timedelta(days=30))
    reply = ingest.Report(request, metadata=as_ingest, timeout=10)
    assert reply.accepted == 1 and len(reply.rejections) == 4
    answers += [r.message for r in reply.rejections]

    # Whole-batch refusals that concern a user field.
    for bad in (user_id("x" * 300), ""):
        refused = ingest_pb2.ReportRequest(batch_id=f"bad-{len(bad)}")
        contribution(refused, bad, 1)
        with pytest.raises(grpc.RpcError) as err:
            ingest.Report(refused, metadata=as_ingest, timeout=10)
        answers.append(err.value.details() or "")

    # A roster with a duplicate user and one with an unprintable user.
    for entries in ([(known, "t"), (known, "t")], [(user_id("tab\there"), "t")]):
        with pytest.raises(grpc.RpcError) as err:
            admin.ImportRoster(iter([admin_pb2.ImportRosterRequest(
                entries=[admin_pb2.RosterEntry(user=u, team=t) for u, t in entries])]),
                metadata=as_admin, timeout=10)
        answers.append(err.value.details() or "")

    # Operational metrics, the token list, and (after closing the window) the whole ledger.
    stats = admin.GetStats(admin_pb2.GetStatsRequest(), metadata=as_admin, timeout=10)
    assert stats.contributions_accepted == 1 and stats.rejected["UNKNOWN_USER"] == 1
    answers.append(str(stats))
    answers.append(str(admin.ListTokens(admin_pb2.ListTokensRequest(), metadata=as_admin, timeout=10)))
    secure_server.clock.advance(timedelta(days=1, hours=3))
    closed = admin.CloseWindow(admin_pb2.CloseWindowRequest(window="2026-11-25"), metadata=as_admin,
                               timeout=10)
    assert not closed.already_closed
    answers += [str(e) for e in audit.StreamLedger(audit_pb2.StreamLedgerRequest(),
                                                   metadata=secure_server.metadata(Role.AUDITOR), timeout=10)]

    answers.append(generate_latest(secure_server.server.metrics.registry).decode())  # what /metrics serves
    logging.getLogger().removeHandler(json_handler)

    assert leaks(answers) == []
    assert all(str(PERSONAL_VALUE) not in a for a in answers)
    text_lines, json_lines = log_guard.snapshot()[first_line:], as_json.getvalue().splitlines()
    assert leaks(text_lines) == [] and leaks(json_lines) == []
    assert len(json_lines) >= len(text_lines) > 0  # the JSON handler saw every record the guard saw
    assert any("request_id" in json.loads(line) for line in json_lines)
    assert str(PERSONAL_VALUE) in SECRET_MARKERS  # and so checked again over the whole session


@pytest.mark.slow
def test_json_log_lines_of_a_server_process(tmp_path: Path) -> None:
    """`chorus serve --log-format json`: every stderr line is one JSON object, records logged
    during an RPC carry its request id and method, and none holds a user id or token."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "chorus.server.cli", "serve", "--data-dir", str(tmp_path / "data"),
         "--config", str(suite_config_file(tmp_path)), "--listen", "127.0.0.1:0",
         "--log-format", "json", "--log-level", "DEBUG"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "COLUMNS": "200"})
    try:
        assert proc.stderr is not None
        first: list[str] = []  # the ready line is a log record too, on stderr
        while not (ready := re.search(r"chorus serving on (\S+)", line := proc.stderr.readline())):
            assert line, "server exited"
            first.append(line)
        first.append(line)
        admin_token = (tmp_path / "data" / "admin.token").read_text().strip()
        with grpc.insecure_channel(ready[1]) as channel:
            admin = admin_pb2_grpc.AdminServiceStub(channel)
            admin.ImportRoster(iter([admin_pb2.ImportRosterRequest(entries=[admin_pb2.RosterEntry(
                user=user, team="team-json") for user, _ in ROSTER])]), metadata=bearer(admin_token), timeout=10)
            ingest_token = admin.CreateToken(admin_pb2.CreateTokenRequest(role=admin_pb2.ROLE_INGEST, name="json"),
                                             metadata=bearer(admin_token), timeout=10).token
            register(admin_token, ingest_token)
            request = ingest_pb2.ReportRequest(batch_id="json-logs")
            contribution(request, ROSTER[0][0], PERSONAL_VALUE, when=datetime.now(UTC))
            contribution(request, user_id("stranger-json"), 1, when=datetime.now(UTC))
            ingest_pb2_grpc.IngestServiceStub(channel).Report(request, metadata=bearer(ingest_token), timeout=10)
            with pytest.raises(grpc.RpcError):  # denied: logged at INFO inside the RPC
                admin_pb2_grpc.AdminServiceStub(channel).ListTokens(
                    admin_pb2.ListTokensRequest(), metadata=bearer(ingest_token), timeout=10)
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=30)
    assert out == ""
    lines = [line.rstrip("\n") for line in first] + err.splitlines()
    records = [json.loads(line) for line in lines]  # fails on any line that is not one JSON object
    assert {"time", "level", "logger", "message"} <= set(records[0])
    denied = [r for r in records if r["message"].startswith("denied /chorus.v1.AdminService/ListTokens")]
    assert len(denied) == 1 and denied[0]["method"] == "/chorus.v1.AdminService/ListTokens"
    assert re.fullmatch(r"[0-9a-f]{16}", denied[0]["request_id"])
    per_rpc = [r for r in records if r.get("request_id") == denied[0]["request_id"]]
    assert len(per_rpc) >= 2  # the denial and the RPC's own completion line share the id
    assert len({r["request_id"] for r in records if "request_id" in r}) >= 4  # one per RPC
    assert leaks(lines) == [] and not any(str(PERSONAL_VALUE) in line for line in lines)
