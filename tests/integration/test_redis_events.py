"""Task events on Redis: a worker writes each settle batch's events as one stream
entry, and the dashboard's index still sees every event of every task."""

from __future__ import annotations

from typing import Any

import pytest

from conveyor.monitor.index import TaskIndex
from conveyor.testing import wait_for
from tests.redis_server import fresh_url, redis_server_or_skip

pytestmark = pytest.mark.integration

TASKS = 300


@pytest.fixture
def redis_url(monkeypatch: pytest.MonkeyPatch) -> str:
    url = fresh_url(redis_server_or_skip())
    monkeypatch.setenv("TEST_BROKER_URL", url)  # read by the project fixture's app
    return url


def test_drained_tasks_events_are_all_seen_from_fewer_entries(redis_url: str, project: Any) -> None:
    p, proj = project
    results = proj.add.map([(i, i) for i in range(TASKS)])
    p.start_worker("-c", "2")
    assert [r.get(timeout=30) for r in results] == [2 * i for i in range(TASKS)]
    index = TaskIndex(proj.app)

    def kinds(task_id: str) -> list[str]:
        detail = index.get(task_id)
        return [e["type"] for e in detail.events] if detail else []

    def all_succeeded() -> bool:
        index.refresh()
        return all("task-succeeded" in kinds(r.id) for r in results)

    wait_for(all_succeeded, timeout=15)
    for r in results:
        assert kinds(r.id) == ["task-received", "task-started", "task-succeeded"]
    broker = proj.app.broker
    entries = broker.link.send([("XLEN", broker.link.key("log", "events"))])[0]
    assert entries < TASKS  # three events per task, in far fewer entries
