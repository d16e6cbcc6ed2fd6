"""Window arithmetic: which UTC day or ISO week a moment belongs to, and back."""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta


class WindowLength(enum.StrEnum):
    DAY = "day"
    WEEK = "week"

    @property
    def duration(self) -> timedelta:
        return timedelta(days=1 if self is WindowLength.DAY else 7)


#: The longest twelve consecutive months: they hold at most one 29 February.
LONGEST_YEAR = timedelta(days=366)


def max_windows_per_year(length: WindowLength) -> int:
    """The most windows of `length` that any twelve consecutive months touch.

    This is the number the yearly privacy bound multiplies `epsilon_per_window` by: everything
    released about a window that overlaps a year may reveal something about that year.
    Twelve months from any moment t last at most 366 days. Windows tile time without gaps, so
    [t, t + 366 days) touches the window containing t plus every window starting after t and
    before t + 366 days: at most 1 + ceil((366 days - 1 s) / length), reached when t is the last
    second of its window. That is 367 UTC days (a leap year from 23:59:59 on the day before),
    or 54 ISO weeks (from Sunday 2012-01-01 23:59:59: 2011-W52, the 52 weeks of 2012 and 2013-W01).
    """
    rest = LONGEST_YEAR - timedelta(seconds=1)
    return 1 + -(-rest // length.duration)


@dataclass(frozen=True, slots=True)
class WindowSpan:
    """A window's public identity: id like "2026-11-25" or "2026-W48", and [start, end)."""

    id: str
    start: datetime
    end: datetime


_DAY_ID = re.compile(r"^(\d{4})-(\d{2})-(\d{2})$")
_WEEK_ID = re.compile(r"^(\d{4})-W(\d{2})$")


def window_of(when: datetime, length: WindowLength) -> WindowSpan:
    """The window of `length` containing the aware datetime `when`."""
    day = when.astimezone(UTC).date()
    if length is WindowLength.DAY:
        start = day
        end = day + timedelta(days=1)
        ident = day.isoformat()
    else:
        iso = day.isocalendar()
        start = day - timedelta(days=iso.weekday - 1)
        end = start + timedelta(days=7)
        ident = f"{iso.year}-W{iso.week:02d}"
    return WindowSpan(ident, _midnight(start), _midnight(end))


def parse_window_id(ident: str) -> WindowSpan:
    """Inverse of `window_of(...).id`; raises ValueError naming the bad id."""
    if m := _DAY_ID.match(ident):
        try:
            day = date(int(m[1]), int(m[2]), int(m[3]))
        except ValueError as exc:
            raise ValueError(f"window id {ident!r} is not a valid date: {exc}") from None
        return window_of(_midnight(day), WindowLength.DAY)
    if m := _WEEK_ID.match(ident):
        try:
            monday = date.fromisocalendar(int(m[1]), int(m[2]), 1)
        except ValueError as exc:
            raise ValueError(f"window id {ident!r} is not a valid ISO week: {exc}") from None
        return window_of(_midnight(monday), WindowLength.WEEK)
    raise ValueError(f"window id {ident!r} is neither a day (YYYY-MM-DD) nor an ISO week (YYYY-Www)")


def _midnight(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)
