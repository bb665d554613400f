"""arq on Redis: two ``arq`` worker processes (asyncio, default max_jobs 10 each).

arq polls: its worker looks for jobs every ``poll_delay`` (0.5 s by default) and
``Job.result`` polls every 0.5 s. Both are lowered here (10 ms, 1 ms) so the polls do
not dominate the latency and start-up rows; everything else is arq's default.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

from arq import create_pool
from arq.connections import RedisSettings
from arq.worker import func
from common import REDIS_URL, Peer, mark_done, mark_started

QUEUE = "arq:queue"


async def noop(ctx: dict[str, Any], i: int) -> None:
    mark_done()


async def echo(ctx: dict[str, Any], i: int) -> int:
    mark_done()
    return i


async def add(ctx: dict[str, Any], x: int, y: int) -> int:
    return x + y


async def stamp(ctx: dict[str, Any], i: int) -> int:
    mark_started(i)
    return i


class WorkerSettings:
    functions = [
        func(noop, name="noop", keep_result=0),
        func(echo, name="echo"),
        func(add, name="add"),
        func(stamp, name="stamp"),
    ]
    redis_settings = RedisSettings.from_dsn(REDIS_URL) if REDIS_URL else RedisSettings()
    poll_delay = 0.01


class ArqPeer(Peer):
    name = "arq"
    notes = "2 x arq worker (asyncio, max_jobs 10), poll_delay 10 ms, result poll 1 ms"

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.pool = self.loop.run_until_complete(create_pool(WorkerSettings.redis_settings))

    def enqueue(self, n: int, results: bool = False) -> None:
        name = "echo" if results else "noop"

        async def send() -> None:
            enqueue = self.pool.enqueue_job
            for i in range(n):
                await enqueue(name, i)

        self.loop.run_until_complete(send())

    def queued(self) -> int:
        return int(self.loop.run_until_complete(self.pool.zcard(QUEUE)))

    def worker_commands(self) -> list[list[str]]:
        one = [sys.executable, "-m", "arq", "arq_peer.WorkerSettings"]
        return [one, one]

    def round_trip(self, i: int, timeout: float) -> Any:
        async def once() -> Any:
            job = await self.pool.enqueue_job("add", i, i)
            assert job is not None
            return await job.result(timeout=timeout, poll_delay=0.001)

        return self.loop.run_until_complete(once())

    def send_add(self, x: int, y: int) -> None:
        self.loop.run_until_complete(self.pool.enqueue_job("add", x, y))

    def send_stamp(self, i: int) -> None:
        self.loop.run_until_complete(self.pool.enqueue_job("stamp", i))

    def close(self) -> None:
        self.loop.run_until_complete(self.pool.aclose())
        self.loop.close()
