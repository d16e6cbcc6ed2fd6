"""Server logging: today's text lines or one JSON object per line, each record with its RPC's id.

Every RPC gets a fresh random request id (see `rpc_scope`, entered by the metrics interceptor
around every call), and every record logged while the RPC runs carries it with the method
name, so the lines of one call can be found together. The id is made by the server, never
taken from the client: a client-chosen value would be a way to write arbitrary text into
the log. Records logged outside an RPC (the window closer, start-up) have no id.

What a record may contain is the business of the code that logs it: no level logs user ids,
tokens or per-person values (tests/security/test_logs.py checks both formats). The JSON
formatter adds only fixed fields (time, level, logger, message, request id, method,
exception text) and keeps non-ASCII characters as they are, so a text search for a string
finds it in either format.
"""

from __future__ import annotations

import contextvars
import json
import logging
import secrets
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import TextIO

FORMATS = ("text", "json")
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

#: (request id, full method name) of the RPC the current thread is serving, if any.
_rpc: contextvars.ContextVar[tuple[str, str] | None] = contextvars.ContextVar("chorus_rpc", default=None)


@contextmanager
def rpc_scope(method: str) -> Iterator[str]:
    """Mark the current thread as serving `method` under a new request id, for the call's duration."""
    request_id = secrets.token_hex(8)
    _rpc.set((request_id, method))
    try:
        yield request_id
    finally:
        # set, not reset: a streaming call's generator may be finished from another context.
        _rpc.set(None)


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line: time (UTC, ISO 8601), level, logger, message,
    request_id and method while an RPC runs, and exception text if any."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        rpc = getattr(record, "rpc", None)
        if rpc is not None:
            entry["request_id"], entry["method"] = rpc
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, ensure_ascii=False)


class _RpcFilter(logging.Filter):
    """Stamps each record with the RPC it was logged under (runs on the logging thread)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.rpc = _rpc.get()
        return True


def handler(fmt: str, stream: TextIO | None = None) -> logging.Handler:
    """A handler writing records to `stream` (stderr) in `fmt` ("text" or "json")."""
    if fmt not in FORMATS:
        raise ValueError(f"log format {fmt!r}: must be one of {', '.join(FORMATS)}")
    out = logging.StreamHandler(stream or sys.stderr)
    out.addFilter(_RpcFilter())
    out.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    return out


def configure(level: str, fmt: str) -> None:
    """Log the root logger's records at `level` and above to stderr in `fmt`.

    Like `logging.basicConfig`, it changes nothing if the root logger has a handler already
    (a host process, or a test capturing records, decides where they go and at what level).
    """
    if level.upper() not in LEVELS:
        raise ValueError(f"log level {level!r}: must be one of {', '.join(LEVELS)}")
    out = handler(fmt)
    root = logging.getLogger()
    if not root.handlers:
        root.addHandler(out)
        root.setLevel(level.upper())
