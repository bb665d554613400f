"""A publish on PostgreSQL is as durable as the server makes commits: Conveyor does not
turn ``synchronous_commit`` off behind the operator's back (a publish that returned must
survive a crash of the server); the URL can still ask for it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from ..postgres_server import drop_schema, fresh_schema, postgres_url_or_skip, with_schema


@pytest.fixture
def pg_base() -> Iterator[tuple[str, str]]:
    base = postgres_url_or_skip()
    schema = fresh_schema()
    yield base, schema
    drop_schema(base, schema)


def _setting(url: str) -> str:
    from conveyor.brokers.postgres import PostgresBroker

    broker = PostgresBroker(url)
    try:
        return str(broker._db.query("SHOW synchronous_commit")[0][0])
    finally:
        broker.close()


def test_the_broker_commits_as_the_server_does_unless_the_url_says_otherwise(
    pg_base: tuple[str, str],
) -> None:
    import psycopg

    base, schema = pg_base
    with psycopg.connect(base) as conn:
        row = conn.execute("SHOW synchronous_commit").fetchone()
    assert row is not None
    assert _setting(with_schema(base, schema)) == row[0]
    assert _setting(with_schema(base, schema) + "&synchronous_commit=off") == "off"
