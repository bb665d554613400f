"""rate_limit holds across worker processes and does not block other tasks."""

from __future__ import annotations

import time
from typing import Any

import pytest

from conveyor.testing import wait_for

pytestmark = pytest.mark.integration


def test_rate_limit_is_shared_by_two_workers(project: Any) -> None:
    p, proj = project
    p.start_worker("-c", "2")
    p.start_worker("-c", "2")
    limited = proj.limited.map([(n,) for n in range(12)])
    others = proj.other.map([(n,) for n in range(20)])
    assert sorted(r.get(timeout=10) for r in others) == list(range(20))
    others_done = time.time()
    assert sorted(r.get(timeout=20) for r in limited) == list(range(12))
    stamps = sorted(float(r[2]) for r in p.runs if r[0] == "limited")
    # 5/s across both workers: slots 0.2 s apart. The stamps are taken in the task, a
    # moment after its slot, and that moment varies with the machine's load, so check
    # the count in every 1 s window (unlimited, all 12 run within a few ms) rather than
    # each gap.
    busiest = max(sum(1 for t in stamps if start <= t < start + 1.0) for start in stamps)
    assert busiest <= 5 + 2, (busiest, stamps)
    assert stamps[-1] - stamps[0] >= 11 * 0.2 - 0.5, stamps
    # The 20 unlimited tasks were not stuck behind the limited ones.
    assert others_done < stamps[-1], (others_done, stamps[-1])
    wait_for(lambda: p.count("limited") == 12)


def test_a_task_held_back_by_its_rate_limit_is_logged_and_named_by_get_timeouts(project: Any) -> None:
    p, proj = project
    results = proj.limited.map([(n,) for n in range(4)])  # 5/s: three of them wait their turn
    with pytest.raises(TimeoutError, match=r"proj.limited has rate_limit '5/s', shared by every worker"):
        results[-1].get(timeout=0.01)
    p.start_worker("-c", "1")
    assert sorted(r.get(timeout=20) for r in results) == [0, 1, 2, 3]
    held = [line for line in p.log(0).splitlines() if "held back by its rate limit 5/s" in line]
    assert held, p.log(0)
