"""The async client's seam: what ``adelay()`` and ``aget()`` need from a broker and a
result store, and which module gives it for each URL scheme.

Every implementation talks to its store with an asyncio-native client (redis-py's
``redis.asyncio``, psycopg's ``AsyncConnection``, non-blocking SQLite statements,
the memory store itself): nothing here hands a call to a thread pool. Each object
belongs to one event loop (``conveyor/aio/client.py`` keeps one set per loop).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

from conveyor.exceptions import ConfigurationError

if TYPE_CHECKING:
    from conveyor.backends.base import ResultRecord
    from conveyor.message import Message


class AsyncBroker(Protocol):
    async def publish(self, message: Message) -> None:
        """Store one message (its ``eta`` applies), waking consumers as the sync publish does."""

    async def claim_lease(self, name: str, owner: str, ttl_s: float) -> str:
        """``BrokerAdmin.claim_lease``: take the lease unless held; the holder's name."""

    async def release_lease(self, name: str, owner: str) -> None: ...

    async def aclose(self) -> None: ...


class AsyncBackend(Protocol):
    async def store(self, records: Sequence[ResultRecord]) -> None:
        """``ResultBackend.store``: insert or replace, in one round trip (one transaction)."""

    async def get(self, task_id: str) -> ResultRecord | None: ...

    async def wait(self, task_id: str, *, timeout_s: float | None, interval_s: float) -> ResultRecord | None:
        """``ResultBackend.wait``: the record once ready, or the latest one (None) at the timeout."""

    async def aclose(self) -> None: ...


def _scheme(url: str) -> str:
    return url.split(":", 1)[0].lower()


def async_broker(url: str) -> AsyncBroker:
    scheme = _scheme(url)
    if scheme == "memory":
        from conveyor.aio.memory import MemoryAsyncBroker

        return MemoryAsyncBroker(url)
    if scheme == "sqlite":
        from conveyor.aio.sqlite import SQLiteAsyncBroker

        return SQLiteAsyncBroker(url)
    if scheme in ("redis", "rediss", "redis+sentinel", "redis+cluster", "rediss+cluster"):
        from conveyor.aio.redis import RedisAsyncBroker

        return RedisAsyncBroker(url)
    if scheme in ("postgresql", "postgres"):
        from conveyor.aio.postgres import PostgresAsyncBroker

        return PostgresAsyncBroker(url)
    from conveyor.brokers.base import mask_url

    raise ConfigurationError(
        f"the async client does not know the broker URL scheme {scheme!r} in {mask_url(url)}"
    )


def async_backend(url: str, *, result_expires_s: float) -> AsyncBackend:
    scheme = _scheme(url)
    if scheme == "memory":
        from conveyor.aio.memory import MemoryAsyncBackend

        return MemoryAsyncBackend(url, result_expires_s=result_expires_s)
    if scheme == "sqlite":
        from conveyor.aio.sqlite import SQLiteAsyncBackend

        return SQLiteAsyncBackend(url, result_expires_s=result_expires_s)
    if scheme in ("redis", "rediss", "redis+sentinel", "redis+cluster", "rediss+cluster"):
        from conveyor.aio.redis import RedisAsyncBackend

        return RedisAsyncBackend(url, result_expires_s=result_expires_s)
    if scheme in ("postgresql", "postgres"):
        from conveyor.aio.postgres import PostgresAsyncBackend

        return PostgresAsyncBackend(url, result_expires_s=result_expires_s)
    from conveyor.brokers.base import mask_url

    raise ConfigurationError(
        f"the async client does not know the result backend URL scheme {scheme!r} in {mask_url(url)}"
    )
