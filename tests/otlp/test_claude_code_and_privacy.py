"""A Claude-Code-shaped export, mapped by the shipped default mapping; and privacy at the door:
nothing but the identity's pseudonym and the mapped values reaches the disk."""

from __future__ import annotations

import logging
import tomllib
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from chorus.server.model import config
from chorus.server.model.calendar import WindowLength, window_of

from ._requests import CUMULATIVE, DELTA, export_grpc, now_ns, point, request, sum_metric
from .conftest import OtlpServer

#: Every test here starts a server, a process or a browser (tests/conftest.py, the fast lane).
pytestmark = pytest.mark.slow

RED0, BLUE2 = "user-team-red-0", "user-team-blue-2"
OUTSIDER = "user-outsider-77"  # sends usage but is not on the roster
MIN = 60 * 10**9
# Values only the exports carry: none may reach the data directory.
SECRETS = {
    "session.id": "7f3a9c2e-5b1d-4e8a-9f0c-sessionsecret",
    "user.account_uuid": "5d1e8b7a-account-uuid-secret",
    "organization.id": "9c1b2d3e-organization-secret",
    "model": "claude-secret-model-20260101",
    "terminal.type": "terminal-secret-kitty",
    "app.version": "2.9.99-secret",
    "host.arch": "arch-secret-riscv",
    "os.version": "os-secret-6.1.0",
}


def default_with_otlp() -> config.Config:
    """The shipped default configuration with its commented [otlp] block enabled, as docs/otlp.md says."""
    return config.parse(tomllib.loads(config.with_otlp_enabled(config.DEFAULT_TOML)))


@pytest.fixture
def default_server(tmp_path: Path) -> Iterator[OtlpServer]:
    server = OtlpServer(tmp_path / "data", default_with_otlp())
    yield server
    server.stop()


def claude_code_export(user: str, start: int, end: int, temporality: int = DELTA, scale: float = 1.0):
    """The shape of Claude Code's metrics export (its monitoring documentation): the standard
    attributes on every data point, every value a double (the JavaScript SDK)."""
    standard = {"user__email": user, "session__id": SECRETS["session.id"],
                "user__account_uuid": SECRETS["user.account_uuid"], "organization__id": SECRETS["organization.id"],
                "terminal__type": SECRETS["terminal.type"], "app__version": SECRETS["app.version"]}

    def pts(*pairs: tuple[float, dict]) -> list:
        return [point(float(v) * scale, start, end, **standard, **extra) for v, extra in pairs]

    model = {"model": SECRETS["model"]}
    return request([
        sum_metric("claude_code.session.count", pts((1, {})), temporality),
        sum_metric("claude_code.token.usage", pts(
            (1200, {"type": "input", **model}), (800, {"type": "output", **model}),
            (90000, {"type": "cacheRead", **model}), (5000, {"type": "cacheCreation", **model})), temporality),
        sum_metric("claude_code.cost.usage", pts((0.42, model)), temporality),
        sum_metric("claude_code.lines_of_code.count", pts((120, {"type": "added"}), (30, {"type": "removed"})),
                   temporality),
        sum_metric("claude_code.code_edit_tool.decision", pts(
            (3, {"tool_name": "Edit", "decision": "accept", "source": "config", "language": "Python"}),
            (2, {"tool_name": "Edit", "decision": "accept", "source": "user_temporary", "language": "Python"}),
            (1, {"tool_name": "Write", "decision": "reject", "source": "user_reject", "language": "Go"})),
            temporality),
        sum_metric("claude_code.active_time.total", pts((360.5, {"type": "cli"})), temporality),
    ], resource={"service.name": "claude-code", "service.version": SECRETS["app.version"], "os.type": "linux",
                 "os.version": SECRETS["os.version"], "host.arch": SECRETS["host.arch"]})


def week() -> str:
    return window_of(datetime.now(UTC), WindowLength.WEEK).id


def test_the_shipped_default_mapping_counts_claude_codes_export(default_server: OtlpServer) -> None:
    t = now_ns() - 5 * MIN
    reply = export_grpc(default_server.address, default_server.ingest_token,
                        claude_code_export(RED0, t - MIN, t))
    assert not reply.HasField("partial_success")  # unmapped instruments and filtered points are no rejection
    # Accepted by a permission mode (source "config") is no person's decision: 2 of the 5 count.
    assert default_server.totals(week()) == {
        (RED0, "ai.tokens"): 2000, (RED0, "ai.suggestions_accepted"): 2, (RED0, "ai.suggestions_rejected"): 1,
        (RED0, "ai.lines_added"): 120, (RED0, "ai.lines_removed"): 30, (RED0, "ai.active_seconds"): 360,
        (RED0, "ai.sessions"): 1}
    stats = default_server.chorus.otlp.points()
    assert stats["counted"] == 8 and stats["ignored_filtered"] == 3  # cacheRead, cacheCreation, source config
    assert stats["ignored_unmapped"] == 1  # cost


def _scan(data_dir: Path, needles: dict[str, bytes]) -> list[str]:
    found = []
    for path in sorted(data_dir.rglob("*")):
        if path.is_file():
            blob = path.read_bytes()
            found += [f"{name} in {path.name}" for name, needle in needles.items() if needle in blob]
    return found


def test_nothing_but_pseudonyms_and_mapped_values_reach_the_disk(default_server: OtlpServer) -> None:
    data_dir = default_server.data_dir
    log_file = logging.FileHandler(data_dir / "server.log")  # the server's log, in the scanned directory
    log_file.setLevel(logging.DEBUG)
    logging.getLogger().addHandler(log_file)
    try:
        t = now_ns() - 20 * MIN
        for user in (RED0, BLUE2, OUTSIDER):
            export_grpc(default_server.address, default_server.ingest_token,
                        claude_code_export(user, t - MIN, t))
            for i in range(1, 3):  # a cumulative stream too: its series state is on disk while open
                export_grpc(default_server.address, default_server.ingest_token,
                            claude_code_export(user, t - MIN, t + i * MIN, CUMULATIVE, scale=i))
        assert default_server.rows("SELECT COUNT(*) FROM otlp_series") != [(0,)]
        needles = {name: value.encode() for name, value in SECRETS.items()}
        needles["outsider"] = OUTSIDER.encode()
        assert _scan(data_dir, needles) == []  # while the window is open
        default_server.chorus.close_window(week(), "test")
        assert default_server.stored_nothing()
        assert _scan(data_dir, needles) == []  # and after close
        # On-roster identities are in the roster table by design, never in a usage or OTLP row.
        for table in ("usage", "otlp_points", "otlp_series", "batches", "ledger"):
            assert RED0 not in repr(default_server.rows(f"SELECT * FROM {table}")), table
    finally:
        logging.getLogger().removeHandler(log_file)
        log_file.close()
