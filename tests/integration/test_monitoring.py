"""Monitoring with real workers: heartbeats, task events, inspect and control (issue 5)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from typing import Any

import pytest

from conveyor import states
from conveyor.monitor.index import TaskIndex
from conveyor.monitor.workers import list_workers
from conveyor.testing import wait_for

pytestmark = pytest.mark.integration

FAST_BEAT = "0.5"


def _env(p: Any, **extra: str) -> None:
    p.env.update({"CONVEYOR_WORKER_HEARTBEAT_INTERVAL": FAST_BEAT, **extra})


def _worker(proj: Any, name: str) -> Any:
    return next((w for w in list_workers(proj.app) if w.name == name), None)


def _cli(p: Any, *args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "conveyor.cli.main", "-A", "proj", *args],
        cwd=p.root,
        env=p.env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _states(index: TaskIndex, task_id: str) -> list[str]:
    detail = index.get(task_id)
    return [e["type"] for e in detail.events] if detail else []


def test_heartbeat_appears_and_goes_offline_after_kill(project: Any) -> None:
    p, proj = project
    _env(p)
    worker = p.start_worker("-c", "1", name="beat@test")
    wait_for(lambda: (w := _worker(proj, "beat@test")) is not None and w.online, timeout=10)
    info = _worker(proj, "beat@test")
    assert info.pool == "prefork" and info.concurrency == 1 and info.queues == ["default"]
    assert info.pid == worker.pid and info.interval == 0.5
    proj.add.delay(1, 2).get(timeout=10)
    wait_for(lambda: _worker(proj, "beat@test").processed >= 1, timeout=10)
    os.killpg(worker.pid, signal.SIGKILL)
    worker.wait(5)
    killed_at = time.time()
    wait_for(lambda: not _worker(proj, "beat@test").online, timeout=10)
    # Offline within 3 intervals of the kill (+ slack for a loaded test machine).
    assert time.time() - killed_at <= 3 * 0.5 + 1.5


def test_warm_shutdown_publishes_an_offline_heartbeat(project: Any) -> None:
    p, proj = project
    _env(p, CONVEYOR_WORKER_HEARTBEAT_INTERVAL="30")
    worker = p.start_worker("-c", "1", "--pool", "threads", name="bye@test")
    wait_for(lambda: _worker(proj, "bye@test") is not None, timeout=10)
    assert _worker(proj, "bye@test").online
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(15) == 0
    info = _worker(proj, "bye@test")
    assert info.state == "offline" and not info.online


def test_events_for_success_failure_retry_and_dead_letter(project: Any) -> None:
    p, proj = project
    _env(p)
    p.start_worker("-c", "2")
    ok = proj.add.delay(2, 3)
    retried = proj.flaky.delay("k", 1)
    doomed = proj.doomed.delay("d")
    unknown = proj.app.send_task("proj.nope", args=(1,))
    assert ok.get(timeout=15) == 5
    assert retried.get(timeout=15) == "ok after 1"
    wait_for(lambda: doomed.state == states.FAILURE, timeout=20)
    wait_for(lambda: unknown.state == states.FAILURE, timeout=15)
    index = TaskIndex(proj.app)

    def settled() -> bool:
        # Each prefork child writes its own events with its next settle or within a
        # flush delay, so two children's events arrive in either order: wait for all.
        index.refresh()
        return (
            "task-dead-lettered" in _states(index, doomed.id)
            and _states(index, doomed.id).count("task-retried") >= 2
            and "task-dead-lettered" in _states(index, unknown.id)
            and "task-succeeded" in _states(index, retried.id)
            and "task-retried" in _states(index, retried.id)
            and "task-succeeded" in _states(index, ok.id)
        )

    wait_for(settled, timeout=10)
    assert _states(index, ok.id) == ["task-received", "task-started", "task-succeeded"]
    detail = index.get(ok.id)
    assert detail is not None
    assert detail.state == states.SUCCESS and detail.result == "5" and detail.args == "[2,3]"  # JSON text
    assert detail.runtime is not None and detail.runtime >= 0 and detail.worker == "w0@test"
    assert _states(index, retried.id).count("task-retried") == 1
    assert index.get(retried.id).state == states.SUCCESS  # type: ignore[union-attr]
    doomed_detail = index.get(doomed.id)
    assert doomed_detail is not None and doomed_detail.state == states.FAILURE
    assert "ConnectionError" in (doomed_detail.exception or "")
    assert "max retries exceeded" in (doomed_detail.reason or "")
    assert _states(index, doomed.id).count("task-retried") == 2
    total, page = index.query(state="FAILURE")
    assert total == 2 and {t.id for t in page} == {doomed.id, unknown.id}


def test_task_events_can_be_switched_off(project: Any) -> None:
    p, proj = project
    _env(p, CONVEYOR_WORKER_SEND_TASK_EVENTS="false")
    p.start_worker("-c", "1")
    assert proj.add.delay(1, 1).get(timeout=10) == 2
    assert proj.app.broker.log_read("events") == []


def test_inspect_active_and_revoke_terminate(project: Any) -> None:
    p, proj = project
    _env(p)
    p.start_worker("-c", "2", name="insp@test")
    wait_for(lambda: _worker(proj, "insp@test") is not None, timeout=10)
    long = proj.slow.delay("long", 60)
    wait_for(lambda: p.count("start") == 1, timeout=10)
    started = time.monotonic()
    out = _cli(p, "inspect", "active", "--timeout", "5")
    inspect_s = time.monotonic() - started
    assert out.returncode == 0, out.stderr
    assert "insp@test" in out.stdout and long.id in out.stdout and "proj.slow" in out.stdout
    active = proj.app.control.inspect(timeout=5).active()
    assert [t["id"] for t in active["insp@test"]] == [long.id]
    started = time.monotonic()
    out = _cli(p, "revoke", long.id, "--terminate")
    assert out.returncode == 0, out.stderr
    wait_for(lambda: long.state == states.REVOKED, timeout=10)
    revoke_s = time.monotonic() - started
    assert revoke_s < 2.0 + 1.5  # the CLI's own start-up (~0.5 s on an idle machine) included
    assert p.count("done") == 0
    index = TaskIndex(proj.app)
    wait_for(lambda: index.refresh() >= 0 and "task-revoked" in _states(index, long.id), timeout=10)
    # The worker goes on: the next task runs.
    assert proj.add.delay(1, 1).get(timeout=10) == 2
    print(f"inspect active {inspect_s:.3f}s (CLI), revoke --terminate -> REVOKED {revoke_s:.3f}s (CLI)")


SPIN = """

@app.task(name="proj.spin")
def spin(seconds):
    # Python code between short sleeps: where a thread can be interrupted.
    record("spin")
    end = time.time() + seconds
    while time.time() < end:
        time.sleep(0.01)
"""


def test_revoke_terminate_with_threads_pool(project: Any) -> None:
    p, proj = project
    _env(p)
    with open(p.root / "proj.py", "a") as fh:
        fh.write(SPIN)
    p.start_worker("-c", "2", "--pool", "threads", name="thr@test")
    long = proj.app.send_task("proj.spin", args=(60,))
    wait_for(lambda: p.count("spin") == 1, timeout=10)
    wait_for(lambda: proj.app.control.inspect(timeout=2).active().get("thr@test"), timeout=10)
    started = time.monotonic()
    proj.app.control.revoke(long.id, terminate=True)
    wait_for(lambda: long.state == states.REVOKED, timeout=10)
    assert time.monotonic() - started < 2.0


def test_revoke_before_start_never_runs(project: Any) -> None:
    p, proj = project
    _env(p)
    doomed = proj.mark.delay("never")
    proj.app.control.revoke(doomed.id)  # no worker up yet: kept in kv "revoked"
    other = proj.mark.delay("runs")
    p.start_worker("-c", "1")
    assert other.get(timeout=30) == "runs"
    wait_for(lambda: doomed.state == states.REVOKED, timeout=30)
    assert [r[1] for r in p.runs if r[0] == "mark"] == ["runs"]
    # And a revoke sent to a running worker, for a task queued behind a long one.
    blocker = proj.slow.delay("b", 1.5)
    wait_for(lambda: p.count("start") == 1, timeout=30)
    queued = proj.mark.delay("queued")
    doomed.revoke()
    queued.revoke()
    blocker.get(timeout=30)
    wait_for(lambda: queued.state == states.REVOKED, timeout=30)
    assert p.count("mark") == 1


def test_rate_limit_control(project: Any) -> None:
    p, proj = project
    _env(p)
    p.start_worker("-c", "2", name="rate@test")
    wait_for(lambda: _worker(proj, "rate@test") is not None, timeout=10)
    replies = proj.app.control.rate_limit("proj.other", "2/s", timeout=5)
    assert replies == {"rate@test": {"task": "proj.other", "rate_limit": "2/s"}}
    results = [proj.other.delay(i) for i in range(5)]
    for r in results:
        r.get(timeout=20)
    times = sorted(float(r[2]) for r in p.runs if r[0] == "other")
    # 5 runs at 2/s: 4 intervals of 0.5 s (the limit reaches a child's pipe a moment
    # after the reply, so allow the first run to slip through unpaced: 3 intervals).
    assert times[-1] - times[0] >= 1.45
    bad = proj.app.control.rate_limit("proj.missing", "1/s", timeout=5)
    assert "unknown task" in bad["rate@test"]["error"]


def test_shutdown_control(project: Any) -> None:
    p, proj = project
    _env(p)
    worker = p.start_worker("-c", "1", name="stop@test")
    wait_for(lambda: _worker(proj, "stop@test") is not None, timeout=10)
    running = proj.slow.delay("s", 1.0)
    wait_for(lambda: p.count("start") == 1, timeout=10)
    proj.app.control.shutdown()
    assert worker.wait(15) == 0
    assert running.state == states.SUCCESS  # warm: the running task finished
    assert not _worker(proj, "stop@test").online


def test_inspect_commands_and_status_cli(project: Any) -> None:
    p, proj = project
    _env(p)
    p.start_worker("-c", "1", name="a@test")
    p.start_worker("-c", "1", "--pool", "solo", name="b@test")
    wait_for(lambda: len([w for w in list_workers(proj.app) if w.online]) == 2, timeout=10)
    started = time.monotonic()
    pong = proj.app.control.ping(timeout=5)
    ping_s = time.monotonic() - started
    assert pong == {"a@test": "pong", "b@test": "pong"}
    assert ping_s < 2.0  # returns once every online worker answered, not at the timeout
    registered = proj.app.control.inspect(timeout=5).registered()
    assert "proj.add" in registered["a@test"] and "proj.add" in registered["b@test"]
    stats = proj.app.control.inspect(timeout=5, destination="b@test").stats()
    assert list(stats) == ["b@test"] and stats["b@test"]["pool"] == "solo"
    out = _cli(p, "inspect", "ping")
    assert out.returncode == 0 and out.stdout.count("pong") == 2, out
    out = _cli(p, "inspect", "registered")
    assert out.returncode == 0 and "proj.add" in out.stdout
    out = _cli(p, "status")
    assert out.returncode == 0 and "a@test" in out.stdout and "b@test" in out.stdout
    assert "2 worker(s) online" in out.stdout
    print(f"ping of 2 workers answered in {ping_s:.3f}s")


def test_prefork_inspect_scheduled_asks_the_children(project: Any) -> None:
    """A prefork worker's held messages live in its children: inspect asks them."""
    p, proj = project
    _env(p)
    p.start_worker("-c", "1", name="held@test")
    wait_for(lambda: _worker(proj, "held@test") is not None, timeout=10)
    proj.app.control.rate_limit("proj.other", "1/s", timeout=5)
    results = [proj.other.delay(i) for i in range(6)]
    inspect = proj.app.control.inspect(timeout=5, destination="held@test")
    # At 1/s one message at a time waits in the child for its slot (up to a second).
    found: dict[str, Any] = {}
    wait_for(lambda: bool(found.update(inspect.scheduled()) or found.get("held@test")), timeout=10)
    held = found["held@test"]
    assert len(held) == 1 and held[0]["name"] == "proj.other" and held[0]["queue"] == "default"
    assert held[0]["id"] in {r.id for r in results}
    assert isinstance(inspect.reserved()["held@test"], list)
    for r in results:
        r.get(timeout=30)
