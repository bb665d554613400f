"""Outcomes of real tasks in a real worker process on the SQLite broker."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from typing import Any

import pytest

from conveyor import states
from conveyor.exceptions import NotRegistered, Revoked, SoftTimeLimitExceeded, TimeLimitExceeded
from conveyor.testing import wait_for

pytestmark = pytest.mark.integration


def test_tasks_run_and_results_are_stored(project: Any) -> None:
    p, proj = project
    p.start_worker("-c", "2")
    results = [proj.add.delay(i, i) for i in range(20)]
    assert [r.get(timeout=10) for r in results] == [2 * i for i in range(20)]
    record = proj.app.backend.get(results[0].id)
    assert record.state == states.SUCCESS
    assert record.worker == "w0@test"
    assert record.started_at <= record.finished_at
    assert "proj.add[" in p.log() and "succeeded in" in p.log()


def test_retries_with_backoff_then_success(project: Any) -> None:
    p, proj = project
    p.start_worker("-c", "1")
    result = proj.flaky.delay("k", 2)
    assert result.get(timeout=15) == "ok after 2"
    assert result.retries == 2
    assert [r[2] for r in p.runs if r[0] == "flaky"] == ["0", "1", "2"]
    assert "retry in" in p.log()


def test_exhausted_retries_fail_and_go_to_the_dead_letter_queue(project: Any) -> None:
    p, proj = project
    p.start_worker("-c", "1")
    result = proj.doomed.delay("d")
    with pytest.raises(ConnectionError, match="still down"):
        result.get(timeout=15)
    assert result.state == states.FAILURE
    assert p.count("doomed") == 3  # the first run and two retries
    dead = wait_for(lambda: proj.app.broker.dead_letters())
    assert len(dead) == 1
    assert dead[0].task_id == result.id
    assert "max retries exceeded (2)" in dead[0].reason


def test_unknown_task_is_dead_lettered_and_the_worker_goes_on(project: Any) -> None:
    p, proj = project
    p.start_worker("-c", "1")
    unknown = proj.app.send_task("proj.does_not_exist", args=(1,))
    with pytest.raises(NotRegistered):
        unknown.get(timeout=10)
    dead = wait_for(lambda: proj.app.broker.dead_letters())
    assert "unknown task 'proj.does_not_exist'" in dead[0].reason
    assert proj.add.delay(1, 1).get(timeout=10) == 2


def test_expired_task_is_revoked_and_not_run(project: Any) -> None:
    p, proj = project
    result = proj.mark.apply_async((1,), expires=0.2)
    time.sleep(0.3)  # the expiry itself is what is tested: let it pass with no worker running
    p.start_worker("-c", "1")
    with pytest.raises(Revoked):
        result.get(timeout=10)
    assert result.state == states.REVOKED
    assert p.count("mark") == 0


def test_priorities_run_highest_first(project: Any) -> None:
    p, proj = project
    order = [(n, prio) for n, prio in enumerate([0, 9, 3, 9, 5, 0, 7])]
    for n, prio in order:
        proj.order.apply_async((n,), priority=prio)
    p.start_worker("--pool", "solo", "--prefetch-multiplier", "1")
    wait_for(lambda: p.count("order") == len(order), timeout=10)
    ran = [int(r[1]) for r in p.runs if r[0] == "order"]
    expected = [n for n, _ in sorted(order, key=lambda item: (-item[1], item[0]))]
    assert ran == expected


def test_soft_time_limit_raises_inside_the_task(project: Any) -> None:
    p, proj = project
    p.start_worker("-c", "1")
    result = proj.soft.delay()
    with pytest.raises(SoftTimeLimitExceeded):
        result.get(timeout=10)
    assert p.count("soft-caught") == 1


def test_hard_time_limit_ends_the_child_and_the_pool_replaces_it(project: Any) -> None:
    p, proj = project
    p.start_worker("-c", "1")
    started = time.monotonic()
    result = proj.hard.delay()
    with pytest.raises(TimeLimitExceeded):
        result.get(timeout=10)
    assert time.monotonic() - started < 5
    killed_pid = int(next(r[1] for r in p.runs if r[0] == "hard-start"))
    new_pid = proj.pid.delay().get(timeout=10)
    assert new_pid != killed_pid
    assert "Hard time limit (0.5s) exceeded" in p.log()


def test_worker_waits_for_an_unreachable_broker_then_runs(project: Any) -> None:
    p, proj = project
    missing = p.root / "later"
    (p.root / "proj_later.py").write_text(
        f"from proj import *\napp.conf.broker_url = 'sqlite:///{missing}/b.sqlite3'\n"
    )
    log_path = p.root / "later.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "conveyor.cli.main", "-A", "proj_later", "worker", "-c", "1"],
            cwd=p.root,
            env=p.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    p.workers.append(proc)
    wait_for(lambda: b"Cannot reach the broker" in log_path.read_bytes(), timeout=10)
    assert b"ready." not in log_path.read_bytes()
    assert not missing.exists()
    os.mkdir(missing)
    wait_for(lambda: b"ready." in log_path.read_bytes(), timeout=15)
    proj.app.conf.broker_url = f"sqlite:///{missing}/b.sqlite3"
    proj.app.close()
    assert proj.add.delay(20, 22).get(timeout=10) == 42
