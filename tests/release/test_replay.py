"""A replay (a request whose statistics are all released) reads: it is answered in a read
transaction, from each database's own releases, and sees every release made since, while the
parse and answer caches behind it (`domain/release/postprocess.py`) give the answers a first
computation gives."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from chorus.server.domain.release import ReleaseResult, StatisticRequest, postprocess
from chorus.server.root import Chorus

from .conftest import WINDOW, contribute

REPORT = [StatisticRequest(s) for s in ("sum", "count", "mean", "histogram", "adoption")]


def closed(chorus: Chorus) -> Chorus:
    contribute(chorus, ("user-team-red-0", "ai.tokens", 5_000), ("user-team-red-1", "ai.tokens", 60_000),
               ("user-team-red-2", "ai.requests", 30), ("user-team-blue-0", "ai.tokens", 1_000))
    chorus.close_window(WINDOW, actor="test")
    return chorus


def answers(result: ReleaseResult) -> list[tuple[Any, ...]]:
    """Every answer but whether it was cached and what it charged (a replay's are True and 0)."""
    return [(t.team, e._replace(cached=False, epsilon_charged=None)) for t in result.teams for e in t.estimates]


def spied(chorus: Chorus) -> list[str]:
    """The names of the transactions `chorus.db` runs from now on, reads and writes."""
    seen: list[str] = []
    for kind in ("read", "run"):
        real = getattr(chorus.db, kind)

        def spy(fn, *, name, real=real):  # type: ignore[no-untyped-def]
            seen.append(name)
            return real(fn, name=name)

        setattr(chorus.db, kind, spy)
    return seen


def test_a_replay_runs_in_a_read_transaction_and_a_draw_in_a_write(chorus: Chorus) -> None:
    closed(chorus)
    seen = spied(chorus)
    first = chorus.releases.release(WINDOW, [], ["ai.tokens"], [StatisticRequest("sum")], "test")
    assert seen == ["read_releases", "release"]  # something to draw: the read gives way to a write
    seen.clear()
    again = chorus.releases.release(WINDOW, [], ["ai.tokens"], [StatisticRequest("sum")], "test")
    assert seen == ["read_releases"]
    assert answers(again) == answers(first)
    assert all(e.cached for t in again.teams for e in t.estimates)


def test_a_replay_answers_from_its_own_database_and_sees_later_releases(
        make_chorus: Callable[..., Chorus]) -> None:
    # Two databases with the same window, teams and counts of releases, different noise.
    one, two = closed(make_chorus()), closed(make_chorus())
    firsts = [c.releases.release(WINDOW, [], [], REPORT[:2], "test") for c in (one, two)]
    assert answers(firsts[0]) != answers(firsts[1])
    for _ in range(2):
        for chorus, first in zip((one, two), firsts, strict=True):
            assert answers(chorus.releases.release(WINDOW, [], [], REPORT[:2], "test")) == answers(first)
            assert answers(chorus.releases.release(WINDOW, [], [], REPORT[:2], "test",
                                                   validate_only=True)) == answers(first)
    # A release made since (another statistic) is in the next replay.
    more = one.releases.release(WINDOW, [], [], REPORT, "test")
    replay = one.releases.release(WINDOW, [], [], REPORT, "test", validate_only=True)
    assert answers(replay) == answers(more)
    assert not any(t.unreleased for t in replay.teams)


def test_cached_answers_are_the_answers_computed_afresh(chorus: Chorus) -> None:
    closed(chorus)
    first = chorus.releases.release(WINDOW, [], [], REPORT, "test")
    postprocess._REPLAYS.clear()  # the answers built by the first request are dropped
    afresh = chorus.releases.release(WINDOW, [], [], REPORT, "test")  # built anew
    cached = chorus.releases.release(WINDOW, [], [], REPORT, "test")  # from the caches
    assert answers(afresh) == answers(first) == answers(cached)
    assert cached.teams[0].estimates[0] is afresh.teams[0].estimates[0]  # built once


class _Rows:
    """store.releases as WindowReleases reads it: a count, and the rows, counted per call."""

    def __init__(self, rows: dict[str, list[Any]]) -> None:
        self.rows, self.reads = rows, 0
        self.extra = 0  # rows committed between the count and the rows (PostgreSQL's per-statement snapshots)

    def count(self, tx: Any, window: str) -> int:
        return len(self.rows[window])

    def of_window(self, tx: Any, window: str) -> list[Any]:
        self.reads += 1
        return self.rows[window] + [("late", window, i) for i in range(self.extra)]


class _Replay:
    def stored(self, rows: list[Any]) -> dict[Any, Any]:
        return {row: row for row in rows}


def test_window_releases_are_kept_only_when_count_and_rows_agree_and_at_most_sixteen(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    fake = _Rows({f"w{i}": [("r", f"w{i}", 0)] for i in range(20)})
    monkeypatch.setattr(postprocess.store.releases, "count", fake.count)
    monkeypatch.setattr(postprocess.store.releases, "of_window", fake.of_window)
    kept = postprocess.WindowReleases()
    replay: Any = _Replay()
    fake.extra = 1  # a commit between the two statements: not kept
    assert len(kept.read(None, "w0", replay)) == 2  # type: ignore[arg-type]
    fake.extra = 0
    kept.read(None, "w0", replay)  # type: ignore[arg-type]
    assert fake.reads == 2  # read again, then kept
    kept.read(None, "w0", replay)  # type: ignore[arg-type]
    assert fake.reads == 2
    for i in range(1, 17):  # 16 more windows, w0 read again in between: w1 is the least recently read
        kept.read(None, f"w{i}", replay)  # type: ignore[arg-type]
        if i == 8:
            kept.read(None, "w0", replay)  # type: ignore[arg-type]
    reads = fake.reads
    kept.read(None, "w0", replay)  # type: ignore[arg-type]
    assert fake.reads == reads  # still kept
    kept.read(None, "w1", replay)  # type: ignore[arg-type]
    assert fake.reads == reads + 1  # dropped: read again
    fake.rows["w2"].append(("r", "w2", 1))  # a new release: the count changed
    kept.read(None, "w2", replay)  # type: ignore[arg-type]
    assert fake.reads == reads + 2


def test_the_replay_caches_start_over_past_their_cap(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    sized = type("Sized", (), {"size": lambda self: 8})()
    monkeypatch.setattr(postprocess, "CACHE_MAX", 10)
    monkeypatch.setattr(postprocess, "_REPLAYS", {("discrete_gaussian", ()): sized})
    postprocess._make_room(2)  # 8 + 2 entries: within the cap
    assert list(postprocess._REPLAYS.values()) == [sized]
    postprocess._make_room(3)  # 8 + 3: past it, every cache starts over
    assert postprocess._REPLAYS == {}
