"""Children stored in the result backend reach a client in another process: a task
on a real worker sends tasks (with delay(), or adelay() on the async client); this
process finds them from the task id alone."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from ..postgres_server import drop_schema, fresh_schema, postgres_url_or_skip, with_schema
from ..redis_server import fresh_url, redis_server_or_skip

pytestmark = pytest.mark.integration


@pytest.fixture(params=["sqlite", "redis", "postgres"])
def project(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    schema = None
    if request.param == "redis":
        monkeypatch.setenv("TEST_BROKER_URL", fresh_url(redis_server_or_skip()))
    elif request.param == "postgres":
        schema = fresh_schema()
        monkeypatch.setenv("TEST_BROKER_URL", with_schema(postgres_url_or_skip(), schema))
    yield request.getfixturevalue("project")
    if schema is not None:
        drop_schema(postgres_url_or_skip(), schema)


def test_children_a_worker_task_sent_are_seen_by_another_process(project: Any) -> None:
    p, proj = project
    p.start_worker("-c", "1")
    for spawner in (proj.spawn, proj.spawn_async):
        sent = spawner.delay(3)
        child_ids = sent.get(timeout=20)
        fresh = proj.app.AsyncResult(sent.id)  # nothing of the task in this process's memory
        assert [child.id for child in fresh.children] == child_ids, spawner
        assert [value for _, value in fresh.collect(timeout=20)] == [child_ids, 0, 2, 4]
