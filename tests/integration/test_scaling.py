"""Changing a live worker: its queues (add_consumer/cancel_consumer) and its prefork
pool's size (pool_grow/pool_shrink, --autoscale), with Celery's names."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from conveyor.testing import wait_for
from tests.integration.conftest import Project
from tests.redis_server import fresh_url, redis_server_or_skip


@pytest.fixture(params=["sqlite", "redis"])
def on_each_broker(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    # Set before the shared fixture imports the project module, which reads it.
    if request.param == "redis":
        monkeypatch.setenv("TEST_BROKER_URL", fresh_url(redis_server_or_skip()))
    yield request.getfixturevalue("project")


def _control(p: Project, *args: str) -> str:
    cmd = [sys.executable, "-m", "conveyor.cli.main", "-A", "proj", "control", *args, "--timeout", "5"]
    done = subprocess.run(cmd, cwd=p.root, env=p.env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, (done.stdout, done.stderr)
    return done.stdout


def _ready(proj: Any, queue: str) -> int:
    return sum(s.ready + s.in_flight for s in proj.app.broker.queue_stats([queue]))


def _stats(proj: Any, name: str) -> dict[str, Any]:
    replies = proj.app.control.inspect(timeout=5, destination=[name]).stats()
    return dict(replies[name])


def test_add_consumer_and_cancel_consumer_change_a_live_workers_queues(
    on_each_broker: tuple[Project, Any],
) -> None:
    p, proj = on_each_broker
    p.start_worker("--pool=prefork", "-c", "2", "-Q", "default", name="w0@test")
    assert "w0@test: ok" in _control(p, "add_consumer", "feeds")
    assert proj.add.apply_async((2, 3), queue="feeds").get(timeout=20) == 5
    assert "feeds" in _stats(proj, "w0@test")["queues"]

    assert "w0@test: ok" in _control(p, "cancel_consumer", "feeds")
    waiting = proj.add.apply_async((4, 4), queue="feeds")
    # The worker still runs tasks on its other queue, and leaves this one alone.
    for n in range(3):
        assert proj.add.delay(n, 1).get(timeout=20) == n + 1
    assert _ready(proj, "feeds") == 1 and waiting.state == "PENDING"
    assert "feeds" not in _stats(proj, "w0@test")["queues"]
    assert p.workers[0].poll() is None


def test_add_consumer_on_a_solo_worker_through_app_control(project: tuple[Project, Any]) -> None:
    p, proj = project
    p.start_worker("--pool=solo", name="w0@test")
    replies = proj.app.control.add_consumer("feeds", destination=["w0@test"], reply=True, timeout=5)
    assert "error" not in replies["w0@test"], replies
    assert proj.add.apply_async((1, 1), queue="feeds").get(timeout=20) == 2
    proj.app.control.cancel_consumer("feeds", destination=["w0@test"], reply=True, timeout=5)
    proj.add.apply_async((4, 4), queue="feeds")
    assert proj.add.delay(0, 1).get(timeout=20) == 1
    assert _ready(proj, "feeds") == 1


def test_pool_grow_and_pool_shrink_resize_a_live_prefork_pool(project: tuple[Project, Any]) -> None:
    p, proj = project
    p.start_worker("--pool=prefork", "-c", "1", "--prefetch-multiplier", "1", name="w0@test")
    assert _stats(proj, "w0@test")["concurrency"] == 1
    assert "w0@test: ok" in _control(p, "pool_grow", "1")
    assert _stats(proj, "w0@test")["concurrency"] == 2
    # Two slow tasks at once can only both run in two different children.
    results = [proj.slow.delay(f"g{n}", 1.5) for n in range(2)]
    assert [r.get(timeout=20) for r in results] == ["g0", "g1"]
    # One child would run them one after the other: start, done, start, done.
    assert [r[0] for r in p.runs] == ["start", "start", "done", "done"], p.runs

    # Shrink while tasks run and wait: none is lost, none runs twice.
    batch = [proj.slow.delay(f"s{n}", 0.3) for n in range(6)]
    assert "w0@test: ok" in _control(p, "pool_shrink", "1")
    assert _stats(proj, "w0@test")["concurrency"] == 1
    assert sorted(r.get(timeout=40) for r in batch) == sorted(f"s{n}" for n in range(6))
    runs = [r[1] for r in p.runs if r[0] == "done" and r[1].startswith("s")]
    assert sorted(runs) == sorted(f"s{n}" for n in range(6))
    assert p.workers[0].poll() is None


def test_autoscale_grows_with_a_backlog_and_shrinks_when_idle(project: tuple[Project, Any]) -> None:
    p, proj = project
    p.env["CONVEYOR_WORKER_AUTOSCALE_IDLE_S"] = "1"
    p.start_worker("--pool=prefork", "--autoscale=3,1", "--prefetch-multiplier", "1", name="w0@test")
    assert "concurrency: 1 (prefork, autoscale 3,1)" in p.log(0)
    assert _stats(proj, "w0@test")["concurrency"] == 1
    results = [proj.slow.delay(f"a{n}", 1.0) for n in range(15)]
    wait_for(lambda: _stats(proj, "w0@test")["concurrency"] == 3, timeout=30, message="did not grow to 3")
    assert sorted(r.get(timeout=60) for r in results) == sorted(f"a{n}" for n in range(15))
    wait_for(lambda: _stats(proj, "w0@test")["concurrency"] == 1, timeout=30, message="did not shrink to 1")
    log = p.log(0)
    assert "Autoscale: pool grown to 3" in log and "Autoscale: pool shrunk to 1" in log, log
    assert p.count("start") == p.count("done") == 15  # shrinking lost none, ran none twice
