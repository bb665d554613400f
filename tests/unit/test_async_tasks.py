"""``async def`` tasks outside a worker: detection, eager runs, and the coroutine
executor's outcomes (the same ones run_one() gives a sync task)."""

from __future__ import annotations

import asyncio
import inspect
import time
from typing import Any

import pytest

from conveyor import Conveyor, SoftTimeLimitExceeded, Task, states
from conveyor.message import Message
from conveyor.worker.aio import SOFT, TERMINATE, execute_coroutine
from conveyor.worker.limits import TaskTerminated
from conveyor.worker.runner import ACK, DEAD, RETRY


class Down(Exception):
    pass


@pytest.fixture
def app() -> Conveyor:
    return Conveyor("aio", broker="memory://aio")


def test_a_coroutine_task_is_detected_and_a_direct_call_returns_the_coroutine(app: Conveyor) -> None:
    @app.task
    async def fetch(url: str) -> str:
        return url.upper()

    @app.task
    def plain(x: int) -> int:
        return x

    assert fetch.is_coroutine and not plain.is_coroutine
    called = fetch("a")
    assert inspect.iscoroutine(called)  # like calling the function itself
    assert asyncio.run(called) == "A"


def test_apply_and_always_eager_run_the_coroutine_to_completion(app: Conveyor) -> None:
    attempts: list[int] = []

    @app.task(bind=True, max_retries=3)
    async def flaky(self: Any, n: int) -> int:
        attempts.append(self.request.retries)
        await asyncio.sleep(0)
        if self.request.retries < n:
            raise self.retry(exc=Down("again"), countdown=5)
        return self.request.retries

    assert flaky.apply((2,)).get() == 2
    assert attempts == [0, 1, 2]
    app.conf.task_always_eager = True
    assert flaky.delay(0).get() == 0


def test_eager_from_inside_a_running_loop(app: Conveyor) -> None:
    """An async test or view sending with task_always_eager: its loop is busy, the task still runs."""
    app.conf.task_always_eager = True

    @app.task(bind=True)
    async def who(self: Any) -> str:
        await asyncio.sleep(0)
        return str(self.request.id)

    async def view() -> tuple[str, str]:
        result = who.delay()
        return result.id, result.get()

    sent, seen = asyncio.run(view())
    assert sent == seen


def _run(task: Task[Any, Any], *args: Any, why: str | None = None, cancel_after: float | None = None) -> Any:
    message = Message(id="t-1", task=task.name, args=list(args), queue="default")

    async def go() -> Any:
        running = asyncio.ensure_future(
            execute_coroutine(task, message, attempt=1, hostname="h", why_cancelled=lambda: why)
        )
        if cancel_after is not None:
            await asyncio.sleep(cancel_after)
            running.cancel()
        return await running

    return asyncio.run(go())


def test_outcomes_match_those_of_sync_tasks(app: Conveyor) -> None:
    @app.task(name="a.ok")
    async def ok(x: int) -> int:
        await asyncio.sleep(0)
        return x * 2

    @app.task(name="a.boom")
    async def boom() -> None:
        raise KeyError("missing")

    @app.task(name="a.auto", autoretry_for=(Down,), retry_kwargs={"max_retries": 3, "countdown": 1})
    async def auto() -> None:
        raise Down("smtp")

    done = _run(ok, 4)
    assert (done.action, done.state, done.result) == (ACK, states.SUCCESS, 8)
    failed = _run(boom)
    assert (failed.action, failed.state, failed.exception["type"]) == (ACK, states.FAILURE, "KeyError")
    assert "KeyError" in failed.traceback
    retried = _run(auto)
    assert (retried.action, retried.state) == (RETRY, states.RETRY)
    assert retried.retry_at == pytest.approx(time.time() + 1, abs=0.5)


def test_a_soft_limit_cancellation_fails_the_task_with_soft_time_limit_exceeded(app: Conveyor) -> None:
    cleaned: list[str] = []

    @app.task(name="a.slow", soft_time_limit=0.05)
    async def slow() -> None:
        try:
            await asyncio.sleep(30)
        finally:
            cleaned.append("finally")

    @app.task(name="a.retries_on_soft", autoretry_for=(SoftTimeLimitExceeded,), max_retries=1)
    async def retries_on_soft() -> None:
        await asyncio.sleep(30)

    outcome = _run(slow, why=SOFT, cancel_after=0.01)
    assert (outcome.state, outcome.exception["type"]) == (states.FAILURE, "SoftTimeLimitExceeded")
    assert cleaned == ["finally"]
    assert _run(retries_on_soft, why=SOFT, cancel_after=0.01).action == RETRY


def test_terminate_and_unasked_cancellations_propagate(app: Conveyor) -> None:
    @app.task(name="a.slow")
    async def slow() -> None:
        await asyncio.sleep(30)

    with pytest.raises(TaskTerminated):
        _run(slow, why=TERMINATE, cancel_after=0.01)
    with pytest.raises(asyncio.CancelledError):
        _run(slow, why=None, cancel_after=0.01)  # not the worker's: the loop is closing


def test_exhausted_retries_dead_letter(app: Conveyor) -> None:
    @app.task(name="a.down", bind=True, max_retries=0)
    async def down(self: Any) -> None:
        raise self.retry(exc=Down("still"))

    outcome = _run(down)
    assert (outcome.action, outcome.state) == (DEAD, states.FAILURE)


def test_a_finished_coroutine_stays_active_until_the_pool_collects_it(app: Conveyor) -> None:
    """Otherwise a warm shutdown that finds nothing active stops before storing its outcome."""
    from conveyor.brokers.base import Delivery
    from conveyor.testing import wait_for
    from conveyor.worker.aio import AsyncioPool
    from conveyor.worker.pools import Job

    @app.task(name="a.quick")
    async def quick() -> int:
        return 7

    message = Message(id="t-2", task="a.quick", args=[], queue="default")
    job = Job(Delivery(message.encode(), "default", "r-1", 1), task_id="t-2", task_name="a.quick",
              acks_late=False, coroutine=True, message=message)  # fmt: skip
    pool = AsyncioPool(app, hostname="h")
    pool.start()
    try:
        pool.submit(job)
        wait_for(lambda: not pool._done.empty(), timeout=5)  # finished, not collected
        assert pool.active() == [job]
        assert pool.idle_coroutine_slots() == pool.coroutine_concurrency - 1
        (done,) = pool.poll(1.0)
        assert (done.job, done.outcome.result) == (job, 7)
        assert pool.active() == []
    finally:
        pool.kill()


def test_a_pool_without_coroutine_tasks_does_not_import_asyncio() -> None:
    """Each prefork child would pay a few MiB for a loop it never uses."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from conveyor import Conveyor\n"
        "from conveyor.worker.pools import SoloPool, ThreadPool\n"
        "app = Conveyor('x', broker='memory://x')\n"
        "app.task(name='sync')(lambda: None)\n"
        "for pool in (SoloPool(app, hostname='h'), ThreadPool(app, 1, hostname='h')):\n"
        "    pool.start(); pool.stop(1.0)\n"
        "print('asyncio' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=True)
    assert out.stdout.strip() == "False", out.stderr


def test_system_exit_in_a_coroutine_is_its_failure(app: Conveyor) -> None:
    @app.task(name="a.exits")
    async def exits() -> None:
        raise SystemExit(3)

    outcome = _run(exits)
    assert (outcome.action, outcome.state, outcome.exception["type"]) == (ACK, states.FAILURE, "SystemExit")
