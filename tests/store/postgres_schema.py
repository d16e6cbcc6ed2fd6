"""A throwaway PostgreSQL schema per test, and the skip-or-fail rule when PostgreSQL is down.

Shared by tests/store and tests/replicas. Each test gets `CREATE SCHEMA chorus_t_<random>`
and a URL whose `options=-csearch_path=...` makes every connection (in this process or in
a replica process) use it; the schema is dropped afterwards.
"""

from __future__ import annotations

import functools
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import psycopg
import pytest

POSTGRES_URL = os.environ.get("CHORUS_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")


@functools.cache
def unavailable_reason() -> str | None:
    """None when the test PostgreSQL answers, else why not (checked once per session)."""
    try:
        psycopg.connect(POSTGRES_URL, connect_timeout=3).close()
    except psycopg.Error as exc:
        return f"PostgreSQL at CHORUS_TEST_POSTGRES is unreachable: {str(exc).strip().splitlines()[0]}"
    return None


def require_postgres() -> None:
    """Skip with the reason when PostgreSQL is unreachable; fail instead under CI."""
    reason = unavailable_reason()
    if reason is None:
        return
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set: PostgreSQL tests must run, not skip)")
    pytest.skip(reason)


def url_with(url: str, **params: str) -> str:
    """The URL with these libpq parameters set in its query string."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(query=urlencode({**dict(parse_qsl(parts.query)), **params})))


def with_search_path(url: str, schema: str) -> str:
    """The URL with `-csearch_path=schema` added to its libpq `options` parameter."""
    options = dict(parse_qsl(urlsplit(url).query)).get("options", "")
    return url_with(url, options=f"{options} -csearch_path={schema}".strip())


@contextmanager
def fresh_schema() -> Iterator[str]:
    """For a test: skip (or fail under CI) without PostgreSQL, else a scratch schema's URL."""
    require_postgres()
    with scratch_schema("chorus_t_") as url:
        yield url


@contextmanager
def scratch_schema(prefix: str) -> Iterator[str]:
    """Create an empty schema, yield a URL bound to it, drop it (and its objects) afterwards."""
    schema = f"{prefix}{uuid.uuid4().hex[:12]}"
    with psycopg.connect(POSTGRES_URL, autocommit=True) as admin:
        admin.execute(f'CREATE SCHEMA "{schema}"')
    try:
        yield with_search_path(POSTGRES_URL, schema)
    finally:
        with psycopg.connect(POSTGRES_URL, autocommit=True) as admin:
            admin.execute(f'DROP SCHEMA "{schema}" CASCADE')
