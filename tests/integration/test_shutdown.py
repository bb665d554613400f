"""Warm and cold shutdown (DESIGN.md, "Shutdown")."""

from __future__ import annotations

import signal
import time
from typing import Any

import pytest

from conveyor import states
from conveyor.testing import wait_for

pytestmark = pytest.mark.integration


def _stats(proj: Any) -> Any:
    return proj.app.broker.queue_stats(["default"])[0]


def test_warm_shutdown_finishes_running_tasks_and_returns_prefetched_ones(project: Any) -> None:
    p, proj = project
    running = [proj.slow.delay(f"r{i}", 1.0) for i in range(2)]
    worker = p.start_worker("-c", "2", "--prefetch-multiplier", "1")
    wait_for(lambda: p.count("start") == 2, timeout=10)
    queued = [proj.slow.delay(f"q{i}", 0.1) for i in range(5)]
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(15) == 0
    assert p.count("done") == 2
    assert all(r.state == states.SUCCESS for r in running)
    stats = _stats(proj)
    # Nothing started after the signal, nothing left leased: all five wait in the queue.
    assert (stats.ready, stats.in_flight) == (5, 0)
    assert "warm shutdown" in p.log(0)
    p.start_worker("-c", "2")
    assert sorted(r.get(timeout=10) for r in queued) == [f"q{i}" for i in range(5)]


def test_prefetched_messages_are_given_back_while_a_long_task_runs(project: Any) -> None:
    p, proj = project
    first = proj.slow.delay("long", 3.0)
    quick = [proj.slow.delay(f"q{i}", 0.0) for i in range(3)]
    # One process prefetches all four; the long task must not hold the other three.
    worker = p.start_worker("-c", "1", "--pool", "solo", "--prefetch-multiplier", "4")
    p.start_worker("-c", "1", "--pool", "solo")
    assert sorted(r.get(timeout=2.5) for r in quick) == ["q0", "q1", "q2"]
    assert first.state == states.PENDING
    worker.send_signal(signal.SIGTERM)
    assert first.get(timeout=10) == "long"


def test_second_signal_is_a_cold_shutdown_and_acks_late_tasks_come_back(project: Any) -> None:
    p, proj = project
    result = proj.slow.delay("long", 30)
    worker = p.start_worker("-c", "1")
    wait_for(lambda: p.count("start") == 1, timeout=10)
    worker.send_signal(signal.SIGTERM)
    time.sleep(0.2)
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(10) == 0
    assert p.count("done") == 0
    assert _stats(proj).ready == 1  # redelivered now, not after the visibility timeout
    p.start_worker("-c", "1")
    wait_for(lambda: p.count("start") == 2, timeout=10, message="the task was not redelivered")
    assert result.state == states.PENDING  # running again, not marked failed
