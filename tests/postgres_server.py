"""PostgreSQL for tests: a fresh schema per test on a shared server, dropped after.

``postgres_url_or_skip()`` checks once per session that the server named by
``CONVEYOR_TEST_POSTGRES_URL`` (default ``postgresql://postgres@127.0.0.1:5432/postgres``)
answers, or skips with the reason; with ``CI=true`` a missing server fails instead,
so CI cannot go green without testing PostgreSQL. ``fresh_schema_url`` names a new
schema (Conveyor creates it at first use) and registers it to be dropped.
"""

from __future__ import annotations

import os
import uuid
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import pytest

POSTGRES_URL = os.environ.get("CONVEYOR_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
_checked: list[str] = []


def postgres_url_or_skip() -> str:
    if _checked:
        return _checked[0]
    try:
        import psycopg

        with psycopg.connect(POSTGRES_URL, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
    except Exception as exc:  # ImportError, OperationalError: either way there is nothing to test on
        reason = f"PostgreSQL not reachable at {POSTGRES_URL} ({str(exc).strip().splitlines()[0]})"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    _checked.append(POSTGRES_URL)
    return POSTGRES_URL


def with_schema(url: str, schema: str) -> str:
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query) if k != "schema"] + [("schema", schema)]
    return urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(query), ""))


def fresh_schema() -> str:
    return f"t_{uuid.uuid4().hex[:16]}"


def drop_schema(url: str, schema: str) -> None:
    import psycopg
    from psycopg import sql

    with psycopg.connect(url, autocommit=True, connect_timeout=5) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
