"""A worker killed with SIGKILL loses nothing (DESIGN.md, "Delivery")."""

from __future__ import annotations

import collections
import os
import signal
from typing import Any

import pytest

from conveyor import states
from conveyor.testing import wait_for

pytestmark = pytest.mark.integration


def test_sigkill_mid_batch_loses_no_acks_late_task(project: Any) -> None:
    p, proj = project
    results = proj.mark.map([(n, 0.003) for n in range(1000)])
    victim = p.start_worker("-c", "2", "--prefetch-multiplier", "4", visibility=2.0)
    p.start_worker("-c", "2", "--prefetch-multiplier", "4", visibility=2.0)
    wait_for(lambda: p.count("mark") >= 300, timeout=30, interval=0.005)
    # Only the parent: its children must die with it (PR_SET_PDEATHSIG), as on a real crash.
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait(5)

    ids = [r.id for r in results]

    def all_done() -> bool:
        records = proj.app.backend.get_many(ids)
        return len(records) == len(ids) and all(r.state == states.SUCCESS for r in records.values())

    wait_for(all_done, timeout=60, interval=0.1, message="not every task finished after the crash")
    runs = collections.Counter(int(r[1]) for r in p.runs if r[0] == "mark")
    assert set(runs) == set(range(1000)), "a task was lost"
    twice = [n for n, c in runs.items() if c > 1]
    # Only tasks the killed worker held (2 slots x prefetch 4) may run twice.
    assert len(twice) <= 8, f"{len(twice)} tasks ran twice: {twice}"
    assert max(runs.values()) <= 2
    print(f"SIGKILL mid-batch: 1000/1000 done, {len(twice)} ran twice")
    assert not [s for s in proj.app.broker.queue_stats() if s.ready or s.in_flight], "messages left behind"
