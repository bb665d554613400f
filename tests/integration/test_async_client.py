"""The async client against real workers on SQLite, Redis, Redis Cluster and PostgreSQL: sent with
``adelay``, awaited with ``aget``, watched with ``astate``, on the loop alone."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from conveyor import states
from conveyor.aio import client as aio
from conveyor.exceptions import TimeoutError as ResultTimeout

from ..postgres_server import drop_schema, fresh_schema, postgres_url_or_skip, with_schema
from ..redis_cluster import fresh_cluster_url, redis_cluster_or_skip
from ..redis_server import fresh_url, redis_server_or_skip

pytestmark = pytest.mark.integration


@pytest.fixture(params=["sqlite", "redis", "redis-cluster", "postgres"])
def project(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    schema = None
    if request.param == "redis":
        monkeypatch.setenv("TEST_BROKER_URL", fresh_url(redis_server_or_skip()))
    elif request.param == "redis-cluster":
        monkeypatch.setenv("TEST_BROKER_URL", fresh_cluster_url(redis_cluster_or_skip()))
    elif request.param == "postgres":
        schema = fresh_schema()
        monkeypatch.setenv("TEST_BROKER_URL", with_schema(postgres_url_or_skip(), schema))
    yield request.getfixturevalue("project")
    if schema is not None:
        drop_schema(postgres_url_or_skip(), schema)


class _NoExecutor(ThreadPoolExecutor):
    def submit(self, *args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the async client used the loop's thread-pool executor")


def test_adelay_aget_and_astate_against_a_real_worker(project: Any, tmp_path: Any) -> None:
    p, proj = project
    go = tmp_path / "go"

    errors: list[dict[str, Any]] = []

    async def send() -> Any:
        asyncio.get_running_loop().set_default_executor(_NoExecutor())
        asyncio.get_running_loop().set_exception_handler(lambda loop, context: errors.append(context))
        threads = set(threading.enumerate())
        steps = await proj.progress.adelay(1, str(go))
        assert await steps.astate() == states.PENDING  # no worker yet
        with pytest.raises(ResultTimeout, match="not ready after 0.2s"):
            await steps.aget(timeout=0.2)
        assert set(threading.enumerate()) <= threads  # no thread made for any of it
        return steps, await aio.clients(proj.app)

    steps, clients = asyncio.run(send())
    # Closed when asyncio.run shut the loop down; a failure there goes to the handler.
    assert (clients.broker, clients.backend, errors) == (None, None, [])
    p.start_worker("-c", "1")

    async def follow() -> None:  # a second event loop: its own connections
        asyncio.get_running_loop().set_default_executor(_NoExecutor())
        threads = set(threading.enumerate())
        state = await steps.astate()
        while state != "PROGRESS":
            assert state in (states.PENDING, states.STARTED), state  # the task waits for `go`
            await asyncio.sleep(0.02)
            state = await steps.astate()
        go.write_text("1\n")
        assert await steps.aget(timeout=20) == {"done": 1}
        assert await steps.astate() == states.SUCCESS
        added = await proj.add.adelay(2, 3)
        assert await added.aget(timeout=20) == 5
        failed = await proj.boom.aapply_async(("k",))
        with pytest.raises(ValueError, match="boom k"):
            await failed.aget(timeout=20)
        many = [await proj.add.adelay(i, 1) for i in range(20)]  # concurrent waits share the clients
        assert await asyncio.gather(*(r.aget(timeout=20) for r in many)) == [i + 1 for i in range(20)]
        assert set(threading.enumerate()) <= threads

    try:
        asyncio.run(asyncio.wait_for(follow(), 30))
    except TimeoutError:
        raise AssertionError(f"stuck in state {steps.state}; runs: {p.runs}") from None
