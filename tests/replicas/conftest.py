"""Several `chorus serve` processes on one PostgreSQL schema and one shared data directory.

The data directory is shared as the deployment guide requires (docs/deployment.md): every
replica signs ledger entries with the same ledger-signing-key.pem. Each replica's output
goes to its own log file, read for the ready line and shown when a test fails.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import psycopg
import pytest

from chorus.server.model.roles import Role
from chorus.server.root import Chorus
from tests._policy import suite_config, suite_config_file
from tests._roster import REPLICA_TEAMS as TEAMS  # noqa: F401
from tests._roster import replica_roster as roster_rows
from tests.store.postgres_schema import fresh_schema, url_with

READY = re.compile(r"chorus serving on (\S+)")
@dataclass
class Replica:
    """One `python -m chorus.server.cli serve` process; restartable on the same port."""

    name: str
    database: str
    data_dir: Path
    log_dir: Path
    address: str = ""
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0

    @property
    def log(self) -> Path:
        return self.log_dir / f"{self.name}.log"

    def launch(self) -> None:
        """Start the process (on the port it had before, if it ran already); do not wait."""
        self.starts += 1
        with self.log.open("ab") as log:
            log.write(f"--- start {self.starts}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "chorus.server.cli", "serve", "--data-dir", str(self.data_dir),
                 "--config", str(suite_config_file(self.data_dir.parent)),
                 "--listen", self.address or "127.0.0.1:0", "--database", self.database,
                 "--log-level", "WARNING"],
                stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "COLUMNS": "400"})

    def wait_ready(self, timeout: float = 60.0) -> str:
        """Block until this start's ready line appears; return host:port."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log.read_text(errors="replace").rpartition(f"--- start {self.starts}\n")[2]
            if m := READY.search(text):
                self.address = m[1]
                return self.address
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        log = self.log.read_text(errors="replace")
        raise RuntimeError(f"replica {self.name} did not become ready:\n{log}")

    def start(self) -> str:
        self.launch()
        return self.wait_ready()

    def kill_mid_transaction(self, timeout: float = 20.0) -> bool:
        """SIGKILL the moment one of this replica's sessions is inside a transaction.

        Returns whether one was seen (else it is killed at the timeout anyway).
        """
        deadline = time.monotonic() + timeout
        seen = False
        with psycopg.connect(self.database, autocommit=True, application_name="observer") as conn:
            while not seen and time.monotonic() < deadline:
                (busy,), = conn.execute(
                    "SELECT COUNT(*) FROM pg_stat_activity WHERE application_name = %s "
                    "AND xact_start IS NOT NULL AND state <> 'idle'", (self.name,)).fetchall()
                seen = busy > 0
        self.kill()
        return seen

    def kill(self) -> None:
        """SIGKILL: no graceful shutdown, in-flight transactions die with the connection."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)


@dataclass
class Cluster:
    """A PostgreSQL schema, the shared data directory, tokens, and the replicas on them."""

    database: str
    data_dir: Path
    log_dir: Path
    tokens: dict[str, str] = field(default_factory=dict)
    replicas: list[Replica] = field(default_factory=list)

    def provision(self) -> None:
        """What an operator does once: schema, signing key, roster, tokens (in-process, then closed)."""
        chorus = Chorus(suite_config(), self.data_dir, database=self.database)
        try:
            chorus.import_roster(roster_rows(), actor="operator")
            for role in (Role.ADMIN, Role.INGEST, Role.ANALYST):
                self.tokens[role.value], _ = chorus.tokens.create(role, f"test-{role.value}",
                                                                  chorus.clock.now(), actor="operator")
        finally:
            chorus.close()

    def add(self, count: int) -> list[Replica]:
        names = [f"replica-{len(self.replicas) + i}" for i in range(count)]
        # application_name tags each replica's sessions in pg_stat_activity.
        new = [Replica(name, url_with(self.database, application_name=name), self.data_dir, self.log_dir)
               for name in names]
        self.replicas.extend(new)
        return new

    def start(self, count: int) -> list[Replica]:
        """Launch `count` more replicas at once and wait until all are ready."""
        new = self.add(count)
        for replica in new:
            replica.launch()
        for replica in new:
            replica.wait_ready()
        return new

    def channel(self, replica: Replica) -> grpc.Channel:
        return grpc.insecure_channel(replica.address)

    def metadata(self, role: Role) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.tokens[role.value]}"),)

    def sql(self, query: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Read the shared database directly, as an operator with psql would."""
        with psycopg.connect(self.database) as conn:
            return conn.execute(query, params).fetchall()

    def stop(self) -> None:
        for replica in self.replicas:
            replica.kill()

    def logs(self) -> str:
        return "\n".join(f"=== {r.name}\n{r.log.read_text(errors='replace')[-4000:]}"
                         for r in self.replicas if r.log.exists())


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    """An empty PostgreSQL schema and data directory; no replica started yet."""
    with fresh_schema() as url:
        created = Cluster(url, tmp_path / "data", tmp_path)
        try:
            yield created
        finally:
            created.stop()
            print(created.logs())  # pytest shows captured output only when the test failed
