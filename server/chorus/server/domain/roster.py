"""The roster (user -> team), imported by an admin from CSV. Team sizes are public.

A roster may also place teams in the organisation tree: an optional `org` column gives each
row's org path (`engineering/platform`; see `chorus.server.model.hierarchy`). The org belongs to the
team, so every row of a team names the same one; a team without one sits under the company.
The tree is public like the sizes and is recorded with them in the roster_import entry.
"""

from __future__ import annotations

import csv
import hashlib
import io
import threading
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from chorus.server import store
from chorus.server.domain import shred
from chorus.server.domain.ledger import Ledger
from chorus.server.model import hierarchy, user_ids
from chorus.server.model.clock import Clock
from chorus.server.store import Database, Tx

MAX_NAME_LENGTH = 256


class RosterError(ValueError):
    """The roster is malformed; the message names the line and the rule."""


@dataclass(frozen=True, slots=True)
class ImportResult:
    """A roster import (or its preview), with what it changes against the roster it replaces."""

    people: int
    team_sizes: dict[str, int]
    roster_hash: str
    previous_sizes: dict[str, int]
    people_added: int
    people_removed: int
    #: team -> org path, for the teams that have one.
    team_orgs: dict[str, str] = field(default_factory=dict)


def decode(data: bytes, encoding: str) -> str:
    """The file's text; a byte the encoding cannot read is named by line and column, never shown
    with its neighbours (they are a person's row)."""
    try:
        return data.decode(encoding)
    except LookupError:
        raise RosterError(f"unknown encoding {encoding!r} (e.g. utf-8, latin-1, cp1252)") from None
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise RosterError(f"line {line}, column {column}: byte 0x{data[exc.start]:02x} is not valid {encoding}; "
                          "give the file's encoding with --encoding (spreadsheets on Windows often write cp1252, "
                          "older HR systems latin-1)") from None


#: Delimiters a roster export may use (`detect_delimiter`), with the names errors give them.
DELIMITERS = {",": "','", ";": "';'", "\t": "tab", "|": "'|'"}


def _header(text: str, delimiter: str) -> list[str]:
    line = text.removeprefix("\ufeff").partition("\n")[0]
    return [h.strip().lower() for h in next(csv.reader([line], delimiter=delimiter), [])]


def detect_delimiter(text: str, user_column: str = "user", team_column: str = "team") -> str:
    """The delimiter of `DELIMITERS` whose header names both columns; else the one splitting the
    header into the most columns (so the error says what was found); "," when none splits it.
    Spreadsheets in many locales export `;`-separated CSV."""
    wanted = (user_column.strip().lower(), team_column.strip().lower())
    splits = {d: _header(text, d) for d in DELIMITERS}
    for d, header in splits.items():
        if all(name in header for name in wanted):
            return d
    return max(DELIMITERS, key=lambda d: (len(splits[d]), d == ","))


def parse_csv(text: str, user_column: str = "user", team_column: str = "team",
              org_column: str = "org", delimiter: str = ",") -> tuple[list[tuple[str, str]], dict[str, str]]:
    """Rows of a CSV with a header naming `user_column` and `team_column` (other columns are
    ignored, so an HR export can be imported as is), validated; duplicates are an error. When the
    header also names `org_column`, the second result maps each team to its org path."""
    if len(delimiter) != 1:
        raise RosterError(f"delimiter {delimiter!r} must be one character, e.g. ';' (a tab: $'\\t')")
    # Spreadsheets start UTF-8 with a BOM.
    reader = csv.reader(io.StringIO(text.removeprefix("\ufeff")), delimiter=delimiter)
    header = [h.strip().lower() for h in next(reader, [])]
    wanted = (user_column.strip().lower(), team_column.strip().lower())
    missing = [name for name in wanted if name not in header]
    twice = [name for name in (*wanted, org_column.strip().lower()) if header.count(name) > 1]
    if missing or twice or wanted[0] == wanted[1]:
        # Never echo the line: without a header it is a person's row. Its shape is no one's.
        why = (f"has no column named {', '.join(map(repr, missing))}" if missing
               else f"names {', '.join(map(repr, twice or wanted[:1]))} more than once")
        found = (f"read with delimiter {DELIMITERS.get(delimiter, repr(delimiter))}, it has {len(header)} "
                 f"column(s){'' if len(header) > 1 else ': is the delimiter another? pass --delimiter'}")
        raise RosterError(f"line 1 must be a header naming the user and team columns, but it {why} ({found}; "
                          "choose the columns with --user-column and --team-column; one row per person follows)")
    user_at, team_at = header.index(wanted[0]), header.index(wanted[1])
    org_name = org_column.strip().lower()
    org_at = header.index(org_name) if org_name in header and org_name not in wanted else None
    rows, lines, orgs = [], [], []
    for line, row in enumerate(reader, start=2):
        if not row or all(not c.strip() for c in row):
            continue
        if len(row) != len(header):
            raise RosterError(f"line {line}: expected {len(header)} columns as in the header, got {len(row)}")
        rows.append((row[user_at].strip(), row[team_at].strip()))
        orgs.append(row[org_at] if org_at is not None else "")
        lines.append(line)
    valid = validate(rows, where=lambda i: f"line {lines[i]}")
    return valid, team_orgs(valid, orgs, where=lambda i: f"line {lines[i]}")


def team_orgs(rows: list[tuple[str, str]], orgs: list[str],
              where: Any = lambda i: f"entry {i}") -> dict[str, str]:
    """team -> org path from each row's org (empty: none), checking that a team names one org
    and that no team has an org's name; errors name the position and the team, never a user."""
    found: dict[str, tuple[str, int]] = {}
    for i, ((_, team), raw) in enumerate(zip(rows, orgs, strict=True)):
        try:
            org = hierarchy.org_path(raw)
        except hierarchy.HierarchyError as exc:
            raise RosterError(f"{where(i)}: {exc}") from None
        first = found.setdefault(team, (org, i))
        if first[0] != org:
            raise RosterError(f"{where(i)}: team {team!r} is in org {org or '(none)'!r} here but in "
                              f"{first[0] or '(none)'!r} at {where(first[1])}; a team belongs to one org")
    try:
        hierarchy.Hierarchy.of((team, org, 0) for team, (org, _) in found.items())
    except hierarchy.HierarchyError as exc:
        raise RosterError(str(exc)) from None
    return {team: org for team, (org, _) in sorted(found.items()) if org}


def validate(rows: Iterable[tuple[str, str]], where: Any = lambda i: f"entry {i}") -> list[tuple[str, str]]:
    """Check names and uniqueness of the normalised user ids (`user_ids.normalise`), which are
    what is returned; errors name the positions, never the user id."""
    seen: dict[str, int] = {}
    out = []
    for i, (raw, team) in enumerate(rows):
        user = user_ids.normalise(raw)
        for label, value in (("user", user), ("team", team)):
            if not value or len(value) > MAX_NAME_LENGTH or not value.isprintable():
                raise RosterError(f"{where(i)}: {label} must be 1..{MAX_NAME_LENGTH} printable "
                                  "characters")
        first = seen.setdefault(user, i)
        if first != i:
            raise RosterError(f"{where(i)}: user appears more than once in the roster (also at {where(first)}; "
                              "ids are compared trimmed, and emails case-insensitively)")
        out.append((user, team))
    if not out:
        raise RosterError("roster is empty")
    return out


def roster_hash(rows: Iterable[tuple[str, str]], orgs: dict[str, str] | None = None) -> str:
    """SHA-256 over the sorted rows; a row whose team has an org also hashes the org path."""
    digest = hashlib.sha256()
    orgs = orgs or {}
    for user, team in sorted(rows):
        fields = (user, team, orgs[team]) if orgs.get(team) else (user, team)
        digest.update(("\t".join(fields) + "\n").encode())
    return digest.hexdigest()


def preview(tx: Tx, rows: list[tuple[str, str]], orgs: dict[str, str] | None = None) -> ImportResult:
    """What replacing the roster with `rows` would change; changes nothing."""
    return _compared(tx, rows, roster_hash(rows, orgs), orgs or {})


def _compared(tx: Tx, rows: list[tuple[str, str]], digest: str, orgs: dict[str, str]) -> ImportResult:
    current = store.roster.user_ids(tx)
    new = {user for user, _ in rows}
    teams = {team for _, team in rows}
    return ImportResult(len(rows), dict(sorted(Counter(team for _, team in rows).items())), digest,
                        team_sizes(tx), len(new - current), len(current - new),
                        {t: o for t, o in sorted(orgs.items()) if t in teams and o})


def replace(tx: Tx, rows: list[tuple[str, str]], ledger: Ledger, now: datetime,
            actor: str, orgs: dict[str, str] | None = None) -> ImportResult:
    """Replace the whole roster (and the teams' org paths) and record its hash, team sizes and
    org paths in the ledger."""
    orgs = orgs or {}
    digest = roster_hash(rows, orgs)
    # Lock the version row first: a concurrent import waits here until we commit, so its
    # DELETE (a fresh snapshot under READ COMMITTED) sees and removes our rows, and the
    # comparison below is against the roster this import really replaces.
    store.roster.bump_version(tx, digest)
    result = _compared(tx, rows, digest, orgs)
    sizes = result.team_sizes
    store.roster.replace(tx, rows, result.team_orgs)
    body: dict[str, Any] = {"roster_sha256": digest, "people": len(rows), "team_sizes": sizes, "by": actor}
    if result.team_orgs:  # a flat roster's entry keeps its earlier form
        body["team_orgs"] = result.team_orgs
    ledger.append(tx, "roster_import", body, now)
    return result


def team_sizes(tx: Tx) -> dict[str, int]:
    return store.roster.team_sizes(tx)


def current_orgs(tx: Tx) -> dict[str, str]:
    """team -> org path of the current roster, for the teams that have one."""
    return store.roster.team_orgs(tx)


class RosterCache:
    """In-memory user -> team map, reloaded when another import bumps the version."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._version = -1
        self._teams: dict[str, str] = {}

    def current(self, tx: Tx) -> dict[str, str]:
        return self.snapshot(tx)[1]

    def snapshot(self, tx: Tx) -> tuple[int, dict[str, str]]:
        """(the roster's version, user -> team) as `tx` sees it."""
        version = store.roster.version(tx)
        with self._lock:
            if version != self._version:
                # Rosters imported before ids were normalised hold them as written: normalise here too.
                self._teams = {user_ids.normalise(u): t for u, t in store.roster.members(tx).items()}
                self._version = version
            return self._version, self._teams


class Rosters:
    """Roster imports as a service: each call runs its own transaction. Replacing the roster
    records a pending shred of the raw ids it removes, then tries to complete it at once."""

    def __init__(self, db: Database, ledger: Ledger, clock: Clock, shredder: shred.Shredder) -> None:
        self._db = db
        self._ledger = ledger
        self._clock = clock
        self._shredder = shredder

    def preview(self, rows: list[tuple[str, str]], orgs: dict[str, str] | None = None) -> ImportResult:
        """What `replace(rows, orgs)` would change; changes nothing."""
        return self._db.read(lambda tx: preview(tx, rows, orgs), name="roster_preview")

    def replace(self, rows: list[tuple[str, str]], actor: str, orgs: dict[str, str] | None = None) -> ImportResult:
        """Replace the roster and the teams' org paths (team -> path; none: every team under the
        company)."""
        now = self._clock.now()

        def run(tx: Tx) -> ImportResult:
            shred.record(tx, shred.ROSTER, now)  # the raw ids of people it removes
            return replace(tx, rows, self._ledger, now, actor, orgs)

        result = self._db.run(run, name="roster_import")
        self._shredder.attempt()
        return result
