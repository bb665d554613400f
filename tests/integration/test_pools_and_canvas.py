"""The other pools, child recycling, foreign bad messages, and canvas on a real worker."""

from __future__ import annotations

import sqlite3
import time
from typing import Any

import pytest

from conveyor import chain, chord, group
from conveyor.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded
from conveyor.testing import wait_for

pytestmark = pytest.mark.integration


def test_undecodable_message_goes_to_the_dead_letter_queue(project: Any) -> None:
    p, proj = project
    proj.app.broker.queue_stats()  # creates the schema
    db = sqlite3.connect(p.root / "broker.sqlite3")
    # What a buggy producer in another language might write.
    db.execute(
        "INSERT INTO messages (queue, priority, visible_at, body) VALUES ('default', 0, 0, ?)",
        (b'{"v": 1, "task": "proj.add", "args": "not a list"',),
    )
    db.commit()
    db.close()
    p.start_worker("-c", "1")
    dead = wait_for(lambda: proj.app.broker.dead_letters(), timeout=10)
    assert dead[0].reason.startswith("undecodable message: invalid JSON")
    assert proj.add.delay(2, 2).get(timeout=10) == 4  # the worker went on


def test_threads_pool_runs_tasks_and_enforces_limits(project: Any) -> None:
    p, proj = project
    p.start_worker("--pool", "threads", "-c", "4")
    assert [r.get(timeout=10) for r in proj.add.map([(i, 1) for i in range(40)])] == [
        i + 1 for i in range(40)
    ]
    with pytest.raises(SoftTimeLimitExceeded):
        proj.soft.delay().get(timeout=10)
    started = time.monotonic()
    with pytest.raises(TimeLimitExceeded):
        proj.hard.delay().get(timeout=10)
    assert time.monotonic() - started < 5
    assert proj.add.delay(1, 1).get(timeout=10) == 2  # the slot was replaced


def test_max_tasks_per_child_recycles_processes(project: Any) -> None:
    p, proj = project
    p.start_worker("-c", "1", "--max-tasks-per-child", "3", "--prefetch-multiplier", "1")
    pids = [proj.pid.delay().get(timeout=10) for _ in range(9)]
    assert len(set(pids)) == 3, pids
    assert "exited with code" not in p.log()  # recycling is not an error


def test_chain_group_and_chord_on_a_real_worker(project: Any) -> None:
    p, proj = project
    p.start_worker("-c", "2")
    add = proj.add
    assert chain(add.s(1, 2), add.s(10), add.s(100))().get(timeout=10) == 113
    assert group(add.s(i, i) for i in range(10))().get(timeout=10) == [2 * i for i in range(10)]
    total = proj.app.tasks["proj.total"]
    assert chord([add.s(i, i) for i in range(10)], total.s())().get(timeout=10) == 90


@pytest.mark.parametrize("pool", ["prefork", "solo", "threads"])
def test_the_last_result_of_a_burst_is_not_held_back(project: Any, pool: str) -> None:
    p, proj = project
    p.start_worker("--pool", pool, "-c", "1")
    proj.add.delay(0, 0).get(timeout=10)
    started = time.monotonic()
    results = proj.add.map([(i, i) for i in range(5)])
    assert [r.get(timeout=5) for r in results] == [0, 2, 4, 6, 8]
    assert time.monotonic() - started < 0.5
