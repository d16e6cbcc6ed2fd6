"""Rosters the suite's servers run with, and a valid one-contribution batch for them, shared by
every folder that starts a server."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from chorus.v1 import admin_pb2, admin_pb2_grpc, ingest_pb2

#: Two small teams for one-server end-to-end tests (k = 5: both are released).
TEAMS = {"team-red": 6, "team-blue": 5}
ROSTER = [(f"user-{team}-{i}", team) for team, size in TEAMS.items() for i in range(size)]


def import_roster(address: str, admin_token: str, rows: list[tuple[str, str]] = ROSTER) -> None:
    with grpc.insecure_channel(address) as channel:
        admin_pb2_grpc.AdminServiceStub(channel).ImportRoster(
            iter([admin_pb2.ImportRosterRequest(entries=[admin_pb2.RosterEntry(user=u, team=t) for u, t in rows])]),
            metadata=(("authorization", f"Bearer {admin_token}"),), timeout=30)


#: Three teams of 35-40 people for replica and worker tests: enough contributors that every
#: team is released whatever the races.
REPLICA_TEAMS = {"team-red": 40, "team-blue": 40, "team-green": 35}


def replica_roster() -> list[tuple[str, str]]:
    return [(f"user-{team}-{i}", team) for team, size in REPLICA_TEAMS.items() for i in range(size)]


def report_request(**fields: object) -> ingest_pb2.ReportRequest:
    """A valid one-contribution batch for user-team-red-0, with `fields` overridden."""
    when = Timestamp()
    when.FromDatetime(datetime.now(UTC))
    base = {"batch_id": uuid.uuid4().hex, "source": "raw",
            "contributions": [ingest_pb2.Contribution(user="user-team-red-0", metric="ai.tokens", value=1,
                                                      event_time=when)]}
    return ingest_pb2.ReportRequest(**{**base, **fields})  # type: ignore[arg-type]
