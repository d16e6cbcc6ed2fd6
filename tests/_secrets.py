"""What must never appear in a log record: the registry and the detector used by tests/conftest.py.

Three kinds of secrets are recognised:

* user ids of the test data, which by convention start with ``user-`` (``USER_ID_PREFIX``);
* bearer tokens minted by the server, recognised by their shape (``chorus_`` + 43 characters);
* anything else a test appends to ``SECRET_MARKERS`` (a user id outside the convention, a
  token from somewhere else, a per-person value rendered as a distinctive string).
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterable

USER_ID_PREFIX = "user-"
#: Exact strings no log record may contain; tests add to it (see `register`).
SECRET_MARKERS: set[str] = set()

_USER_ID = re.compile(re.escape(USER_ID_PREFIX) + r"[A-Za-z0-9]")
# secrets.token_urlsafe(32) after the prefix: 43 characters of the URL-safe alphabet.
_TOKEN = re.compile(r"chorus_[A-Za-z0-9_-]{40,}")


def register(*secrets: str) -> None:
    """Add secrets the log check must look for; empty strings are ignored."""
    SECRET_MARKERS.update(s for s in secrets if s)


def user_id(label: str) -> str:
    """A test user id following the convention (and so found by the log check)."""
    return f"{USER_ID_PREFIX}{label}"


def leaks(lines: Iterable[str], markers: Iterable[str] | None = None) -> list[str]:
    """The lines that contain a user id, a token or a registered marker."""
    found = sorted(m for m in (SECRET_MARKERS if markers is None else markers) if m)
    exact = re.compile("|".join(map(re.escape, found))) if found else None
    return [line for line in lines
            if _USER_ID.search(line) or _TOKEN.search(line) or (exact is not None and exact.search(line))]


class CapturingHandler(logging.Handler):
    """Keeps every record, formatted with its traceback, for the end-of-session check."""

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        self._lock_lines = threading.Lock()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except Exception:  # a record that cannot be formatted is kept raw, not lost
            line = f"{record.name}: {record.msg!r} {record.args!r}"
        with self._lock_lines:
            self.lines.append(line)

    def snapshot(self) -> list[str]:
        with self._lock_lines:
            return list(self.lines)
