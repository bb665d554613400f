"""update_state's progress on the dashboard: the event log records it, list and detail show a bar."""

from __future__ import annotations

import time

from conveyor import Conveyor
from conveyor.monitor.events import progress_event
from conveyor.testing import wait_for

from .conftest import client, emit, task_events


def test_progress_shows_on_the_list_detail_and_api_until_the_task_ends(app: Conveyor) -> None:
    now = time.time()
    received = [e for e in task_events("t-up", "dash.upload", ts=now) if e["type"] == "task-received"]
    emit(app, *received)
    emit(app, progress_event("t-up", "dash.upload", "PROGRESS", {"current": 3, "total": 10}, "w1@host"))
    c = client(app)
    row = next(t for t in c.get("/api/tasks").json()["tasks"] if t["id"] == "t-up")
    assert row["state"] == "PROGRESS" and row["progress"] == [3.0, 10.0]
    assert 'class="progress-fill" style="width: 30%"' in c.get("/tasks").text
    assert "3/10" in c.get("/tasks/t-up").text

    emit(
        app,
        {"type": "task-succeeded", "id": "t-up", "name": "dash.upload", "ts": time.time() + 1, "runtime": 1},
    )

    def row_now() -> dict[str, object]:
        return next(t for t in c.get("/api/tasks").json()["tasks"] if t["id"] == "t-up")

    # The index reads the log at most twice a second.
    row = wait_for(lambda: (r := row_now())["state"] == "SUCCESS" and r, timeout=5)
    assert row["progress"] is None
