"""The async client on the in-process memory broker: its calls never block on I/O,
so they run on the loop as they are; a wait is woken by the store itself."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

from conveyor.backends.base import ResultRecord
from conveyor.backends.memory import MemoryBackend
from conveyor.brokers.memory import MemoryBroker
from conveyor.message import Message


class MemoryAsyncBroker:
    def __init__(self, url: str) -> None:
        self._broker = MemoryBroker(url)

    async def publish(self, message: Message) -> None:
        self._broker.publish(message, eta=message.eta)

    async def claim_lease(self, name: str, owner: str, ttl_s: float) -> str:
        return self._broker.claim_lease(name, owner, ttl_s)

    async def release_lease(self, name: str, owner: str) -> None:
        self._broker.release_lease(name, owner)

    async def aclose(self) -> None:
        return None


def _settle(stored: asyncio.Future[None]) -> None:
    if not stored.done():
        stored.set_result(None)


class MemoryAsyncBackend:
    def __init__(self, url: str, *, result_expires_s: float) -> None:
        self._backend = MemoryBackend(url, result_expires_s=result_expires_s)

    async def store(self, records: Sequence[ResultRecord]) -> None:
        self._backend.store(records)

    async def get(self, task_id: str) -> ResultRecord | None:
        return self._backend.get(task_id)

    async def wait(self, task_id: str, *, timeout_s: float | None, interval_s: float) -> ResultRecord | None:
        """Woken by ``MemoryBackend.store`` (from a worker thread) through the loop's
        own thread-safe callback: no polling, no thread of ours."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            stored: asyncio.Future[None] = loop.create_future()

            def on_store(stored: asyncio.Future[None] = stored) -> None:
                try:
                    loop.call_soon_threadsafe(_settle, stored)
                except RuntimeError:  # the loop is closed: nobody waits any more
                    pass

            # Watching before looking: a store between the look and the wait still wakes us.
            with self._backend.watch(on_store):
                record = self._backend.get(task_id)
                if record is not None and record.ready:
                    return record
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return record
                try:
                    await asyncio.wait_for(stored, remaining)
                except asyncio.TimeoutError:
                    pass

    async def aclose(self) -> None:
        return None
