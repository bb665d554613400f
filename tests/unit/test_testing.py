from __future__ import annotations

import pytest

from conveyor import Conveyor, states
from conveyor.brokers import memory
from conveyor.testing import run_until_empty, wait_for


@pytest.fixture
def app() -> Conveyor:
    memory.reset()
    return Conveyor("t", broker="memory://testing")


def test_run_until_empty_runs_tasks_through_the_real_settling_path(app: Conveyor) -> None:
    @app.task(name="t.add")
    def add(x: int, y: int) -> int:
        return x + y

    @app.task(name="t.retry", bind=True, max_retries=1)
    def retry(self) -> None:  # type: ignore[no-untyped-def]
        raise self.retry(countdown=60)

    results = add.map([(i, i) for i in range(5)])
    later = retry.delay()
    assert run_until_empty(app) == 6
    assert [r.get(timeout=1) for r in results] == [0, 2, 4, 6, 8]
    assert later.state == states.RETRY  # its next attempt is due in a minute: left queued
    stats = app.broker.queue_stats(["default"])[0]
    assert (stats.ready, stats.in_flight, stats.delayed) == (0, 0, 1)


def test_wait_for_returns_the_value_or_says_what_timed_out() -> None:
    assert wait_for(lambda: 42) == 42
    with pytest.raises(AssertionError, match="never"):
        wait_for(lambda: False, timeout=0.05, message="never")
