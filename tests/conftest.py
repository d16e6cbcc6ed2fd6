"""Session-wide guard: no log record, from any test, may contain a user id or a token.

An autouse session fixture attaches a capturing handler to the root logger at DEBUG. When
the session ends, every captured record (message and traceback) is checked by
`tests._secrets.leaks`, and any hit fails the session. Conventions for every test here:

* user ids in test data start with "user-" (e.g. "user-team-red-0"); `_secrets.user_id`
  builds one. Any log record containing "user-" followed by a letter or digit is a leak;
* a secret outside that convention (another user id, a token not minted by the server) is
  added with `tests._secrets.register(...)`;
* tokens minted by the server ("chorus_" + 43 characters) are recognised by their shape.

Keep this file to that one fixture: per-area fixtures belong in each test directory.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator

import pytest

from tests._secrets import leaks


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


@pytest.fixture(scope="session", autouse=True)
def log_guard() -> Iterator[CapturingHandler]:
    """The session's capturing handler; fails the session if a secret was logged."""
    handler = CapturingHandler()
    root = logging.getLogger()
    previous = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    yield handler
    root.removeHandler(handler)
    root.setLevel(previous)
    found = leaks(handler.snapshot())
    if found:
        shown = "\n".join(found[:20])
        pytest.fail(f"{len(found)} log record(s) contain a user id or token:\n{shown}", pytrace=False)
