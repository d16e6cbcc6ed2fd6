"""The numbers behind each chart, as one table model rendered both as HTML and as CSV."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass, field

from chorus.server.dashboard.charts import Formatter, format_number

Cell = str | int | float | None

# A spreadsheet evaluates a text cell starting with one of these as a formula.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


@dataclass(frozen=True, slots=True)
class Column:
    """A table column; `fmt` renders its numbers for people (CSV always has full precision)."""

    name: str
    fmt: Formatter | None = format_number
    numeric: bool = True
    #: Header shown on the page when it should read differently from the CSV header.
    label: str = ""

    @property
    def heading(self) -> str:
        return self.label or self.name


def text(name: str, label: str = "") -> Column:
    """A column of text (team names, outcomes, exact decimals), shown as it is."""
    return Column(name, None, numeric=False, label=label)


@dataclass(slots=True)
class DataTable:
    """Rows of cells under named columns; `caption` names the table on the page."""

    caption: str
    columns: Sequence[Column]
    rows: list[tuple[Cell, ...]] = field(default_factory=list)

    def add(self, *cells: Cell) -> None:
        if len(cells) != len(self.columns):
            raise ValueError(f"row has {len(cells)} cells, table {self.caption!r} has "
                             f"{len(self.columns)} columns")
        self.rows.append(cells)

    def display_rows(self) -> list[list[str]]:
        """Cells as people read them: formatted numbers, empty for missing values."""
        return [[_display(cell, column) for cell, column in zip(row, self.columns, strict=True)]
                for row in self.rows]

    def to_csv(self) -> str:
        """RFC 4180 CSV with a header row; numbers unrounded, text guarded against formula injection."""
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\r\n")
        writer.writerow([c.name for c in self.columns])
        for row in self.rows:
            writer.writerow([_csv_cell(cell) for cell in row])
        return out.getvalue()


def _display(cell: Cell, column: Column) -> str:
    if cell is None:
        return ""
    if isinstance(cell, str) or column.fmt is None:
        return str(cell)
    return column.fmt(cell)


def _csv_cell(cell: Cell) -> str:
    if cell is None:
        return ""
    if isinstance(cell, float):
        return str(int(cell)) if cell.is_integer() and abs(cell) < 1e15 else repr(cell)
    if isinstance(cell, str) and cell.startswith(_FORMULA_START):
        return "'" + cell
    return str(cell)
