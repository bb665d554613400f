"""The async client on PostgreSQL, with psycopg's ``AsyncConnection``.

Statements, table names, session settings and NOTIFY channels are the sync broker's
and result store's (``brokers/postgres.py``, ``backends/postgres.py``,
``_postgres.py``), imported: a publish is the same one-statement INSERT plus
``pg_notify`` that wakes the workers LISTENing on the queue; a wait LISTENs on the
results channel, which a worker notifies when it stores a ready result, and the
loop watches that connection's socket (``loop.add_reader``), as the sync wait
watches it with ``select()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import psycopg
from psycopg import sql

from conveyor import _postgres as pg
from conveyor.backends import postgres as results
from conveyor.backends.base import ResultRecord
from conveyor.brokers import postgres as broker
from conveyor.brokers.postgres_store import STORE_SCHEMA, STORE_TABLES
from conveyor.exceptions import BrokerConnectionError, BrokerError
from conveyor.message import Message
from conveyor.states import READY_STATES

T = TypeVar("T")


class _Pool:
    """One event loop's connections to one schema: taken per operation, so concurrent
    coroutines never share a transaction, and at most ``pg.POOL_IDLE_MAX`` at once
    (the sync pool's size): a burst of coroutines queues for a connection instead of
    opening one each. The schema is made on first use, as the sync ``Database`` does
    (``_ensure_schema``, here awaited)."""

    def __init__(self, db: pg.Database) -> None:
        self.db = db
        self._idle: list[psycopg.AsyncConnection[Any]] = []
        self._slots = asyncio.Semaphore(pg.POOL_IDLE_MAX)
        self._ready = False

    async def connect(self) -> psycopg.AsyncConnection[Any]:
        db = self.db
        try:
            return await psycopg.AsyncConnection.connect(
                db.conninfo, autocommit=True, options=db.options, connect_timeout=db.connect_timeout
            )
        except psycopg.Error as exc:
            raise BrokerConnectionError(
                f"cannot connect to {db.where}: {pg._first_line(exc)}; check the URL and that the server is up"
            ) from None

    async def run(self, body: Callable[[psycopg.AsyncConnection[Any]], Awaitable[T]]) -> T:
        """``body`` on a pooled connection; once more on a new one when the first was lost."""
        async with self._slots:
            for attempt in range(2):
                conn = self._idle.pop() if self._idle else await self.connect()
                try:
                    if not self._ready:
                        await self._ensure_schema(conn)
                        self._ready = True
                    result = await body(conn)
                except psycopg.OperationalError as exc:
                    await conn.close()
                    if attempt == 0 and pg._is_disconnect(exc):
                        continue
                    raise self.db.translate(exc) from None
                except psycopg.Error as exc:
                    await self._give_back(conn)
                    raise self.db.translate(exc) from None
                except BaseException:
                    await conn.close()  # cancelled mid-statement: its state is unknown
                    raise
                await self._give_back(conn)
                return result
        raise AssertionError("unreachable")

    async def _give_back(self, conn: psycopg.AsyncConnection[Any]) -> None:
        idle = conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        if not conn.closed and idle:
            self._idle.append(conn)
        else:
            await conn.close()

    async def _ensure_schema(self, conn: psycopg.AsyncConnection[Any]) -> None:
        db = self.db
        tables = {name for (name,) in await (await conn.execute(pg._SQL_TABLES, (db.schema,))).fetchall()}
        if db._tables <= tables and pg.VERSION_TABLE in tables:
            row = await (await conn.execute(pg._SQL_GET_VERSION)).fetchone()
            if row is not None and row[0] == pg.SCHEMA_VERSION:
                return
        async with conn.transaction():
            await conn.execute(pg._SQL_DDL_LOCK, (pg._DDL_LOCK,))  # see Database._ensure_schema
            if await (await conn.execute(pg._SQL_SCHEMA_EXISTS, (db.schema,))).fetchone() is None:
                await conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(db.schema)))
            await conn.execute(pg._SQL_VERSION_TABLE)
            row = await (await conn.execute(pg._SQL_GET_VERSION)).fetchone()
            version = row[0] if row else None
            if version is not None and version > pg.SCHEMA_VERSION:
                raise BrokerError(
                    f"{db.where} has schema version {version} in schema {db.schema!r}, newer than this "
                    f"Conveyor understands ({pg.SCHEMA_VERSION}): upgrade Conveyor or use another schema"
                )
            for statement in db._ddl:
                await conn.execute(statement)
            if version is None:
                await conn.execute(pg._SQL_SET_VERSION, (pg.SCHEMA_VERSION,))

    async def aclose(self) -> None:
        idle, self._idle = self._idle, []
        for conn in idle:
            await conn.close()


class PostgresAsyncBroker:
    def __init__(self, url: str) -> None:
        db = pg.Database(
            url, schema=broker.SCHEMA + STORE_SCHEMA, tables=broker.TABLES + STORE_TABLES, what="broker"
        )
        self._pool = _Pool(db)

    async def publish(self, message: Message) -> None:
        eta = message.eta
        visible_at = eta if eta is not None and eta > time.time() else 0.0
        row = (message.queue, broker._priority(message), visible_at, 0, message.id, message.encode())
        notify = pg.channel(self._pool.db.schema, "q", message.queue)

        async def insert(conn: psycopg.AsyncConnection[Any]) -> None:
            await conn.execute(broker._SQL_PUBLISH_ONE, (*row, notify))

        await self._pool.run(insert)

    async def claim_lease(self, name: str, owner: str, ttl_s: float) -> str:
        now = time.time()

        async def claim(conn: psycopg.AsyncConnection[Any]) -> str:
            async with conn.transaction():
                await conn.execute(broker._SQL_LEASE_CLAIM, (name, owner, now + ttl_s, now))
                row = await (await conn.execute(broker._SQL_LEASE_OWNER, (name,))).fetchone()
            return str(row[0]) if row else owner

        return await self._pool.run(claim)

    async def release_lease(self, name: str, owner: str) -> None:
        async def release(conn: psycopg.AsyncConnection[Any]) -> None:
            await conn.execute(broker._SQL_LEASE_RELEASE, (name, owner))

        await self._pool.run(release)

    async def aclose(self) -> None:
        await self._pool.aclose()


class PostgresAsyncBackend:
    def __init__(self, url: str, *, result_expires_s: float) -> None:
        self._expires_s = result_expires_s
        db = pg.Database(url, schema=results.SCHEMA, tables=results.TABLES, what="result store")
        self._pool = _Pool(db)
        self._channel = pg.channel(db.schema, "results")
        self._listener: psycopg.AsyncConnection[Any] | None = None
        self._reading: int | None = None
        self._waiters: set[asyncio.Future[None]] = set()

    async def store(self, records: Sequence[ResultRecord]) -> None:
        now = time.time()
        expires_at = now + self._expires_s if self._expires_s > 0 else None
        rows = [results._row(record, now, expires_at) for record in records]
        ready = any(record.ready for record in records)

        async def write(conn: psycopg.AsyncConnection[Any]) -> None:
            async with conn.transaction():
                async with conn.cursor() as cur:
                    await cur.executemany(results._SQL_STORE, rows)
                if ready:  # only a ready record ends a wait, as in PostgresBackend.store
                    await conn.execute(pg._SQL_NOTIFY, (self._channel,))

        if rows:
            await self._pool.run(write)

    async def get(self, task_id: str) -> ResultRecord | None:
        async def read(conn: psycopg.AsyncConnection[Any]) -> list[Any]:
            return await (await conn.execute(results._SQL_GET, (task_id,))).fetchall()

        rows = await self._pool.run(read)
        return results._record(rows[0]) if rows else None

    async def _listen(self) -> None:
        """LISTEN on the results channel, then watch the connection's socket."""
        if self._listener is not None and not self._listener.closed:
            return
        self._stop_listening()
        conn = await self._pool.connect()
        try:
            await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self._channel)))
        except psycopg.Error as exc:
            await conn.close()
            raise self._pool.db.translate(exc) from None
        self._listener = conn
        self._reading = conn.pgconn.socket
        asyncio.get_running_loop().add_reader(self._reading, self._woken)

    def _woken(self) -> None:
        conn = self._listener
        try:
            assert conn is not None
            conn.pgconn.consume_input()
            while conn.pgconn.notifies() is not None:
                pass
        except (psycopg.Error, AssertionError):
            # Lost: waits fall back to their safety poll and the next one reconnects.
            self._stop_listening()
        waiters, self._waiters = self._waiters, set()
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def _stop_listening(self) -> None:
        if self._reading is not None:
            asyncio.get_running_loop().remove_reader(self._reading)
            self._reading = None
        conn, self._listener = self._listener, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.pgconn.finish()  # a plain socket close: no await needed, nothing pending

    async def wait(self, task_id: str, *, timeout_s: float | None, interval_s: float) -> ResultRecord | None:
        """As ``PostgresBackend.wait``: LISTEN before the first look; each wake-up (or
        ``interval_s``, the safety poll) looks again."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        cap = max(min(interval_s, pg.SAFETY_POLL_S), 0.001)
        while True:
            await self._listen()
            woken: asyncio.Future[None] = loop.create_future()
            self._waiters.add(woken)
            try:
                record = await self.get(task_id)
                if record is not None and record.state in READY_STATES:
                    return record
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return record
                try:
                    await asyncio.wait_for(woken, cap if remaining is None else min(cap, remaining))
                except asyncio.TimeoutError:
                    pass
            finally:
                self._waiters.discard(woken)

    async def aclose(self) -> None:
        conn, self._listener = self._listener, None
        self._stop_listening()
        if conn is not None:
            await conn.close()
        await self._pool.aclose()
