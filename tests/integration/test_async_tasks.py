"""``async def`` tasks on real workers: beside sync tasks in a prefork child, and alone
on ``--pool asyncio``; limits, terminate, retries and rate limits cancel or hold back
only the coroutine concerned.

Concurrency is proven by outcome, never by timing: a rendezvous task returns True
only when every one of its group was in flight at the same time.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conveyor import states
from conveyor.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded
from conveyor.testing import wait_for

from ..redis_server import fresh_url, redis_server_or_skip
from .conftest import Project, project_from

pytestmark = pytest.mark.integration

ASYNC_PROJECT = """
import asyncio, os, time
from conveyor import Conveyor

HERE = os.path.dirname(os.path.abspath(__file__))
app = Conveyor("proj", broker=os.environ.get("TEST_BROKER_URL") or "sqlite:///" + os.path.join(HERE, "broker.sqlite3"))
app.conf.update(worker_shutdown_timeout=20)


def record(*parts):
    with open(os.path.join(HERE, "runs.log"), "a") as fh:
        fh.write(" ".join(str(p) for p in parts) + "\\n")


def count(kind):
    path = os.path.join(HERE, "runs.log")
    if not os.path.exists(path):
        return 0
    with open(path) as fh:
        return sum(1 for line in fh if line.split()[:1] == [kind])


@app.task(name="proj.meet")
async def meet(n, group_size):
    # True only if all group_size of them are in flight together.
    record("meet", n)
    deadline = time.time() + 15
    while count("meet") < group_size and time.time() < deadline:
        await asyncio.sleep(0.01)
    return [count("meet") >= group_size, os.getpid()]


@app.task(name="proj.nap", acks_late=True)
async def nap(n, seconds):
    record("nap", n)
    await asyncio.sleep(seconds)
    record("napped", n)
    return n


@app.task(name="proj.add")
def add(x, y):
    record("add", x)
    return [x + y, os.getpid()]


@app.task(name="proj.spin_until")
def spin_until(kind):
    # CPU-bound in the child's main thread until a coroutine has recorded ``kind``.
    record("spin")
    deadline = time.time() + 15
    while count(kind) == 0 and time.time() < deadline:
        pass
    return [count(kind) > 0, os.getpid()]


@app.task(name="proj.wait_then_record")
async def wait_then_record(kind):
    record("waiting")
    while count("spin") == 0:
        await asyncio.sleep(0.01)
    record(kind)
    return os.getpid()


@app.task(name="proj.soft_nap", soft_time_limit=0.3)
async def soft_nap():
    try:
        await asyncio.sleep(30)
    except asyncio.CancelledError:
        record("soft-cancelled")
        raise


@app.task(name="proj.hard_nap", time_limit=0.5)
async def hard_nap():
    try:
        await asyncio.sleep(30)
    finally:
        record("hard-cancelled")


@app.task(name="proj.forever")
async def forever():
    record("forever")
    try:
        await asyncio.sleep(60)
    finally:
        record("forever-cleanup")


@app.task(name="proj.flaky", bind=True, max_retries=5)
async def flaky(self, fail_times):
    record("flaky", self.request.retries)
    await asyncio.sleep(0)
    if self.request.retries < fail_times:
        raise self.retry(exc=ConnectionError("upstream down"), countdown=0.1)
    return self.request.retries


@app.task(name="proj.fan_out")
async def fan_out(n):
    # The async client inside a coroutine task: sends and waits on the worker's loop.
    sent = [await add.adelay(i, 100) for i in range(n)]
    return [(await r.aget(timeout=15))[0] for r in sent]


@app.task(name="proj.limited", rate_limit="5/s")
async def limited(n):
    record("limited", n, "%.4f" % time.time())
    return n
"""


@pytest.fixture(params=["sqlite", "redis"])
def broker(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "redis":
        monkeypatch.setenv("TEST_BROKER_URL", fresh_url(redis_server_or_skip()))
    return str(request.param)


@pytest.fixture
def project(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[tuple[Project, Any]]:
    """The integration fixture's shape with this module's tasks (the shared project has
    no coroutine task, so every other test keeps its workers as they were)."""
    with project_from(ASYNC_PROJECT, tmp_path, request) as made:
        yield made


def _one_child(pool: str) -> list[str]:
    return ["-c", "1"] if pool == "prefork" else []


@pytest.mark.usefixtures("broker")
def test_sync_and_async_tasks_share_one_prefork_child(project: Any) -> None:
    p, proj = project
    p.start_worker("-c", "1", "--async-concurrency", "120")
    meets = proj.meet.map([(n, 120) for n in range(120)])
    adds = proj.add.map([(n, 1) for n in range(10)])
    met = [r.get(timeout=20) for r in meets]
    added = [r.get(timeout=20) for r in adds]
    assert all(ok for ok, _ in met), met  # 120 coroutines in flight at once in one process
    assert [total for total, _ in added] == [n + 1 for n in range(10)]
    assert len({pid for _, pid in met + added}) == 1  # one child ran both kinds
    wait_for(lambda: p.count("meet") == 120 and p.count("add") == 10)
    assert sorted(int(r[1]) for r in p.runs if r[0] == "meet") == list(range(120))  # each once
    assert sorted(int(r[1]) for r in p.runs if r[0] == "add") == list(range(10))


@pytest.mark.usefixtures("broker")
def test_a_coroutine_task_sends_and_awaits_with_the_async_client(project: Any) -> None:
    p, proj = project
    p.start_worker("-c", "2")
    parent = proj.fan_out.delay(5)
    assert parent.get(timeout=20) == [100, 101, 102, 103, 104]
    assert sorted(int(r[1]) for r in p.runs if r[0] == "add") == [0, 1, 2, 3, 4]  # each once
    # The children it sent are stored against it: this process reads them by id.
    children = type(parent)(parent.id, app=proj.app).children
    assert sorted(c.get(timeout=5)[0] for c in children) == [100, 101, 102, 103, 104]


@pytest.mark.parametrize("pool", ["threads", "solo"])
def test_the_in_process_pools_run_coroutines_beside_sync_tasks(project: Any, pool: str) -> None:
    p, proj = project
    p.start_worker("--pool", pool, "-c", "2")
    meets = proj.meet.map([(n, 20) for n in range(20)])
    adds = proj.add.map([(n, 1) for n in range(5)])
    assert all(ok for ok, _ in (r.get(timeout=20) for r in meets))
    assert [r.get(timeout=20)[0] for r in adds] == [1, 2, 3, 4, 5]
    wait_for(lambda: p.count("meet") == 20 and p.count("add") == 5)


@pytest.mark.parametrize("pool", ["prefork", "asyncio"])
def test_warm_shutdown_lets_the_coroutines_in_flight_finish(project: Any, pool: str) -> None:
    p, proj = project
    worker = p.start_worker("--pool", pool, *_one_child(pool))
    naps = proj.nap.map([(n, 0.5) for n in range(5)])
    wait_for(lambda: p.count("nap") == 5, timeout=10)
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(20) == 0
    assert sorted(r.get(timeout=5) for r in naps) == [0, 1, 2, 3, 4]
    assert p.count("napped") == 5


def test_a_coroutine_keeps_running_while_a_cpu_bound_task_holds_the_child(project: Any) -> None:
    p, proj = project
    p.start_worker("-c", "1")
    waiting = proj.wait_then_record.delay("seen")
    wait_for(lambda: p.count("waiting") == 1, timeout=10)
    # The sync task busy-loops in the child's main thread until the coroutine, already
    # in flight, has gone on and recorded "seen": only a loop of its own lets it.
    seen, spin_pid = proj.spin_until.delay("seen").get(timeout=20)
    assert seen
    assert waiting.get(timeout=10) == spin_pid


@pytest.mark.usefixtures("broker")
def test_asyncio_pool_runs_coroutines_and_dead_letters_sync_tasks(project: Any) -> None:
    p, proj = project
    p.start_worker("--pool", "asyncio", "-c", "120")  # -c: in flight at once, as for gevent
    meets = proj.meet.map([(n, 120) for n in range(120)])
    assert all(ok for ok, _ in (r.get(timeout=20) for r in meets))
    sync = proj.add.delay(1, 2)
    with pytest.raises(TypeError, match="asyncio pool runs only coroutines"):
        sync.get(timeout=10)
    assert p.count("add") == 0
    wait_for(lambda: [d.task_id for d in proj.app.broker.dead_letters()] == [sync.id], timeout=5)


@pytest.mark.parametrize("pool", ["prefork", "asyncio"])
def test_time_limits_cancel_only_the_coroutine(project: Any, pool: str) -> None:
    p, proj = project
    p.start_worker("--pool", pool, *_one_child(pool))
    before = proj.meet.delay(0, 1).get(timeout=10)[1]
    soft, hard = proj.soft_nap.delay(), proj.hard_nap.delay()
    with pytest.raises(SoftTimeLimitExceeded):
        soft.get(timeout=10)
    with pytest.raises(TimeLimitExceeded):
        hard.get(timeout=10)
    wait_for(lambda: p.count("soft-cancelled") == 1 and p.count("hard-cancelled") == 1, timeout=5)
    # The process that ran them serves on: no child was killed or replaced.
    assert proj.meet.delay(1, 1).get(timeout=10)[1] == before


@pytest.mark.parametrize("pool", ["prefork", "asyncio"])
def test_revoke_terminate_cancels_the_coroutine(project: Any, pool: str) -> None:
    p, proj = project
    p.start_worker("--pool", pool, *_one_child(pool))
    before = proj.meet.delay(0, 1).get(timeout=10)[1]
    running = proj.forever.delay()
    wait_for(lambda: p.count("forever") == 1, timeout=10)
    proj.app.control.revoke(running.id, terminate=True)
    wait_for(lambda: running.state == states.REVOKED, timeout=10)
    wait_for(lambda: p.count("forever-cleanup") == 1, timeout=5)  # its finally ran
    assert proj.meet.delay(1, 1).get(timeout=10)[1] == before


def test_self_retry_and_rate_limit_apply_to_coroutines(project: Any) -> None:
    p, proj = project
    p.start_worker("-c", "1")
    retried = proj.flaky.delay(2)
    limited = proj.limited.map([(n,) for n in range(7)])
    assert retried.get(timeout=15) == 2
    assert sorted(int(r[1]) for r in p.runs if r[0] == "flaky") == [0, 1, 2]
    assert sorted(r.get(timeout=20) for r in limited) == list(range(7))
    stamps = sorted(float(r[2]) for r in p.runs if r[0] == "limited")
    # 5/s, shared through the broker: slots 0.2 s apart, so 7 runs span at least 1.2 s
    # (unlimited, 7 coroutines would start within a few ms). Counted per window, not
    # per gap: the stamp is taken a moment after the slot, a moment that varies with load.
    assert len(stamps) == 7
    assert stamps[-1] - stamps[0] >= 6 * 0.2 - 0.5, stamps
    busiest = max(sum(1 for t in stamps if start <= t < start + 1.0) for start in stamps)
    assert busiest <= 5 + 2, stamps


def test_a_dead_childs_coroutines_are_listed_then_settled_by_the_supervisor(project: Any) -> None:
    p, proj = project
    p.start_worker("-c", "1", name="co@test")
    child = proj.meet.delay(0, 1).get(timeout=10)[1]
    doomed = [proj.forever.delay() for _ in range(3)]
    again = proj.nap.delay(7, 1.0)  # acks_late
    wait_for(lambda: p.count("forever") == 3 and p.count("nap") == 1, timeout=10)
    expected = sorted([r.id for r in doomed] + [again.id])

    def listed() -> list[str]:
        active = proj.app.control.inspect(timeout=2).active() or {}
        return sorted(t["id"] for t in active.get("co@test", []))

    wait_for(lambda: listed() == expected, timeout=10)  # inspect active sees the child's coroutines
    os.kill(child, signal.SIGKILL)
    for result in doomed:  # early-acked: recorded lost, never run again
        wait_for(lambda r=result: r.state == states.FAILURE, timeout=10)
        assert type(result.result).__name__ == "WorkerLostError"
    assert again.get(timeout=15) == 7  # acks_late: back to the queue, run again in the new child
    assert p.count("nap") == 2 and p.count("forever") == 3
