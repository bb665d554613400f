"""The async client on Redis, with redis-py's asyncio client (``redis.asyncio``).

What is sent is the sync broker's and result store's, not a copy of it: the Lua
scripts, their KEYS and ARGV, the entry format and the key names come from
``brokers/redis.py`` (``publish_call``) and ``backends/redis.py`` (``store_call``,
``task_keys``). A ready message goes through the same hand-off script (send.lua:
straight to a consumer blocked on the queue, or queued with the wake-up token); a
delayed one through the same MULTI/EXEC into the queue's delay set. A wait sends the
same look-and-register script plus BLPOP as ``RedisBackend.wait``, so a worker's
result store pushes the record straight to us.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from conveyor._redis import RedisLink, RedisURL, mask
from conveyor._redis_script import Script
from conveyor.backends.base import ResultRecord
from conveyor.backends.redis import (
    _AWAIT,
    _READY_PREFIXES,
    _STORE,
    NOTIFY_TTL_MS,
    _decode,
    store_call,
    task_keys,
)
from conveyor.brokers.redis import _CLAIM, _RELEASE, _SEND, lease_key, publish_call
from conveyor.exceptions import BrokerConnectionError, BrokerError, ConfigurationError
from conveyor.message import Message

if TYPE_CHECKING:
    import redis.asyncio as aioredis

T = TypeVar("T")


def _client(parsed: RedisURL) -> aioredis.Redis:
    try:
        import redis.asyncio as aioredis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff
    except ImportError:
        raise ConfigurationError(
            "the Redis broker needs the redis package: pip install 'conveyor-tasks[redis]'"
        ) from None
    # As the sync client (_redis._client_kwargs): our own retries, raw RESP2 replies.
    options: dict[str, Any] = {"retry": Retry(NoBackoff(), 0), "socket_keepalive": True, "protocol": 2}
    if parsed.sentinels:
        from redis.asyncio.sentinel import Sentinel

        extra = dict(parsed.options)
        timeout = float(extra.pop("socket_timeout", "5"))
        sentinel = Sentinel(
            list(parsed.sentinels),
            socket_timeout=timeout,
            sentinel_kwargs={"password": extra.pop("sentinel_password", None), "socket_timeout": timeout},
        )
        master: aioredis.Redis = sentinel.master_for(
            parsed.service, db=parsed.db, password=parsed.password, username=parsed.username,
            socket_timeout=timeout, **options,
        )  # fmt: skip
        return master
    if "socket_timeout" not in dict(parsed.options):
        options["socket_timeout"] = parsed.socket_timeout
    try:
        return aioredis.Redis.from_url(parsed.client_url, **options)
    except ValueError as exc:
        raise ConfigurationError(f"malformed Redis URL {mask(parsed.url)}: {exc}") from None


class _Redis:
    """One event loop's redis-py asyncio client (a pool: concurrent waits each get a
    connection), with the sync side's error translation and publish retries.

    On Redis Cluster every key of a deployment shares one hash slot (the prefix's
    tag), so the client talks to the master serving that slot, found with ``CLUSTER
    SLOTS`` from the URL's nodes, as the sync side does; a redirect or a lost
    connection (a failover) makes the next try ask the cluster again.
    """

    def __init__(self, url: str) -> None:
        self.link = RedisLink(url)  # parsing and key names only: it opens nothing until used
        self.url = url
        self._client: aioredis.Redis | None = None
        self._finding: asyncio.Lock | None = None  # made on the loop that uses this client

    async def connected(self) -> aioredis.Redis:
        if self._client is None:
            if self.link.parsed.cluster_nodes:
                # Concurrent first calls (or calls after a failover) look the master up
                # once: a second client made meanwhile would be dropped unclosed.
                if self._finding is None:
                    self._finding = asyncio.Lock()
                async with self._finding:
                    if self._client is None:
                        self._client = await self._master_client()
            else:
                self._client = _client(self.link.parsed)
        return self._client

    async def _master_client(self) -> aioredis.Redis:
        import redis.asyncio as aioredis
        from redis.crc import key_slot
        from redis.exceptions import ConnectionError, RedisError

        template = _client(self.link.parsed)  # the URL's options (TLS, AUTH...), its first node
        pool = template.connection_pool

        def on(host: str, port: int) -> aioredis.Redis:
            options = {**pool.connection_kwargs, "host": host, "port": port}
            return aioredis.Redis(
                connection_pool=aioredis.ConnectionPool(connection_class=pool.connection_class, **options)
            )

        slot = key_slot(self.link.key("slot").encode())
        failures = []
        try:
            for host, port in self.link.parsed.cluster_nodes:
                node = on(host, port)
                try:
                    ranges = await node.execute_command("CLUSTER SLOTS")  # type: ignore[no-untyped-call]
                except (RedisError, OSError) as exc:
                    failures.append(f"{host}:{port}: {exc}")
                    continue
                finally:
                    await node.aclose()
                for first, last, master, *_replicas in ranges:
                    if int(first) <= slot <= int(last):
                        address = master[0].decode() if isinstance(master[0], bytes) else str(master[0])
                        return on(address or host, int(master[1]))
                failures.append(f"{host}:{port}: no master serves slot {slot}")
        finally:
            await template.aclose()
        # A ConnectionError: retried like any lost connection while publish_retry lasts.
        raise ConnectionError(
            f"no cluster master found for slot of {self.link.prefix} ({'; '.join(failures)})"
        )

    async def forget(self, exc: BaseException) -> bool:
        """After a failure on a cluster: drop the client when the slot may have moved
        (redirect, lost connection), so the next try finds its master again."""
        from redis.exceptions import AskError, ClusterDownError, ConnectionError, TimeoutError, TryAgainError

        if not self.link.parsed.cluster_nodes:
            return False
        if not isinstance(
            exc, (AskError, ClusterDownError, TryAgainError, ConnectionError, TimeoutError, OSError)
        ):
            return False
        await self.aclose()
        return True

    def translate(self, exc: Exception) -> BrokerError:
        from redis.exceptions import ConnectionError, TimeoutError

        text = (str(exc) or type(exc).__name__).rstrip(".")
        if isinstance(exc, (ConnectionError, TimeoutError, OSError)):
            return BrokerConnectionError(f"cannot reach Redis at {mask(self.url)}: {text}")
        return BrokerError(f"Redis at {mask(self.url)} failed: {text}")

    async def script(self, script: Script, *args: Any, keys: Sequence[str] = (), retry_s: float = 0.0) -> Any:
        """EVALSHA, EVAL when Redis lost the script."""
        from redis.exceptions import NoScriptError

        async def run() -> Any:
            client = await self.connected()
            try:
                return await client.evalsha(script.sha, len(keys), *keys, *args)
            except NoScriptError:
                return await client.eval(script.source, len(keys), *keys, *args)

        return await self.retrying(run, retry_s)

    async def transaction(self, commands: Sequence[tuple[Any, ...]], *, retry_s: float = 0.0) -> list[Any]:
        """``commands`` in one MULTI/EXEC."""

        async def run() -> list[Any]:
            pipe = (await self.connected()).pipeline(transaction=True)
            for command in commands:
                pipe.execute_command(*command)
            return list(await pipe.execute())

        return await self.retrying(run, retry_s)

    async def retrying(self, operation: Callable[[], Awaitable[T]], retry_s: float) -> T:
        """Connection failures retried for ``retry_s`` with capped backoff (the
        publish_retry a sync publish has); any failure leaves as a BrokerError."""
        from redis.exceptions import (
            AskError,
            ClusterDownError,
            ConnectionError,
            RedisError,
            TimeoutError,
            TryAgainError,
        )

        deadline = time.monotonic() + retry_s
        pause = 0.05
        first = True
        while True:
            try:
                return await operation()
            except (ConnectionError, TimeoutError, AskError, ClusterDownError, TryAgainError) as exc:
                # Redirects reach here on a cluster only (MOVED is an AskError): the slot's
                # master changed, so the command did not run; find it and try again.
                if not await self.forget(exc) and not isinstance(exc, (ConnectionError, TimeoutError)):
                    raise self.translate(exc) from None
                # One immediate retry on a fresh connection hides a Redis restart.
                if not first and time.monotonic() + pause > deadline:
                    raise self.translate(exc) from None
                if not first:
                    await asyncio.sleep(pause)
                    pause = min(pause * 2, 1.0)
                first = False
            except RedisError as exc:
                raise self.translate(exc) from None

    async def aclose(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()


class RedisAsyncBroker:
    def __init__(self, url: str) -> None:
        self._redis = _Redis(url)

    async def publish(self, message: Message) -> None:
        redis = self._redis
        retry_s = redis.link.parsed.publish_retry_s
        call = publish_call(redis.link.prefix, message, message.eta)
        if isinstance(call, list):
            await redis.transaction(call, retry_s=retry_s)
        else:
            keys, args = call
            await redis.script(_SEND, *args, keys=keys, retry_s=retry_s)

    async def claim_lease(self, name: str, owner: str, ttl_s: float) -> str:
        ttl_ms = max(1, int(ttl_s * 1000))
        holder = await self._redis.script(_CLAIM, owner, ttl_ms, keys=(lease_key(self._redis.link, name),))
        return holder.decode() if isinstance(holder, bytes) else str(holder)

    async def release_lease(self, name: str, owner: str) -> None:
        await self._redis.script(_RELEASE, owner, keys=(lease_key(self._redis.link, name),))

    async def aclose(self) -> None:
        await self._redis.aclose()


class RedisAsyncBackend:
    def __init__(self, url: str, *, result_expires_s: float) -> None:
        self._redis = _Redis(url)
        self._expires_s = result_expires_s

    async def store(self, records: Sequence[ResultRecord]) -> None:
        """The sync store's script: it also hands ready records to their waiters."""
        if not records:
            return
        keys, args = store_call(self._redis.link.prefix, self._expires_s, records)
        await self._redis.script(_STORE, *args, keys=tuple(keys))

    async def get(self, task_id: str) -> ResultRecord | None:
        key = task_keys(self._redis.link, task_id)[0]

        async def read() -> Any:
            return await (await self._redis.connected()).get(key)

        data = await self._redis.retrying(read, 0.0)
        if data is None:
            return None
        return _decode(task_id, data if isinstance(data, bytes) else str(data).encode())

    async def wait(self, task_id: str, *, timeout_s: float | None, interval_s: float) -> ResultRecord | None:
        """``RedisBackend.wait`` on the loop: look and register as a waiter, then BLPOP
        the record the storing script pushes, in one round trip; nothing polls."""
        from redis.exceptions import RedisError

        link = self._redis.link
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        key, waiters, notify = task_keys(link, task_id)
        max_block = link.max_block_s
        registered = False
        try:
            while True:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return await self.get(task_id)
                expire_ms = int(((remaining or max_block) + max_block) * 1000) + NOTIFY_TTL_MS
                block = max_block if remaining is None else min(remaining, max_block)
                pipe = (await self._redis.connected()).pipeline(transaction=False)
                pipe.execute_command(
                    "EVAL", _AWAIT.source, 3, key, waiters, notify, expire_ms,
                    int(not registered), *_READY_PREFIXES,
                )  # fmt: skip
                pipe.execute_command("BLPOP", notify, max(block, 0.001))
                try:
                    now_registered, got = await pipe.execute()
                except RedisError as exc:
                    await self._redis.forget(exc)  # on a cluster: the next wait finds the master again
                    raise self._redis.translate(exc) from None
                registered = bool(now_registered)
                if got:
                    registered = False  # our copy was consumed with our registration
                    pushed = _decode(task_id, got[1])
                    if pushed.ready:
                        return pushed
        finally:
            if registered:
                try:
                    await (await self._redis.connected()).decr(waiters)
                except Exception:  # best effort: the counter expires anyway
                    pass

    async def aclose(self) -> None:
        await self._redis.aclose()
