"""Session settings from the PostgreSQL URL.

A publish is as durable as the server makes commits: Conveyor does not turn
``synchronous_commit`` off behind the operator's back (a publish that returned must
survive a crash of the server); the URL can still ask for it. Only the commits whose
loss repeats work (a fetch's lease, an ack outside a settle, an extension) skip the flush. ``prepare_threshold=none``
keeps psycopg from preparing statements (PgBouncer before 1.21, transaction mode).
"""

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


def _setting(url: str, *, relaxed: bool = False) -> str:
    from conveyor.brokers.postgres import PostgresBroker

    broker = PostgresBroker(url)
    try:
        return _show(broker, "synchronous_commit", relaxed=relaxed)
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
    # Leases and early acks only repeat work when lost: they do not wait for the flush.
    assert _setting(with_schema(base, schema), relaxed=True) == "off"
    assert _setting(with_schema(base, schema) + "&synchronous_commit=off") == "off"
    assert _setting(with_schema(base, schema) + "&synchronous_commit=on", relaxed=True) == "on"


def test_prepare_threshold_none_sends_no_prepared_statement(pg_base: tuple[str, str]) -> None:
    from conveyor.brokers.postgres import PostgresBroker
    from conveyor.exceptions import ConfigurationError

    base, schema = pg_base
    broker = PostgresBroker(with_schema(base, schema) + "&prepare_threshold=none")
    try:
        for _ in range(8):  # past psycopg's default threshold (5)
            broker.queue_stats()
        prepared = broker._db.query("SELECT COUNT(*) FROM pg_prepared_statements")[0][0]
        assert prepared == 0
    finally:
        broker.close()
    with pytest.raises(ConfigurationError, match="prepare_threshold='sometimes'"):
        PostgresBroker(with_schema(base, schema) + "&prepare_threshold=sometimes")


def test_libpq_options_and_connect_timeout_in_the_url_reach_the_server(pg_base: tuple[str, str]) -> None:
    """The URL's own ``options`` (libpq's ``-c name=value`` settings) and
    ``connect_timeout`` go to libpq as the docs say of every other option, beside
    Conveyor's session settings, and win over them: a user can shorten the timeouts."""
    from urllib.parse import quote

    from conveyor.brokers.postgres import PostgresBroker
    from conveyor.exceptions import ConfigurationError

    base, schema = pg_base
    options = quote("-c lock_timeout=1234 -c statement_timeout=4321")
    broker = PostgresBroker(with_schema(base, schema) + f"&options={options}&connect_timeout=7")
    try:
        assert _show(broker, "lock_timeout") == "1234ms"
        assert _show(broker, "statement_timeout") == "4321ms"
        # Conveyor's own settings stay where the URL says nothing.
        assert _show(broker, "idle_in_transaction_session_timeout") == "1min"
        assert _show(broker, "search_path") == schema
        assert _show(broker, "lock_timeout", relaxed=True) == "1234ms"
        conn = broker._db.open()
        try:
            assert conn.info.get_parameters().get("connect_timeout") == "7"
        finally:
            conn.close()
    finally:
        broker.close()
    with pytest.raises(ConfigurationError, match="connect_timeout='soon' is not a whole number of seconds"):
        PostgresBroker(with_schema(base, schema) + "&connect_timeout=soon")


def _show(broker: object, name: str, *, relaxed: bool = False) -> str:
    return str(broker._db.query(f"SHOW {name}", relaxed=relaxed)[0][0])  # type: ignore[attr-defined]
