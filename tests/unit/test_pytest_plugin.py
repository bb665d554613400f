"""The pytest plugin (``conveyor.contrib.pytest``), loaded as users get it: by its entry point.

The test file below runs in a pytest subprocess (``pytester``), so the fixtures come
from the installed ``pytest11`` entry point, not from an import in this file.
"""

from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]

USER_TESTS = """
import os, threading
import pytest
from conveyor import shared_task

RUNS = []


@shared_task(name="tests.double")
def double(n):
    RUNS.append(("double", threading.current_thread().name))
    return n * 2


@pytest.fixture
def conveyor_config():
    return {"task_default_queue": "work", "result_expires": 60}


def test_a_worker_thread_runs_tasks_of_the_test_app(conveyor_app, conveyor_worker):
    @conveyor_app.task(name="tests.add")
    def add(x, y):
        RUNS.append(("add", threading.current_thread().name))
        return x + y

    assert conveyor_app.conf.task_default_queue == "work"
    results = [double.delay(i) for i in range(5)] + [add.delay(2, 3)]
    assert [r.get(timeout=30) for r in results] == [0, 2, 4, 6, 8, 5]
    assert sorted(kind for kind, _ in RUNS) == ["add"] + ["double"] * 5  # each ran once
    assert threading.main_thread().name not in {name for _, name in RUNS}
    assert conveyor_worker.app is conveyor_app


def test_the_worker_is_gone_after_its_test():
    assert not [t for t in threading.enumerate() if t.name.startswith("conveyor-test-worker")]


def test_conveyor_app_alone_runs_nothing(conveyor_app):
    result = double.delay(21)
    assert result.state == "PENDING"
    assert conveyor_app.broker.queue_stats(["work"])[0].ready == 1
"""


def test_fixtures_come_from_the_entry_point(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_user=USER_TESTS)
    result = pytester.runpytest_subprocess("-q", "-p", "no:cacheprovider", "-p", "no:randomly")
    result.assert_outcomes(passed=3)
