"""The roster (user -> team), imported by an admin from CSV. Team sizes are public."""

from __future__ import annotations

import csv
import hashlib
import io
import threading
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from chorus.server.ledger import Ledger
from chorus.server.store._db import Tx

MAX_NAME_LENGTH = 256


class RosterError(ValueError):
    """The roster is malformed; the message names the line and the rule."""


@dataclass(frozen=True, slots=True)
class ImportResult:
    people: int
    team_sizes: dict[str, int]
    roster_hash: str


def parse_csv(text: str) -> list[tuple[str, str]]:
    """Rows of a `user,team` CSV (header required), validated; duplicates are an error."""
    reader = csv.reader(io.StringIO(text))
    header = next(reader, None)
    if header is None or [h.strip().lower() for h in header] != ["user", "team"]:
        # Never echo the line: without a header it is a person's row.
        raise RosterError("line 1 must be the header 'user,team' (one row per person follows)")
    rows = []
    for line, row in enumerate(reader, start=2):
        if not row or all(not c.strip() for c in row):
            continue
        if len(row) != 2:
            raise RosterError(f"line {line}: expected 2 columns (user,team), got {len(row)}")
        rows.append((row[0].strip(), row[1].strip()))
    return validate(rows, where=lambda i: f"line {i + 2}")


def validate(rows: Iterable[tuple[str, str]], where: Any = lambda i: f"entry {i}") -> list[tuple[str, str]]:
    """Check names and uniqueness; errors name the position, never the user id."""
    seen: set[str] = set()
    out = []
    for i, (user, team) in enumerate(rows):
        for label, value in (("user", user), ("team", team)):
            if not value or len(value) > MAX_NAME_LENGTH or not value.isprintable():
                raise RosterError(f"{where(i)}: {label} must be 1..{MAX_NAME_LENGTH} printable "
                                  "characters")
        if user in seen:
            raise RosterError(f"{where(i)}: user appears more than once in the roster")
        seen.add(user)
        out.append((user, team))
    if not out:
        raise RosterError("roster is empty")
    return out


def roster_hash(rows: Iterable[tuple[str, str]]) -> str:
    digest = hashlib.sha256()
    for user, team in sorted(rows):
        digest.update(f"{user}\t{team}\n".encode())
    return digest.hexdigest()


def replace(tx: Tx, rows: list[tuple[str, str]], ledger: Ledger, now: datetime,
            actor: str) -> ImportResult:
    """Replace the whole roster and record its hash and team sizes in the ledger."""
    sizes = dict(sorted(Counter(team for _, team in rows).items()))
    digest = roster_hash(rows)
    # Lock the version row first: a concurrent import waits here until we commit, so its
    # DELETE (a fresh snapshot under READ COMMITTED) sees and removes our rows.
    tx.execute("UPDATE roster_version SET version = version + 1, roster_hash = ? WHERE id = 1",
               (digest,))
    tx.execute("DELETE FROM roster")
    tx.executemany("INSERT INTO roster (user_id, team) VALUES (?, ?)", rows)
    ledger.append(tx, "roster_import", {"roster_sha256": digest, "people": len(rows),
                                        "team_sizes": sizes, "by": actor}, now)
    return ImportResult(len(rows), sizes, digest)


def team_sizes(tx: Tx) -> dict[str, int]:
    return dict(tx.query("SELECT team, COUNT(*) FROM roster GROUP BY team ORDER BY team"))


class RosterCache:
    """In-memory user -> team map, reloaded when another import bumps the version."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._version = -1
        self._teams: dict[str, str] = {}

    def current(self, tx: Tx) -> dict[str, str]:
        (version,), = tx.query("SELECT version FROM roster_version WHERE id = 1")
        with self._lock:
            if version != self._version:
                self._teams = dict(tx.query("SELECT user_id, team FROM roster"))
                self._version = version
            return self._teams
