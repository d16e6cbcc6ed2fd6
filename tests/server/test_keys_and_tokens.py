"""Races on first start and on revocation leave exactly one key and one ledger record."""

from __future__ import annotations

import stat
from concurrent.futures import ThreadPoolExecutor

from chorus.server.domain.ledger import KEY_FILE, Signer
from chorus.server.model.roles import Role
from chorus.server.root import Chorus

from .conftest import batch


def test_replicas_starting_together_share_one_signing_key(tmp_path) -> None:
    with ThreadPoolExecutor(8) as pool:
        signers = list(pool.map(lambda _: Signer.load_or_create(tmp_path), range(8)))
    assert len({s.public_key_pem() for s in signers}) == 1
    assert stat.S_IMODE((tmp_path / KEY_FILE).stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == [KEY_FILE]  # no temporary file left behind


def test_concurrent_revocations_record_one_ledger_entry(chorus: Chorus) -> None:
    now = chorus.clock.now()
    chorus.tokens.create(Role.INGEST, "tool", now, "test")
    with ThreadPoolExecutor(4) as pool:
        infos = list(pool.map(lambda _: chorus.tokens.revoke("tool", now, "test"), range(4)))
    assert all(i.revoked is not None for i in infos)
    kinds = chorus.db.run(lambda tx: tx.query("SELECT kind FROM ledger WHERE kind = 'token_revoke'"), name="t")
    assert len(kinds) == 1


def test_the_database_files_are_owner_only(chorus: Chorus) -> None:
    chorus.ingestor.report(batch(("user-team-red-0", "ai.tokens", 1)))
    for name in ("chorus.db", "chorus.db-wal", "chorus.db-shm"):
        assert stat.S_IMODE((chorus.data_dir / name).stat().st_mode) == 0o600, name
