"""Chords on a real prefork worker: the body runs once, however the members settle."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from typing import Any

import pytest

from conveyor import chord

from ..redis_server import fresh_url, redis_server_or_skip

pytestmark = pytest.mark.integration


@pytest.fixture(params=["sqlite", "redis"])
def project(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    # Set before the shared fixture imports the project module, which reads it.
    if request.param == "redis":
        monkeypatch.setenv("TEST_BROKER_URL", fresh_url(redis_server_or_skip()))
    yield request.getfixturevalue("project")


def test_a_chord_of_100_runs_its_body_once_on_a_prefork_worker(project: Any) -> None:
    p, proj = project
    worker = p.start_worker("-c", "2")
    result = chord([proj.add.s(i, i) for i in range(100)], proj.tally.s())()
    assert result.get(timeout=60) == sum(2 * i for i in range(100))
    # A warm shutdown finishes whatever runs and puts back what was fetched but not
    # started: afterwards a second body has either run (logged) or waits in the queue.
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(30) == 0
    assert [run for run in p.runs if run[0] == "tally"] == [["tally", "100"]]
    stats = proj.app.broker.queue_stats(["default"])[0]
    assert (stats.ready, stats.in_flight, stats.delayed) == (0, 0, 0)
