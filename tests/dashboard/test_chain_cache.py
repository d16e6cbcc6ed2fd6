"""The ledger page's verdict is kept up to date incrementally, and still catches a broken chain."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from chorus.server.dashboard.verification import FAILED, VERIFIED, ChainCache
from chorus.server.domain.ledger import read_entries
from chorus.server.model.ledger_format import Entry
from chorus.server.model.roles import Role
from chorus.server.root import Chorus
from tests._policy import suite_config


def test_only_new_entries_are_fed_and_a_broken_chain_is_caught(tmp_path: Path) -> None:
    chorus = Chorus(suite_config(), tmp_path / "data")
    try:
        chorus.import_roster([("user-a", "team")], actor="test")
        asked: list[int] = []

        def entries_from(seq: int) -> list[Entry]:
            asked.append(seq)
            return chorus.db.run(lambda tx: read_entries(tx, seq, 10_000), name="test")

        cache, key = ChainCache(), chorus.ledger.signer.public_key_pem()
        first = cache.status(entries_from, key)
        assert (first.state, first.entries) == (VERIFIED, 2)  # config, roster_import

        chorus.tokens.create(Role.INGEST, "tool", chorus.clock.now(), "test")
        second = cache.status(entries_from, key)
        assert (second.state, second.entries, asked) == (VERIFIED, 3, [1, 3])

        # An appended entry that does not chain onto the last verified one (a rewritten history).
        genuine = chorus.db.run(lambda tx: read_entries(tx, 2, 1), name="test")[0]
        forged = dataclasses.replace(genuine, seq=4, prev_hash="0" * 64)
        third = cache.status(lambda seq: [forged] if seq == 4 else [], key)
        assert third.state == FAILED and third.entries == 4

        # A body that is not even JSON is the verifier's format violation, not a crash.
        garbled = dataclasses.replace(genuine, payload="{not json")
        fourth = ChainCache().status(lambda seq: [garbled] if seq == 1 else [], key)
        assert fourth.state == FAILED and "[format]" in fourth.violations[0]
    finally:
        chorus.close()

