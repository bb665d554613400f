"""``conveyor migrate [--check]`` on a PostgreSQL broker (a fresh schema), and on SQLite."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.cli.conftest import Project, assert_one_line_error
from tests.postgres_server import drop_schema, fresh_schema, postgres_url_or_skip, with_schema


@pytest.fixture
def pg_url() -> Iterator[str]:
    base = postgres_url_or_skip()
    schema = fresh_schema()
    try:
        yield with_schema(base, schema)
    finally:
        drop_schema(base, schema)


def test_check_then_migrate_then_check(project: Project, pg_url: str) -> None:
    missing = project.run("-b", pg_url, "migrate", "--check")
    assert missing.code == 1 and "no Conveyor tables; run `conveyor migrate`" in missing.out, missing
    made = project.run("-b", pg_url, "migrate")
    assert made.code == 0 and "schema version 1, up to date" in made.out, made
    checked = project.run("-b", pg_url, "migrate", "--check")
    assert checked.code == 0 and "up to date" in checked.out, checked


def test_newer_schema_is_refused_by_migrate_and_by_every_command(project: Project, pg_url: str) -> None:
    import psycopg

    from conveyor._postgres import SCHEMA_VERSION, parse_url

    assert project.run("-b", pg_url, "migrate").code == 0
    spec = parse_url(pg_url)
    with psycopg.connect(spec.conninfo, autocommit=True) as conn:
        conn.execute(f"INSERT INTO {spec.schema}.schema_version (version) VALUES (%s)", (SCHEMA_VERSION + 1,))
    assert_one_line_error(project.run("-b", pg_url, "migrate", "--check"), "newer than this Conveyor")
    assert_one_line_error(
        project.run("-b", pg_url, "queues"), f"schema version {SCHEMA_VERSION + 1}", "upgrade Conveyor"
    )


def test_nothing_to_migrate_on_sqlite(project: Project) -> None:
    result = project.run("-b", project.broker_url, "migrate")
    assert result.code == 0 and "nothing to migrate" in result.out, result


def test_redis_queues_in_the_old_key_layout_move_into_the_current_one(project: Project) -> None:
    """Keys as Conveyor wrote them before queue keys had hash tags: a ready message, a
    delayed one now due, a dead letter. ``migrate`` moves them and the broker serves them."""
    import time

    from conveyor.brokers.redis import RedisBroker, _entry, queue_key
    from conveyor.message import Message, new_id
    from tests.redis_server import fresh_url, redis_server_or_skip

    url = fresh_url(redis_server_or_skip())
    broker = RedisBroker(url)
    P = broker.prefix  # noqa: N806
    ready, due = (Message(id=new_id(), task="t.add", args=[i], created_at=time.time()) for i in (1, 2))
    broker.link.send(
        [
            ("SADD", f"{P}:queues", "default"),
            ("RPUSH", f"{P}:q:default:0", _entry(ready.encode(), 0, ready.id)),
            ("ZADD", f"{P}:d:default", time.time() - 1, b"7|" + _entry(due.encode(), 0, due.id)),
            ("SET", f"{P}:seq", 7),
            (
                "HSET",
                f"{P}:dlq:1",
                "q",
                "default",
                "p",
                0,
                "t",
                "dead-id",
                "n",
                "t.x",
                "r",
                "why",
                "f",
                1,
                "b",
                b"{}",
            ),
            ("ZADD", f"{P}:dlq:all", 1, 1),
            ("ZADD", f"{P}:dlq:q:default", 1, 1),
        ]
    )
    behind = project.run("-b", url, "migrate", "--check")
    assert behind.code == 1 and "3 key(s) in the layout before hash tags" in behind.out, behind
    moved = project.run("-b", url, "migrate")
    assert moved.code == 0 and "moved 3 key(s)" in moved.out, moved
    checked = project.run("-b", url, "migrate", "--check")
    assert checked.code == 0 and "key layout up to date" in checked.out, checked
    got = broker.fetch(["default"], limit=10, lease_s=30, timeout_s=0)
    assert [d.message_id for d in got] == [ready.id, due.id]
    [stats] = broker.queue_stats(["default"])
    assert (stats.in_flight, stats.dead) == (2, 1)
    assert [d.task_id for d in broker.dead_letters("default")] == ["dead-id"]
    assert broker.link.send([("GET", queue_key(P, "default", "seq"))])[0] == b"7"
    broker.close()
