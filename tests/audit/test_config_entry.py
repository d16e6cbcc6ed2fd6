"""The "config" ledger entry: recorded when a server starts with a policy unlike the last one."""

from __future__ import annotations

import copy
import json
import tomllib
from pathlib import Path
from typing import Any

from chorus.server.domain import audit
from chorus.server.model import config
from chorus.server.model.clock import FakeClock
from chorus.server.model.ledger_format import policy_sha256
from chorus.server.root import Chorus
from tests._ledger import ledger_entries
from tests._policy import SUITE_TOML

from .conftest import Entries, resign, run, seq_of

CHANGED = SUITE_TOML.replace('epsilon_per_window = "1"', 'epsilon_per_window = "2"')


def start(data_dir: Path, clock: FakeClock, toml: str = SUITE_TOML) -> list[dict[str, Any]]:
    """Start (and stop) a server on `data_dir`; return the payloads of its config entries."""
    instance = Chorus(config.parse(tomllib.loads(toml)), data_dir, clock=clock)
    try:
        return [json.loads(e.payload) for e in ledger_entries(instance.db) if e.kind == audit.CONFIG_KIND]
    finally:
        instance.close()


def test_the_first_start_records_the_policy_and_its_hash(chorus: Chorus) -> None:
    first = next(ledger_entries(chorus.db))
    payload = json.loads(first.payload)
    assert (first.seq, first.kind) == (1, "config")
    assert payload["policy"] == chorus.config.policy.to_json()
    assert payload["policy_sha256"] == policy_sha256(chorus.config.policy.to_json())


def test_a_restart_records_only_a_policy_that_differs_from_the_last_one(tmp_path: Path,
                                                                         clock: FakeClock) -> None:
    data = tmp_path / "data"
    assert len(start(data, clock)) == 1
    assert len(start(data, clock)) == 1  # same policy: nothing new
    recorded = start(data, clock, CHANGED)
    assert len(recorded) == 2 and recorded[-1]["policy"]["epsilon_per_window"] == "2"
    assert len(start(data, clock, CHANGED)) == 2
    back = start(data, clock)  # back to the first policy: it differs from the last recorded one
    assert len(back) == 3 and back[-1] == back[0]


def test_a_config_entry_whose_hash_does_not_match_its_policy_is_named(chorus: Chorus, entries: Entries,
                                                                      public_key: bytes) -> None:
    target = seq_of(entries, "config")
    tampered = copy.deepcopy(entries)
    tampered[target - 1]["payload"]["policy"]["min_team_size"] = 2
    tampered = resign(tampered, chorus.ledger.signer)
    report = run(tampered, public_key)
    assert [(v.seq, v.rule) for v in report.violations] == [(target, "config")]
