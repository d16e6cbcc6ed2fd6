"""Audit fixtures: a real Chorus on SQLite with a FakeClock, a closed window with releases,
its export, and helpers that forge entries the way a malicious operator holding the key could."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from chorus.server.domain import windows as window_store
from chorus.server.domain.ledger import Signer
from chorus.server.domain.release import Releases, StatisticRequest
from chorus.server.model import config
from chorus.server.model.clock import FakeClock
from chorus.server.model.ledger_format import (
    format_time,
)
from chorus.server.model.roles import Role
from chorus.server.privacy.epsilon import Epsilon
from chorus.server.root import Chorus
from chorus.server.transport.grpc_server import Server
from chorus.server.verifier import verify
from tests._ledger import decode, ledger_entries, line, resign
from tests._policy import suite_config

NOON = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
WINDOW = "2026-11-25"
TEAMS = {"team-red": 6, "team-blue": 5, "team-tiny": 2}  # k = 5: team-tiny is never released
#: Noisy releases in the standard scenario: team-red's sum, count, histogram of ai.tokens and
#: its active count (behind adoption); team-blue's sum of ai.requests.
RELEASES = 5
#: The default policy's epsilon for each noisy statistic.
DEFAULT_EPSILON = Epsilon.parse("0.05")


#: Entries decoded for editing: seq, time, kind, payload (an object), prev_hash, hash, signature.
#: `line` turns one back into an export line, its body rebuilt from the (possibly edited) fields.
Entries = list[dict[str, Any]]


def run(entries: Entries, public_key: bytes, expect: str | None = None) -> verify.Report:
    """Verify entries as the export file would hold them."""
    lines = [line(e) for e in entries]
    head = verify.parse_head(expect) if expect else None
    return verify.verify_lines(lines, verify.load_public_key(public_key), expect_head=head)


def policy_of(chorus: Chorus, window: str = WINDOW) -> config.Policy:
    return chorus.db.run(lambda tx: window_store.get(tx, window).policy, name="policy")


def roster_rows() -> list[tuple[str, str]]:
    return [(f"user-{team}-{i}", team) for team, size in TEAMS.items() for i in range(size)]


def release_payload(policy: config.Policy, release_id: str, window: str, team: str, metric: str,
                    statistic: str, epsilon: Epsilon, spent_after: Epsilon, by: str = "analyst-1",
                    value: str | list[str] | None = None) -> dict[str, Any]:
    """A release entry's payload in the exact shape the release service writes."""
    bound = policy.metric(metric)
    sensitivity = bound.max_per_user if statistic == "sum" and bound else 1
    scale = sensitivity / epsilon.as_float
    charged = verify.implied_epsilon(verify.MECHANISM, statistic == "histogram", scale, sensitivity)
    if value is None:
        value = ["3", "1", "0", "0", "1"] if statistic == "histogram" else "42"
    return {"release_id": release_id, "window": window, "team": team, "metric": metric,
            "statistic": statistic, "mechanism": verify.MECHANISM, "sensitivity": sensitivity,
            "scale": scale, "epsilon": str(charged), "value": value, "ci95": 3.0 * scale,
            "budget_cap": str(policy.budget_per_window), "budget_spent_after": str(spent_after + charged),
            "by": by}


def releases(chorus: Chorus) -> Releases:
    return Releases(chorus.db, chorus.ledger, chorus.clock, chorus.config.policy)


def release(chorus: Chorus, team: str, metric: str, *statistics: str, window: str = WINDOW) -> None:
    """Release statistics of one team and metric through the real release code."""
    releases(chorus).release(window, [team], [metric], [StatisticRequest(s) for s in statistics],
                             requester="analyst-1")


def open_and_close(chorus: Chorus, window: str = WINDOW) -> None:
    """Open the window of the clock's day (freezing the policy) and force-close it."""
    chorus.closer.tick()
    chorus.close_window(window, actor="test-admin")


def export_entries(chorus: Chorus) -> list[dict[str, Any]]:
    """The ledger as the export file holds it: one JSON object per entry."""
    return [decode(verify.export_line(e)) for e in ledger_entries(chorus.db)]


def write_jsonl(path: Path, entries: list[dict[str, Any]]) -> Path:
    path.write_text("".join(line(e) + "\n" for e in entries), encoding="utf-8")
    return path


def forge(entries: list[dict[str, Any]], signer: Signer, kind: str, payload: dict[str, Any],
          at: datetime | None = None) -> None:
    """Append a correctly chained and signed entry, as an operator holding the key could."""
    last = entries[-1]
    stamp = format_time(at) if at else last["time"]
    entry = {"seq": last["seq"] + 1, "time": stamp, "kind": kind, "payload": payload,
             "prev_hash": last["hash"], "hash": "", "signature": ""}
    entries.append(entry)
    entries[-1:] = resign(entries, signer, len(entries) - 1)[-1:]


def seq_of(entries: list[dict[str, Any]], kind: str, **fields: Any) -> int:
    """The seq of the first entry of `kind` whose payload has these field values."""
    return next(e["seq"] for e in entries
                if e["kind"] == kind and all(e["payload"].get(k) == v for k, v in fields.items()))


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(NOON)


@pytest.fixture
def chorus(tmp_path: Path, clock: FakeClock) -> Iterator[Chorus]:
    instance = Chorus(suite_config(), tmp_path / "data", clock=clock)
    instance.import_roster(roster_rows(), actor="test-admin")
    yield instance
    instance.close()


@pytest.fixture
def released(chorus: Chorus, clock: FakeClock) -> Chorus:
    """The standard scenario: one closed window with RELEASES made, then the next day open."""
    open_and_close(chorus)
    release(chorus, "team-red", "ai.tokens", "sum", "count", "histogram", "adoption")
    release(chorus, "team-blue", "ai.requests", "sum")
    clock.advance(timedelta(days=1))
    chorus.closer.tick()
    return chorus


@pytest.fixture
def entries(released: Chorus) -> list[dict[str, Any]]:
    return export_entries(released)


@pytest.fixture
def public_key(chorus: Chorus) -> bytes:
    return chorus.ledger.signer.public_key_pem().encode()


@pytest.fixture
def server(chorus: Chorus) -> Iterator[Server]:
    running = Server(chorus, "127.0.0.1:0")
    running.start()
    yield running
    running.stop(grace=1)


@pytest.fixture
def auditor_token(chorus: Chorus) -> str:
    secret, _ = chorus.tokens.create(Role.AUDITOR, "officer", chorus.clock.now(), actor="test-admin")
    return secret
