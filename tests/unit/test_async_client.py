"""The async client (``adelay``, ``aapply_async``, ``aget``, ``astate``) on the memory
broker: the sync path's sending behaviour, kept; waits woken without a thread."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from conveyor import Conveyor, signals, states
from conveyor.aio import client as aio
from conveyor.backends import memory as memory_results
from conveyor.brokers import memory
from conveyor.exceptions import BrokerConnectionError
from conveyor.exceptions import TimeoutError as ResultTimeout
from conveyor.message import decode
from conveyor.result import EagerResult
from conveyor.testing import start_worker


@pytest.fixture
def app() -> Conveyor:
    memory.reset()
    memory_results.reset()
    app = Conveyor("a", broker="memory://async", task_routes={"a.routed": "special"})

    @app.task(name="a.add")
    def add(x: int, y: int) -> int:
        return x + y

    @app.task(name="a.routed")
    def routed() -> str:
        return "routed"

    @app.task(name="a.fail")
    def fail() -> None:
        raise KeyError("nope")

    return app


def _fetch_one(app: Conveyor, queue: str) -> Any:
    [delivery] = app.broker.fetch([queue], limit=10, lease_s=30, timeout_s=0)
    return decode(delivery.body)


def test_adelay_then_aget_with_a_worker_running(app: Conveyor) -> None:
    async def main() -> None:
        result = await app.tasks["a.add"].adelay(2, 3)
        assert await result.aget(timeout=10) == 5
        assert await result.astate() == states.SUCCESS
        failed = await app.tasks["a.fail"].adelay()
        with pytest.raises(KeyError, match="nope"):
            await failed.aget(timeout=10)
        assert await failed.astate() == states.FAILURE

    with start_worker(app):
        asyncio.run(main())


def test_aapply_async_sends_what_apply_async_sends(app: Conveyor) -> None:
    seen: list[tuple[str, Any]] = []

    def before(sender: str, headers: dict[str, Any], **_: Any) -> None:
        headers["traced"] = "yes"  # a before_task_publish receiver may add headers
        seen.append(("before", sender))

    def after(sender: str, **_: Any) -> None:
        seen.append(("after", sender))

    signals.before_task_publish.connect(before)
    signals.after_task_publish.connect(after)
    try:

        async def main() -> tuple[Any, ...]:
            routed = await app.tasks["a.routed"].aapply_async(priority=7, expires=60)
            later = await app.tasks["a.add"].aapply_async((1, 1), countdown=30)
            return routed, later

        routed, later = asyncio.run(main())
    finally:
        signals.before_task_publish.disconnect(before)
        signals.after_task_publish.disconnect(after)
    assert seen == [("before", "a.routed"), ("after", "a.routed"), ("before", "a.add"), ("after", "a.add")]
    message = _fetch_one(app, "special")  # task_routes applied
    assert (message.id, message.priority, message.headers["traced"]) == (routed.id, 7, "yes")
    assert message.expires is not None and message.expires > time.time() + 50
    stats = app.broker.queue_stats(["default"])[0]
    assert (stats.ready, stats.delayed) == (0, 1)  # the countdown keeps it for later
    with pytest.raises(TypeError, match="JSON"):
        asyncio.run(app.tasks["a.add"].aapply_async((object(), 1)))
    assert later.id != routed.id


def test_an_idempotency_key_sends_once_and_answers_with_the_first_id(app: Conveyor) -> None:
    async def main() -> list[str]:
        add = app.tasks["a.add"]
        return [(await add.aapply_async((1, 2), idempotency_key="order-42")).id for _ in range(3)]

    ids = asyncio.run(main())
    assert len(set(ids)) == 1
    assert app.broker.queue_stats(["default"])[0].ready == 1


def test_task_always_eager_runs_the_task_inline(app: Conveyor) -> None:
    app.conf.task_always_eager = True

    async def main() -> Any:
        result = await app.tasks["a.add"].adelay(4, 4)
        assert isinstance(result, EagerResult)
        return await result.aget(), await result.astate()

    assert asyncio.run(main()) == (8, states.SUCCESS)
    assert app.broker.queue_stats(["default"])[0].ready == 0


def test_aget_times_out_with_the_error_get_raises(app: Conveyor) -> None:
    async def main() -> Any:
        result = await app.tasks["a.add"].adelay(1, 2)
        assert await result.astate() == states.PENDING
        with pytest.raises(ResultTimeout) as caught:
            await result.aget(timeout=0.2)
        return result, caught.value

    result, async_error = asyncio.run(main())
    with pytest.raises(ResultTimeout) as sync_error:
        result.get(timeout=0.01)
    assert str(async_error).split(":")[0] == str(sync_error.value).split(":")[0].replace("0.01s", "0.2s")


def test_a_wait_is_woken_by_the_store_without_threads_of_its_own(app: Conveyor) -> None:
    """The worker stores from another thread; the loop learns of it through its own
    thread-safe callback, not a thread blocked in ``wait()`` or an executor."""

    async def main() -> tuple[set[threading.Thread], set[threading.Thread]]:
        asyncio.get_running_loop().set_default_executor(_NoExecutor())
        result = await app.tasks["a.add"].adelay(1, 1)
        before = set(threading.enumerate())
        waiting = asyncio.ensure_future(result.aget(timeout=10))
        await asyncio.sleep(0.05)
        during = set(threading.enumerate())
        storing = threading.Thread(target=app.backend.store, args=([_done(result.id)],))
        storing.start()  # as a worker thread would
        assert await waiting == 2
        storing.join()
        return before, during

    before, during = asyncio.run(main())
    assert during <= before  # waiting made no thread


def test_clients_are_per_loop_and_closed_with_it(app: Conveyor) -> None:
    async def main() -> Any:
        found = await aio.clients(app)
        await app.tasks["a.add"].adelay(1, 1)
        assert found.broker is not None and await aio.clients(app) is found
        return found

    first = asyncio.run(main())
    assert first.broker is None  # closed when asyncio.run shut the loop down
    second = asyncio.run(main())
    assert second is not first


def _done(task_id: str) -> Any:
    from conveyor.backends.base import ResultRecord

    return ResultRecord(task_id, states.SUCCESS, task="a.add", result=2)


class _NoExecutor(ThreadPoolExecutor):
    def submit(self, *args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the async client used the loop's thread-pool executor")


def test_an_sqlite_publish_awaits_the_write_lock_without_blocking_the_loop(tmp_path: Any) -> None:
    import sqlite3

    from conveyor.exceptions import BrokerError

    path = tmp_path / "broker.sqlite3"
    app = Conveyor("s", broker=f"sqlite:///{path}?timeout=30", set_as_current=False)
    add = app.task(name="s.add")(lambda x, y: x + y)
    app.broker.queue_stats()  # the tables exist
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another process's long write transaction

    async def main() -> None:
        sending = asyncio.ensure_future(add.adelay(1, 2))
        for _ in range(20):  # the loop keeps running while the publish waits
            await asyncio.sleep(0.005)
        assert not sending.done()
        holder.execute("COMMIT")
        await sending

    asyncio.run(main())
    assert app.broker.queue_stats(["default"])[0].ready == 1
    holder.execute("BEGIN IMMEDIATE")
    app.conf.broker_url = f"sqlite:///{path}?timeout=0.2"
    with pytest.raises(BrokerError, match="stayed locked"):
        asyncio.run(add.adelay(1, 2))
    holder.execute("ROLLBACK")
    app.close()


def test_an_unreachable_redis_is_one_clear_error(app: Conveyor) -> None:
    from tests.redis_server import free_port

    pytest.importorskip("redis")
    app.conf.broker_url = f"redis://127.0.0.1:{free_port()}/0?publish_retry=0.2"
    with pytest.raises(BrokerConnectionError, match="cannot reach Redis at redis://127.0.0.1"):
        asyncio.run(app.tasks["a.add"].adelay(1, 2))


def test_an_unreachable_redis_cluster_is_one_clear_error(app: Conveyor) -> None:
    pytest.importorskip("redis")
    from ..redis_server import free_port

    app.conf.broker_url = (
        f"redis+cluster://127.0.0.1:{free_port()},127.0.0.1:{free_port()}/0?publish_retry=0.2"
    )
    with pytest.raises(BrokerConnectionError, match="no cluster master found") as caught:
        asyncio.run(app.tasks["a.add"].adelay(1, 2))
    assert "\n" not in str(caught.value)
