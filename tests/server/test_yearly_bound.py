"""The yearly privacy bound counts the most windows any twelve months can touch (issue 10 item 3).

52 weeks or 365 days a year undercounts: twelve months from a moment late in a window touch
that window too, and a leap year has 366 days.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chorus.server.model.calendar import WindowLength, max_windows_per_year, window_of


def twelve_months_after(t: datetime) -> datetime:
    try:
        return t.replace(year=t.year + 1)
    except ValueError:  # 29 February: twelve months later is 1 March
        return t.replace(year=t.year + 1, month=3, day=1)


def windows_touched(start: datetime, length: WindowLength) -> set[str]:
    """Ids of the windows [start, twelve months later) overlaps: the one holding `start` and
    each one starting inside (every window starts at a UTC midnight)."""
    end = twelve_months_after(start)
    touched = {window_of(start, length).id}
    midnight = datetime(start.year, start.month, start.day, tzinfo=UTC) + timedelta(days=1)
    while midnight < end:
        touched.add(window_of(midnight, length).id)
        midnight += timedelta(days=1)
    return touched


def test_the_bound_is_54_weeks_or_367_days() -> None:
    assert max_windows_per_year(WindowLength.WEEK) == 54
    assert max_windows_per_year(WindowLength.DAY) == 367


def test_some_twelve_months_reach_the_bound() -> None:
    # 2012 is a leap year starting on a Sunday, the last day of 2011-W52.
    from_sunday = windows_touched(datetime(2012, 1, 1, 23, 59, 59, tzinfo=UTC), WindowLength.WEEK)
    assert len(from_sunday) == 54 and {"2011-W52", "2012-W01", "2012-W52", "2013-W01"} <= from_sunday
    assert len(windows_touched(datetime(2023, 12, 31, 23, 59, 59, tzinfo=UTC), WindowLength.DAY)) == 367
    # Even a calendar year from its first second: 2012 touches 54 ISO weeks, 2024 366 days.
    assert len(windows_touched(datetime(2012, 1, 1, tzinfo=UTC), WindowLength.WEEK)) == 54
    assert len(windows_touched(datetime(2024, 1, 1, tzinfo=UTC), WindowLength.DAY)) == 366


@settings(max_examples=200, deadline=None)
@pytest.mark.slow  # a property test over many spans
@given(st.datetimes(min_value=datetime(1971, 1, 1), max_value=datetime(2199, 12, 31), timezones=st.just(UTC)),
       st.sampled_from(list(WindowLength)))
def test_no_twelve_months_touch_more_windows_than_the_bound(start: datetime, length: WindowLength) -> None:
    assert len(windows_touched(start, length)) <= max_windows_per_year(length)
