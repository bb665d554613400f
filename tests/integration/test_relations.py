"""Children stored in the result backend reach a client in another process: a task
on a real worker sends tasks; this process finds them from the task id alone."""

from __future__ import annotations

from typing import Any

import pytest

pytestmark = pytest.mark.integration


def test_children_a_worker_task_sent_are_seen_by_another_process(project: Any) -> None:
    p, proj = project
    p.start_worker("-c", "1")
    sent = proj.spawn.delay(3)
    child_ids = sent.get(timeout=20)
    fresh = proj.app.AsyncResult(sent.id)  # nothing of the task in this process's memory
    assert [child.id for child in fresh.children] == child_ids
    assert [value for _, value in fresh.collect(timeout=20)] == [child_ids, 0, 2, 4]
