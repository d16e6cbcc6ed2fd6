"""What only the PostgreSQL engine does: retries, session timeouts, the closer lock, failing fast."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import psycopg
import pytest

from chorus.server.store import StoreUnavailable, Tx, migrate, usage
from chorus.server.store.postgres import BULK_MIN_ROWS, PostgresDatabase, placeholders

from .postgres_schema import fresh_schema


@pytest.fixture
def pg() -> Iterator[PostgresDatabase]:
    with fresh_schema() as url:
        db = PostgresDatabase(url, min_size=1, max_size=4)
        db.run(lambda tx: tx.execute("CREATE TABLE t (k TEXT PRIMARY KEY, v BIGINT NOT NULL)"), name="setup")
        yield db
        db.close()


def raise_sqlstate(tx: Tx, sqlstate: str) -> None:
    """Make the server raise a real error with this SQLSTATE."""
    tx.execute(f"DO $$ BEGIN RAISE EXCEPTION 'injected' USING ERRCODE = '{sqlstate}'; END $$")


def test_placeholders_are_rewritten_outside_quotes_only() -> None:
    sql = "SELECT '?', \"a?\", ? FROM t WHERE v LIKE '10%' AND k = ? -- 5% done"
    assert placeholders(sql) == "SELECT '?', \"a?\", %s FROM t WHERE v LIKE '10%%' AND k = %s -- 5%% done"


@pytest.mark.postgres
@pytest.mark.parametrize("sqlstate", ["40001", "40P01"])
def test_serialization_failures_and_deadlocks_are_retried(pg: PostgresDatabase, sqlstate: str) -> None:
    attempts = []

    def work(tx: Tx) -> int:
        attempts.append(1)
        tx.execute("INSERT INTO t (k, v) VALUES (?, ?)", ("a", len(attempts)))
        if len(attempts) == 1:
            raise_sqlstate(tx, sqlstate)
        return tx.query("SELECT v FROM t WHERE k = ?", ("a",))[0][0]

    assert pg.run(work, name="work") == 2  # the first attempt's insert was rolled back
    assert len(attempts) == 2


@pytest.mark.postgres
def test_a_connection_lost_mid_transaction_is_retried_on_a_new_one(pg: PostgresDatabase) -> None:
    backends: list[int] = []

    def work(tx: Tx) -> int:
        (pid,), = tx.query("SELECT pg_backend_pid()")
        backends.append(pid)
        tx.execute("INSERT INTO t (k, v) VALUES (?, ?)", ("a", 1))
        if len(backends) == 1:
            tx.query("SELECT pg_terminate_backend(pg_backend_pid())")
        return pid

    assert pg.run(work, name="work") == backends[-1] != backends[0]
    assert pg.run(lambda tx: tx.query("SELECT k, v FROM t"), name="read") == [("a", 1)]


@pytest.mark.postgres
def test_other_errors_propagate_and_roll_back(pg: PostgresDatabase) -> None:
    attempts = []

    def work(tx: Tx) -> None:
        attempts.append(1)
        tx.execute("INSERT INTO t (k, v) VALUES (?, ?)", ("a", 1))
        tx.execute("INSERT INTO t (k, v) VALUES (?, ?)", ("a", 2))

    with pytest.raises(psycopg.errors.UniqueViolation):
        pg.run(work, name="work")
    assert len(attempts) == 1
    assert pg.run(lambda tx: tx.query("SELECT COUNT(*) FROM t"), name="read") == [(0,)]


@pytest.mark.postgres
def test_retries_stop_at_the_budget_with_a_message_naming_the_transaction() -> None:
    with fresh_schema() as url:
        db = PostgresDatabase(url, min_size=1, max_size=1, retry_budget_s=0.3)
        try:
            with pytest.raises(StoreUnavailable, match=r"always_busy did not get through within 0.3 s.*40001"):
                db.run(lambda tx: raise_sqlstate(tx, "40001"), name="always_busy")
        finally:
            db.close()


@pytest.mark.postgres
def test_sessions_run_read_committed_with_timeouts(pg: PostgresDatabase) -> None:
    settings = pg.run(lambda tx: [tx.query(f"SHOW {name}")[0][0] for name in (
        "transaction_isolation", "statement_timeout", "idle_in_transaction_session_timeout")], name="show")
    assert settings == ["read committed", "1min", "1min"]


@pytest.mark.postgres
@pytest.mark.slow
def test_a_hung_transaction_loses_its_locks_after_the_idle_timeout() -> None:
    with fresh_schema() as url:
        hung = PostgresDatabase(url, min_size=1, max_size=1, idle_in_transaction_timeout_ms=300)
        healthy = PostgresDatabase(url, min_size=1, max_size=1)
        try:
            healthy.run(lambda tx: tx.execute("CREATE TABLE t (k TEXT PRIMARY KEY, v BIGINT)"), name="setup")
            healthy.run(lambda tx: tx.execute("INSERT INTO t VALUES ('a', 0)"), name="setup")
            locked = threading.Event()
            attempts = []

            def hang(tx: Tx) -> None:
                attempts.append(1)
                if len(attempts) == 1:
                    tx.execute("UPDATE t SET v = v + 1 WHERE k = 'a'")
                    locked.set()
                    time.sleep(5.0)  # a replica stuck inside its transaction, holding the row lock

            thread = threading.Thread(target=hung.run, args=(hang,), kwargs={"name": "hang"})
            thread.start()
            locked.wait(5)
            started = time.monotonic()
            healthy.run(lambda tx: tx.execute("UPDATE t SET v = v + 10 WHERE k = 'a'"), name="update")
            waited = time.monotonic() - started
            thread.join()
            # Freed by the server at ~0.3 s, not when the hung replica woke at 5 s; generous for a loaded machine.
            assert waited < 4.0
            assert len(attempts) == 2  # the killed transaction was rolled back and run again
            assert healthy.run(lambda tx: tx.query("SELECT v FROM t"), name="read") == [(10,)]
        finally:
            hung.close()
            healthy.close()


@pytest.mark.postgres
def test_only_one_transaction_holds_the_closer_lock(pg: PostgresDatabase) -> None:
    holding = threading.Event()
    release = threading.Event()
    results: list[bool] = []

    def hold(tx: Tx) -> None:
        results.append(tx.lock_closer())
        holding.set()
        release.wait(5)

    thread = threading.Thread(target=pg.run, args=(hold,), kwargs={"name": "hold"})
    thread.start()
    holding.wait(5)
    results.append(pg.run(lambda tx: tx.lock_closer(), name="try"))
    release.set()
    thread.join()
    results.append(pg.run(lambda tx: tx.lock_closer(), name="after"))  # released at commit
    assert results == [True, False, True]


def test_an_unreachable_server_fails_fast_without_revealing_the_password() -> None:
    started = time.monotonic()
    expected = r"cannot connect to PostgreSQL at 127\.0\.0\.1:1/chorus"
    with pytest.raises(StoreUnavailable, match=expected) as info:
        PostgresDatabase("postgresql://chorus:s3cret-pw@127.0.0.1:1/chorus", connect_timeout_s=2)
    assert time.monotonic() - started < 5
    assert "s3cret" not in str(info.value)


@pytest.fixture
def pg_store() -> Iterator[PostgresDatabase]:
    """An engine on a migrated scratch schema (the real usage table)."""
    with fresh_schema() as url:
        db = PostgresDatabase(url, min_size=1, max_size=4)
        migrate(db)
        yield db
        db.close()


def usage_rows(n: int, value: int, window: str = "w") -> list[tuple[str, bytes, str, int]]:
    """Rows for store.usage.add with one metric slot, sorted by (window, pseudonym)."""
    return [(window, f"p{i:04d}".encode(), "team", value) for i in range(n)]


def read_usage(db: PostgresDatabase, window: str = "w") -> dict[bytes, int]:
    return {bytes(p): int(t) for p, t in db.run(
        lambda tx: tx.query("SELECT pseudonym, t0 FROM usage WHERE window_id = ?", (window,)), name="read")}


@pytest.mark.postgres
def test_bulk_usage_add_matches_row_by_row_semantics(pg_store: PostgresDatabase) -> None:
    n = BULK_MIN_ROWS * 2
    with pytest.raises(RuntimeError):  # a rolled-back first use (the staging table with it)
        pg_store.run(lambda tx: (usage.add(tx, (50,), usage_rows(n, 30)), _raise()), name="fail")

    def twice(tx: Tx) -> None:  # the same operation twice in one transaction: staging is reused
        usage.add(tx, (50,), usage_rows(n, 30)[::2])  # even people bounded at 50
        usage.add(tx, (1000,), usage_rows(n, 30)[1::2])  # odd ones at 1000
        usage.add(tx, (50,), usage_rows(n, 30)[::2])
        usage.add(tx, (1000,), usage_rows(n, 30)[1::2])

    pg_store.run(twice, name="twice")
    small = usage_rows(BULK_MIN_ROWS - 1, 30, window="x")  # the row-by-row path: same clamp
    pg_store.run(lambda tx: (usage.add(tx, (50,), small), usage.add(tx, (50,), small)), name="few")
    assert read_usage(pg_store) == {r[1]: 50 if i % 2 == 0 else 60 for i, r in enumerate(usage_rows(n, 0))}
    assert set(read_usage(pg_store, "x").values()) == {50}


@pytest.mark.postgres
def test_bulk_usage_add_falls_back_when_a_person_repeats(pg_store: PostgresDatabase) -> None:
    rows = sorted(usage_rows(BULK_MIN_ROWS, 7) * 2)  # everyone twice: DO UPDATE must see its own write
    pg_store.run(lambda tx: usage.add(tx, (1000,), rows), name="dups")
    assert set(read_usage(pg_store).values()) == {14}


def _raise() -> None:
    raise RuntimeError("abort the transaction")


@pytest.mark.postgres
@pytest.mark.parametrize("sqlstate", ["53100", "53200", "58030", "25006"])
def test_failures_an_operator_must_fix_are_store_unavailable_at_once(pg: PostgresDatabase, sqlstate: str) -> None:
    """Disk full, out of memory, I/O error, read-only server: UNAVAILABLE for clients (they retry
    later), not a bare error the servicers would report as INTERNAL; no retry loop meanwhile."""
    attempts = []

    def work(tx: Tx) -> None:
        attempts.append(1)
        raise_sqlstate(tx, sqlstate)

    before = pg.unavailable_count
    with pytest.raises(StoreUnavailable, match=sqlstate):
        pg.run(work, name="work")
    assert len(attempts) == 1 and pg.unavailable_count == before + 1


@pytest.mark.postgres
def test_a_read_only_server_is_store_unavailable(pg: PostgresDatabase) -> None:
    def write(tx: Tx) -> None:
        tx.execute("SET TRANSACTION READ ONLY")  # as on a standby after failover
        tx.execute("INSERT INTO t (k, v) VALUES (?, ?)", ("ro", 1))

    with pytest.raises(StoreUnavailable, match="25006"):
        pg.run(write, name="write")
