"""A release charges the budget, stores the release and appends its ledger entry in one
transaction: a crash anywhere in between leaves all three as they were."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest

from chorus.server.domain.ledger import Ledger
from chorus.server.model.ledger_format import Entry
from chorus.server.root import Chorus
from chorus.server.store import Tx

from .conftest import WINDOW, export_entries, open_and_close, release, run


def snapshot(chorus: Chorus) -> dict[str, list[tuple[Any, ...]]]:
    tables = {"budgets": "window_id, team", "releases": "release_id", "ledger": "seq", "ledger_head": "id"}
    return chorus.db.run(lambda tx: {t: tx.query(f"SELECT * FROM {t} ORDER BY {order}")
                                     for t, order in tables.items()}, name="snapshot")


def spent(tx: Tx, team: str) -> int:
    (micros,), = tx.query("SELECT spent_micros FROM budgets WHERE window_id = ? AND team = ?", (WINDOW, team))
    return int(micros)


@pytest.mark.parametrize("crash", ["before_append", "after_append"])
def test_a_crash_between_charge_and_ledger_write_changes_nothing(
        chorus: Chorus, public_key: bytes, monkeypatch: pytest.MonkeyPatch, crash: str) -> None:
    open_and_close(chorus)
    release(chorus, "team-red", "ai.tokens", "count")
    before = snapshot(chorus)
    real_append = Ledger.append
    charged_when_crashing: list[int] = []

    def failing(self: Ledger, tx: Tx, kind: str, payload: dict[str, Any], at: datetime) -> Entry:
        if kind != "release":
            return real_append(self, tx, kind, payload, at)
        charged_when_crashing.append(spent(tx, payload["team"]))  # the budget UPDATE already ran
        if crash == "after_append":
            real_append(self, tx, kind, payload, at)
        raise OSError("disk full")

    monkeypatch.setattr(Ledger, "append", failing)
    with pytest.raises(OSError, match="disk full"):
        release(chorus, "team-red", "ai.tokens", "sum")
    assert charged_when_crashing == [100_000]  # 0.05 from the earlier count, 0.05 from this sum
    assert snapshot(chorus) == before

    monkeypatch.undo()
    release(chorus, "team-red", "ai.tokens", "sum")
    report = run(export_entries(chorus), public_key)
    assert report.ok, report.violations
    assert (report.totals[(WINDOW, "team-red")].releases, str(report.totals[(WINDOW, "team-red")].spent)) \
        == (2, "0.1")
