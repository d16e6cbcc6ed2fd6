"""`--format table|json|csv` for every listing command, in one place.

A command builds flat records (one dict per row, the same keys in the same order) and a
table for people; `emit` prints one or the other. The machine formats follow one rule each:

- JSON is one array of objects that jq reads as is: a value that does not apply or was not
  released is `null` (never `""`), booleans are `true`/`false`, numbers are numbers, lists
  are arrays, times are `2026-11-30T12:00:00Z` (what jq's `fromdate` reads). Exact decimals
  the server sends as strings (epsilon) stay strings.
- CSV has a header row and the same columns: `null` is an empty cell, booleans are
  `true`/`false` (as in JSON, not Python's True/False), lists are joined with `;`.
"""

from __future__ import annotations

import csv
import enum
import json
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Annotated, Any

import typer
from google.protobuf.timestamp_pb2 import Timestamp

__all__ = ["Format", "FormatOpt", "emit", "moment", "text_or_none"]


class Format(enum.StrEnum):
    TABLE = "table"
    JSON = "json"
    CSV = "csv"


FormatOpt = Annotated[Format, typer.Option("--format", "-f", help="table (for people), json or csv.")]

Record = Mapping[str, Any]


def emit(fmt: Format, fields: Sequence[str], records: Iterable[Record], table: Callable[[], None]) -> None:
    """Print the records as JSON or CSV, or call `table` to print them for people."""
    if fmt is Format.TABLE:
        table()
    elif fmt is Format.JSON:
        print(json.dumps([{f: r.get(f) for f in fields} for r in records], indent=2))
    else:
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(fields)
        for r in records:
            writer.writerow([_csv_cell(r.get(f)) for f in fields])
        sys.stdout.flush()


def _csv_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return ";".join(_csv_cell(v) for v in value)
    return str(value)


def text_or_none(value: str) -> str | None:
    """A protobuf string field, with proto3's "unset" (empty) as None."""
    return value or None


def moment(value: str | Timestamp) -> str | None:
    """A Timestamp or an RFC 3339 string field as `YYYY-MM-DDTHH:MM:SSZ`; None when unset (empty or epoch 0)."""
    if isinstance(value, Timestamp):
        if not value.seconds and not value.nanos:
            return None
        when = value.ToDatetime(tzinfo=UTC)
    elif value:
        when = datetime.fromisoformat(value).astimezone(UTC)
    else:
        return None
    return f"{when:%Y-%m-%dT%H:%M:%S}Z"
