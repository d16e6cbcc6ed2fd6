"""What the product promises beyond the noise: no per-person data after close, no person ids on
the analyst, auditor and admin surfaces."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest
from google.protobuf.descriptor import Descriptor, FieldDescriptor

from chorus.server.domain import ingest
from chorus.server.root import Chorus
from chorus.server.store import SQLITE_FILE
from chorus.v1 import admin_pb2, audit_pb2, ingest_pb2, release_pb2

from .conftest import WINDOW, Api, contribute, roster_rows

USERS = [u for u, _ in roster_rows()]
#: A field with one of these in its name could carry a person's identity.
PERSONAL = re.compile(r"user|pseudonym|person|member|email|employee|login|principal")
#: Matches the pattern but is a number in the policy (the contribution bound), not an identity.
NOT_IDENTIFIERS = {"Metric.max_per_user"}
#: The only two places a person identifier may cross the wire: both are requests.
ALLOWED_INPUTS = {("chorus.v1.AdminService", "ImportRoster"), ("chorus.v1.IngestService", "Report")}


def _contribute_everyone(chorus: Chorus) -> None:
    contribute(chorus, *((user, metric, 100 + i) for i, user in enumerate(USERS)
                         for metric in ("ai.tokens", "ai.requests")))


def _window_key(chorus: Chorus) -> bytes:
    rows = chorus.db.run(lambda tx: tx.query("SELECT hmac_key FROM window_keys WHERE window_id = ?",
                                             (WINDOW,)), name="t")
    return bytes(rows[0][0])


def _database_bytes(chorus: Chorus) -> bytes:
    files = [chorus.data_dir / SQLITE_FILE, chorus.data_dir / f"{SQLITE_FILE}-wal",
             chorus.data_dir / f"{SQLITE_FILE}-journal"]
    return b"".join(f.read_bytes() for f in files if f.exists())


@pytest.mark.slow
def test_after_close_no_pseudonym_or_window_key_remains_in_the_database_files(
        chorus: Chorus, make_api: Callable[[Chorus], Api]) -> None:
    _contribute_everyone(chorus)
    key = _window_key(chorus)
    pseudonyms = [ingest.pseudonym(key, user) for user in USERS]
    before = _database_bytes(chorus)
    # The check can fail: while the window is open, the key and every pseudonym are on disk.
    assert key in before and all(p in before for p in pseudonyms)

    chorus.close_window(WINDOW, actor="test")
    api = make_api(chorus)
    api.release()  # releases write more pages; still nothing per person may reappear
    after = _database_bytes(chorus)
    assert key not in after
    assert [p for p in pseudonyms if p in after] == []
    assert [p.hex().encode() for p in pseudonyms if p.hex().encode() in after] == []
    count = chorus.db.run(lambda tx: tx.query(
        "SELECT (SELECT COUNT(*) FROM usage) "
        "+ (SELECT COUNT(*) FROM window_keys)"), name="t")
    assert count == [(0,)]


def _fields(message: Descriptor, seen: set[str] | None = None) -> list[str]:
    """Every field name reachable from a message, as dotted paths."""
    seen = seen if seen is not None else set()
    if message.full_name in seen:
        return []
    seen.add(message.full_name)
    out = []
    for field in message.fields:
        out.append(f"{message.name}.{field.name}")
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            out.extend(_fields(field.message_type, seen))
    return out


def test_no_rpc_returns_or_accepts_a_person_identifier_except_roster_import_and_ingest() -> None:
    offenders = []
    allowed_seen = []
    for module in (release_pb2, audit_pb2, admin_pb2, ingest_pb2):
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                for direction, message in (("input", method.input_type), ("output", method.output_type)):
                    personal = [f for f in _fields(message)
                                if PERSONAL.search(f.rpartition(".")[2]) and f not in NOT_IDENTIFIERS]
                    if not personal:
                        continue
                    if direction == "input" and (service.full_name, method.name) in ALLOWED_INPUTS:
                        allowed_seen.append(method.name)
                    else:
                        offenders.append(f"{service.full_name}.{method.name} {direction}: {personal}")
    assert offenders == []
    # The exceptions are real (the check would notice a renamed field).
    assert sorted(allowed_seen) == ["ImportRoster", "Report"]


@pytest.mark.slow
def test_real_release_responses_carry_no_person_identifier(chorus: Chorus,
                                                           make_api: Callable[[Chorus], Api]) -> None:
    _contribute_everyone(chorus)
    pseudonyms = [ingest.pseudonym(_window_key(chorus), user) for user in USERS]
    chorus.close_window(WINDOW, actor="test")
    api = make_api(chorus)
    md = api.metadata
    replies = [
        api.release(),
        api.release(),  # cached
        api.stub.ListWindows(release_pb2.ListWindowsRequest(), metadata=md),
        api.stub.ListMetrics(release_pb2.ListMetricsRequest(window=WINDOW), metadata=md),
        api.stub.ListTeams(release_pb2.ListTeamsRequest(window=WINDOW), metadata=md),
        api.stub.ListTeams(release_pb2.ListTeamsRequest(), metadata=md),
    ]
    wire = b"".join(r.SerializeToString() for r in replies)
    text = "".join(str(r) for r in replies)
    assert [u for u in USERS if u.encode() in wire or u in text] == []
    assert [p for p in pseudonyms if p in wire or p.hex() in text] == []
    assert "user-" not in text
