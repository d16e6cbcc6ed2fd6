"""Session-wide guard: no log record, from any test, may contain a user id or a token.

An autouse session fixture attaches a capturing handler to the root logger at DEBUG. When
the session ends, every captured record (message and traceback) is checked by
`tests._secrets.leaks`, and any hit fails the session. Conventions for every test here:

* user ids in test data start with "user-" (e.g. "user-team-red-0"); `_secrets.user_id`
  builds one. Any log record containing "user-" followed by a letter or digit is a leak;
* a secret outside that convention (another user id, a token not minted by the server) is
  added with `tests._secrets.register(...)`;
* tokens minted by the server ("chorus_" + 43 characters) are recognised by their shape.

It also enforces the fast lane (below). Keep this file to those two rules: per-area fixtures
belong in each test directory, and builders shared across directories in `tests/_*.py`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import subprocess
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest

from tests._secrets import CapturingHandler, leaks


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


# The fast lane (`pytest -m "not slow"`) stays under a minute because nothing in it starts a
# process, a browser, Node.js or a server on a socket: a test that does is marked `slow`. The
# rule is enforced, not social: outside `slow` tests these entry points raise FastLaneViolation.
class FastLaneViolation(RuntimeError):
    """A test outside the `slow` marker started a process or a server."""


def _refuse(what: str) -> Callable[..., Any]:
    def refused(*args: Any, **kwargs: Any) -> Any:
        raise FastLaneViolation(f"{what}: a test that starts a process, a browser, Node.js or a server on a "
                                "socket must be marked @pytest.mark.slow (the fast lane stays under a minute)")
    return refused


_GUARDED: tuple[tuple[Any, str, str], ...] = (
    (subprocess.Popen, "__init__", "subprocess.Popen (a process)"),
    (os, "fork", "os.fork (a process)"),
    (os, "posix_spawn", "os.posix_spawn (a process)"),
    (os, "posix_spawnp", "os.posix_spawnp (a process)"),
    (socket.socket, "listen", "socket.listen (a server on a socket)"),
    (grpc, "server", "grpc.server (a gRPC server on a socket)"),
)


@contextlib.contextmanager
def _fast_lane(item: pytest.Item) -> Iterator[None]:
    if item.get_closest_marker("slow") is not None:
        yield
        return
    saved = [(owner, name, getattr(owner, name)) for owner, name, _ in _GUARDED]
    for owner, name, what in _GUARDED:
        setattr(owner, name, _refuse(what))
    try:
        yield
    finally:
        for owner, name, original in saved:
            setattr(owner, name, original)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Iterator[None]:
    with _fast_lane(item):
        return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    with _fast_lane(item):
        return (yield)
