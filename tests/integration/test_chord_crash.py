"""A chord whose worker dies mid-header: the whole worker process group SIGKILLed
while members run, then started again. The body still runs exactly once."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from typing import Any

import pytest

from conveyor import chord
from conveyor.testing import wait_for

from ..redis_server import fresh_url, redis_server_or_skip

pytestmark = pytest.mark.integration
MEMBERS = 1000


@pytest.fixture(params=["sqlite", "redis"])
def project(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    if request.param == "redis":
        monkeypatch.setenv("TEST_BROKER_URL", fresh_url(redis_server_or_skip()))
    yield request.getfixturevalue("project")


def test_sigkilled_worker_group_mid_chord_still_fires_the_body_once(project: Any) -> None:
    p, proj = project
    # proj.mark acks late: a member the killed worker held comes back after the lease.
    result = chord([proj.mark.s(n) for n in range(MEMBERS)], proj.tally.s())()
    worker = p.start_worker("--pool", "prefork", "-c", "2", visibility=1.0)
    wait_for(lambda: p.count("mark") >= MEMBERS // 3, timeout=30, interval=0.005)
    os.killpg(worker.pid, signal.SIGKILL)  # the supervisor and its children, at once
    worker.wait(5)
    killed_at = p.count("mark")
    assert killed_at < MEMBERS, "the header finished before the kill: nothing was tested"

    restarted = p.start_worker("--pool", "prefork", "-c", "2", visibility=1.0)
    assert result.get(timeout=60) == sum(range(MEMBERS))
    # A warm shutdown finishes what runs and returns what was fetched: afterwards a
    # second body would have run (logged) or be waiting in the queue.
    restarted.send_signal(signal.SIGTERM)
    assert restarted.wait(30) == 0
    assert [run for run in p.runs if run[0] == "tally"] == [["tally", str(MEMBERS)]]
    marked = {int(run[1]) for run in p.runs if run[0] == "mark"}
    assert marked == set(range(MEMBERS)), "a member was lost"
    stats = proj.app.broker.queue_stats(["default"])[0]
    assert (stats.ready, stats.in_flight, stats.delayed) == (0, 0, 0)
    print(f"killed after {killed_at} member runs; {len(p.runs) - MEMBERS - 1} ran twice")
