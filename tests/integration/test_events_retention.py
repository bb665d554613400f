"""Retention of the task-event log with real workers (Hardening issue, items 7 and 9)."""

from __future__ import annotations

import sqlite3
from typing import Any

import pytest

from conveyor.testing import wait_for

pytestmark = pytest.mark.integration


def _event_rows(p: Any) -> int:
    with sqlite3.connect(p.root / "broker.sqlite3") as db:
        return int(db.execute("SELECT COUNT(*) FROM logs WHERE stream = 'events'").fetchone()[0])


def test_event_log_is_bounded_when_children_are_recycled(project: Any) -> None:
    """Each child writes ~300 events in its life, under a twentieth of the limit, and
    3,000 tasks write 9,000: the log must still be trimmed to about the limit, because
    the bound is the log's size, not what one writer has written."""
    p, proj = project
    max_count = 8000
    p.env["CONVEYOR_EVENTS_MAX_COUNT"] = str(max_count)
    p.start_worker("-P", "prefork", "-c", "2", "--max-tasks-per-child", "100")
    results = proj.add.map([(i, 1) for i in range(3000)])
    assert results[-1].get(timeout=120) == 3000
    wait_for(lambda: all(r.ready() for r in results[::50]), timeout=60, message="the tasks did not all run")
    rows = _event_rows(p)
    assert 0.9 * max_count <= rows <= max_count * 1.05, rows
