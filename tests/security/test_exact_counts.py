"""No exact number describing the people of a window or a team leaves the server.

Three windows each get contributions from exactly 37 people (16 in one team, 21 in the
other, teams of 50 on the roster); one is closed through the CloseWindow RPC, one with
`chorus window close`, one by the window task. Then every AdminService and AuditService
method is called, the analyst's listings too, and none of their answers, no ledger payload,
no CLI output and no log line carries 37, 16 or 21 (issue 10 item 2: the close used to
return, print, ledger and log `rows_folded`). Release answers are noisy by design and not scanned.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from google.protobuf.message import Message
from typer.testing import CliRunner

from chorus.server.cli import app
from chorus.server.model.clock import FakeClock
from chorus.server.model.roles import Role
from chorus.server.root import Chorus
from chorus.server.transport.grpc_server import Server
from chorus.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    audit_pb2,
    audit_pb2_grpc,
    ingest_pb2,
    ingest_pb2_grpc,
    release_pb2,
    release_pb2_grpc,
)
from tests._policy import suite_config
from tests._secrets import CapturingHandler

NOON = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
WINDOWS = ("2026-11-25", "2026-11-26", "2026-11-27")
ROSTER = [(f"user-{team}-{i}", team) for team in ("team-a", "team-b") for i in range(50)]
CONTRIBUTORS = {"team-a": 16, "team-b": 21}  # 37 people in all
DISTINCTIVE = {37, 16, 21}
#: Integer fields that count something else than people: ledger entries.
# Ledger bodies are walked as JSON (their payloads); a page token is a sequence number.
NOT_ABOUT_PEOPLE = {"chorus.v1.LedgerEntry.body", "chorus.v1.StreamLedgerResponse.next_page_token"}
NUMBER = re.compile(r"(?<![\w.:-])(\d+)(?![\w.:-]*\d)")


def numbers_in_text(text: str) -> set[int]:
    """Free-standing integers in text (not digits inside dates, times, ids or hashes)."""
    return {int(m) for m in NUMBER.findall(text)}


def numbers_in_message(message: Message) -> set[int]:
    """Every integer field of a message, recursively, plus free-standing integers in its strings."""
    found: set[int] = set()
    for field, value in message.ListFields():
        if field.full_name in NOT_ABOUT_PEOPLE:
            continue
        values = value if field.is_repeated else [value]
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            values = [v for pair in value.items() for v in pair]
        for v in values:
            if isinstance(v, Message):
                found |= numbers_in_message(v)
            elif isinstance(v, bool):
                continue
            elif isinstance(v, int):
                found.add(v)
            elif isinstance(v, str):
                found |= numbers_in_text(v)
    return found


def numbers_in_json(value: object) -> set[int]:
    if isinstance(value, bool):
        return set()
    if isinstance(value, int):
        return {value}
    if isinstance(value, str):
        return numbers_in_text(value)
    if isinstance(value, dict):
        return set().union(*(numbers_in_json(v) for v in value.values()))
    if isinstance(value, list):
        return set().union(*(numbers_in_json(v) for v in value))
    return set()


def test_the_detectors_find_the_numbers_they_must() -> None:
    assert numbers_in_text("window 2026-11-25 closed: 37 per-person rows at 12:37, hash ab37") == {37}
    assert numbers_in_message(admin_pb2.GetStatsResponse(batches=37, rejected={"LATE": 16})) == {37, 16}
    assert numbers_in_message(audit_pb2.LedgerEntry(body='{"seq":37}')) == set()  # payloads are walked as JSON
    assert numbers_in_json({"window": "2026-11-25", "rows_folded": 37, "team_sizes": {"a": 21}}) == {37, 21}


class _Served:
    def __init__(self, data_dir: Path) -> None:
        self.clock = FakeClock(NOON)
        self.chorus = Chorus(suite_config(), data_dir, clock=self.clock)
        self.chorus.import_roster(ROSTER, actor="test")
        now = self.clock.now()
        self.tokens = {role: self.chorus.tokens.create(role, f"count-{role.value}", now, "test")[0]
                       for role in Role}
        self.server = Server(self.chorus, "127.0.0.1:0")
        self.server.start()
        self.channel = grpc.insecure_channel(self.server.address)

    def auth(self, role: Role) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.tokens[role]}"),)

    def contribute(self, at: datetime) -> None:
        """37 people: each reports two metrics, in one batch per team."""
        stub = ingest_pb2_grpc.IngestServiceStub(self.channel)
        for team, people in CONTRIBUTORS.items():
            request = ingest_pb2.ReportRequest(batch_id=f"{team}-{at:%d}", source="tool")
            for i in range(people):
                for metric, value in (("ai.tokens", 1000 + i), ("ai.requests", 3)):
                    c = request.contributions.add(user=f"user-{team}-{i}", metric=metric, value=value)
                    c.event_time.FromDatetime(at)
            assert stub.Report(request, metadata=self.auth(Role.INGEST), timeout=10).accepted == 2 * people


@pytest.fixture
def served(tmp_path: Path) -> Iterator[_Served]:
    s = _Served(tmp_path / "data")
    yield s
    s.channel.close()
    s.server.stop(grace=1)


@pytest.mark.slow
def test_no_answer_ledger_entry_cli_output_or_log_line_tells_how_many_people_contributed(
        served: _Served, log_guard: CapturingHandler) -> None:
    first_line = len(log_guard.snapshot())
    for day in range(3):
        served.clock.set(NOON + timedelta(days=day))
        served.contribute(NOON + timedelta(days=day))
    seen: dict[str, set[int]] = {}
    admin = admin_pb2_grpc.AdminServiceStub(served.channel)
    as_admin = served.auth(Role.ADMIN)

    # Closed by the RPC, by the CLI, and by the window task.
    by_rpc = admin.CloseWindow(admin_pb2.CloseWindowRequest(window=WINDOWS[0]), metadata=as_admin)
    assert not by_rpc.already_closed
    closed = CliRunner().invoke(app, ["window", "close", WINDOWS[1], "--yes", "--server", served.server.address,
                                      "--token", served.tokens[Role.ADMIN]])
    assert closed.exit_code == 0, closed.output
    assert f"window {WINDOWS[1]} closed" in closed.output
    seen["chorus window close"] = numbers_in_text(closed.output)
    served.clock.set(NOON + timedelta(days=3, hours=3))
    assert [r.window.id for r in served.chorus.closer.tick()] == [WINDOWS[2]]
    stats = CliRunner().invoke(app, ["stats", "--server", served.server.address,
                                     "--token", served.tokens[Role.ADMIN]])
    assert stats.exit_code == 0, stats.output
    seen["chorus stats"] = numbers_in_text(stats.output)

    admin_answers: dict[str, Message] = {
        "CloseWindow": by_rpc,
        "CloseWindow again": admin.CloseWindow(admin_pb2.CloseWindowRequest(window=WINDOWS[2]),
                                               metadata=as_admin),
        "GetStats": admin.GetStats(admin_pb2.GetStatsRequest(), metadata=as_admin),
        "ListWindows": admin.ListWindows(release_pb2.ListWindowsRequest(), metadata=as_admin),
        "ListTokens": admin.ListTokens(admin_pb2.ListTokensRequest(), metadata=as_admin),
        "CreateToken": admin.CreateToken(admin_pb2.CreateTokenRequest(role=admin_pb2.ROLE_ANALYST, name="x"),
                                         metadata=as_admin),
        "RevokeToken": admin.RevokeToken(admin_pb2.RevokeTokenRequest(name="x"), metadata=as_admin),
        "ImportRoster": admin.ImportRoster(iter([admin_pb2.ImportRosterRequest(
            entries=[admin_pb2.RosterEntry(user=u, team=t) for u, t in ROSTER])]), metadata=as_admin),
    }
    every_method = admin_pb2.DESCRIPTOR.services_by_name["AdminService"].methods_by_name
    assert set(admin_answers) - {"CloseWindow again"} == set(every_method)
    assert admin_answers["GetStats"].contributions_accepted == 6 * 37  # operational, since start
    audit = audit_pb2_grpc.AuditServiceStub(served.channel)
    as_auditor = served.auth(Role.AUDITOR)
    pages = list(audit.StreamLedger(audit_pb2.StreamLedgerRequest(), metadata=as_auditor))
    ledger = [json.loads(e.body) for page in pages for e in page.entries]
    audit_answers: dict[str, Message] = {
        "ListPolicies": audit.ListPolicies(audit_pb2.ListPoliciesRequest(), metadata=as_auditor),
        "GetBudget": audit.GetBudget(audit_pb2.GetBudgetRequest(), metadata=as_auditor),
        "GetPublicKey": audit.GetPublicKey(audit_pb2.GetPublicKeyRequest(), metadata=as_auditor),
        **{f"StreamLedger page {i}": page for i, page in enumerate(pages)},
    }
    analyst = release_pb2_grpc.ReleaseServiceStub(served.channel)
    as_analyst = served.auth(Role.ANALYST)
    analyst_answers: dict[str, Message] = {
        f"ListTeams {w}": analyst.ListTeams(release_pb2.ListTeamsRequest(window=w), metadata=as_analyst)
        for w in (*WINDOWS, "")}
    for name, answer in {**admin_answers, **audit_answers, **analyst_answers}.items():
        seen[name] = numbers_in_message(answer)
    closes = [e["payload"] for e in ledger if e["kind"] == "window_close"]
    assert [c["window"] for c in closes] == list(WINDOWS)
    for entry in ledger:
        seen[f"ledger payload #{entry['seq']} {entry['kind']}"] = numbers_in_json(entry["payload"])
    lines = log_guard.snapshot()[first_line:]
    assert any(f"closed window {WINDOWS[2]}" in line for line in lines)
    for line in lines:
        seen[f"log line {line!r}"] = numbers_in_text(line)

    carrying = {where: sorted(found & DISTINCTIVE) for where, found in seen.items() if found & DISTINCTIVE}
    assert carrying == {}
