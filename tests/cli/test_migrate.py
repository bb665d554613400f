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
