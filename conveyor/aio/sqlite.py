"""The async client on the embedded SQLite broker, without a thread.

Each statement runs on the event loop itself, on a connection of the loop's own whose
busy timeout is zero: a statement never waits for another process's write lock
inside SQLite (which would block the loop); when the file is locked it fails at
once, and the client *awaits* a short, growing pause and tries again, until the
URL's ``timeout`` (the same bound the sync broker's busy timeout gives). What is
left on the loop is the statement's own work: one small INSERT or SELECT in a
WAL-mode file, no fsync unless the URL asks for ``synchronous=full``.

Statements, table names and wake-ups are the sync broker's and result store's
(``brokers/sqlite.py``, ``backends/sqlite.py``, ``_sqlite.WakeChannel``), imported,
so both paths always write the same rows. A publish wakes blocked workers through
the broker's wake sockets; a wait listens on the result store's wake socket with
``loop.add_reader``, so it wakes when a worker stores a result, anywhere on the host.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
import weakref
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from conveyor import _forkguard
from conveyor._sqlite import SAFETY_POLL_S, Database, WakeChannel, _is_locked
from conveyor.backends import sqlite as results
from conveyor.backends.base import ResultRecord
from conveyor.brokers import sqlite as broker
from conveyor.brokers.sqlite_store import STORE_SCHEMA, STORE_TABLES
from conveyor.message import Message
from conveyor.states import READY_STATES

T = TypeVar("T")

_FIRST_PAUSE_S = 0.001
_MAX_PAUSE_S = 0.05  # capped, as SQLite caps the sleeps of its own busy handler

_SQL_JOURNAL_MODE = "PRAGMA journal_mode"
_SQL_SET_WAL = "PRAGMA journal_mode = WAL"
_SQL_NO_AUTOCHECKPOINT = "PRAGMA wal_autocheckpoint = 0"


_connections: weakref.WeakSet[_Connection] = weakref.WeakSet()
_abandoned: list[sqlite3.Connection] = []  # inherited through fork: never closed in the child


class _Connection:
    """One event loop's connection to one SQLite file, its statements retried by awaiting.

    Fork rules as in ``_sqlite.Database``: closed before a guarded fork, and a copy
    inherited by a child is never used or closed there (closing it could checkpoint
    or unlock the parent's files); the child opens its own.
    """

    def __init__(self, db: Database, synchronous: str) -> None:
        self.db = db
        self._synchronous = synchronous
        self._conn: sqlite3.Connection | None = None
        _connections.add(self)

    def _open(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.db.path, timeout=0, isolation_level=None, check_same_thread=False)
        try:
            if conn.execute(_SQL_JOURNAL_MODE).fetchone()[0].lower() != "wal":
                conn.execute(_SQL_SET_WAL)
            conn.execute(self._synchronous)
            # Checkpoints are the workers' (_sqlite_checkpoint): one inside our COMMIT
            # would fsync on the loop.
            conn.execute(_SQL_NO_AUTOCHECKPOINT)
            self.db._ensure_schema(conn)
        except BaseException:
            conn.close()
            raise
        return conn

    async def run(self, body: Callable[[sqlite3.Connection], T]) -> T:
        deadline = time.monotonic() + self.db.timeout_s
        pause = _FIRST_PAUSE_S
        while True:
            try:
                with _forkguard.guard:
                    if self._conn is None:
                        self._conn = self._open()
                    result = body(self._conn)
                # A statement never suspends: yield after it, so a burst of sends (a
                # loop of adelay) lets the loop's other coroutines run in between.
                await asyncio.sleep(0)
                return result
            except sqlite3.OperationalError as exc:
                if not _is_locked(exc) or time.monotonic() + pause > deadline:
                    raise self.db.translate(exc) from None
            except sqlite3.Error as exc:
                raise self.db.translate(exc) from None
            await asyncio.sleep(pause)
            pause = min(pause * 2, _MAX_PAUSE_S)

    async def transaction(self, body: Callable[[sqlite3.Connection], T]) -> T:
        def run(conn: sqlite3.Connection) -> T:
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = body(conn)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            return result

        return await self.run(run)

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()


def _close_for_fork() -> None:
    for connection in list(_connections):
        connection.close()


def _after_fork_in_child() -> None:
    for connection in list(_connections):
        if connection._conn is not None:
            _abandoned.append(connection._conn)
            connection._conn = None


_forkguard.before_fork(_close_for_fork)
os.register_at_fork(after_in_child=_after_fork_in_child)


def _connection(url: str, schema: Sequence[str], tables: Sequence[str], what: str) -> _Connection:
    from conveyor._sqlite import _SQL_SYNCHRONOUS, parse_url

    db = Database(url, schema=schema, tables=tables, what=what)
    return _Connection(db, _SQL_SYNCHRONOUS[parse_url(url).synchronous])


class SQLiteAsyncBroker:
    def __init__(self, url: str) -> None:
        self._conn = _connection(url, broker.SCHEMA + STORE_SCHEMA, broker.TABLES + STORE_TABLES, "broker")
        self._wake = WakeChannel(self._conn.db.path)

    async def publish(self, message: Message) -> None:
        eta = message.eta
        body = message.encode()
        priority = broker._priority(message)
        if eta is not None and eta > time.time():
            row: tuple[Any, ...] = (message.queue, priority, eta, 0, message.id, body)
            sql = broker._SQL_SCHEDULE
        else:
            row, sql = (message.queue, priority, 0, message.id, body), broker._SQL_INSERT
        await self._conn.run(lambda conn: conn.execute(sql, row))
        self._wake.notify()  # after the commit: a consumer woken earlier finds nothing

    async def claim_lease(self, name: str, owner: str, ttl_s: float) -> str:
        now = time.time()

        def claim(conn: sqlite3.Connection) -> str:
            conn.execute(broker._SQL_LEASE_CLAIM, (name, owner, now + ttl_s, now))
            return str(conn.execute(broker._SQL_LEASE_OWNER, (name,)).fetchone()[0])

        return await self._conn.transaction(claim)

    async def release_lease(self, name: str, owner: str) -> None:
        await self._conn.run(lambda conn: conn.execute(broker._SQL_LEASE_RELEASE, (name, owner)))

    async def aclose(self) -> None:
        self._wake.close()
        self._conn.close()


class SQLiteAsyncBackend:
    def __init__(self, url: str, *, result_expires_s: float) -> None:
        self._conn = _connection(url, results.SCHEMA, results.TABLES, "result store")
        self._expires_s = result_expires_s
        self._wake = WakeChannel(self._conn.db.path + "-results")
        self._waiters: set[asyncio.Future[None]] = set()
        self._reading: int | None = None  # the wake socket's fd, once added to the loop

    async def store(self, records: Sequence[ResultRecord]) -> None:
        now = time.time()
        expires_at = now + self._expires_s if self._expires_s > 0 else None
        rows = [results._row(record, now, expires_at) for record in records]
        if rows:
            await self._conn.transaction(lambda conn: conn.executemany(results._SQL_STORE, rows))
            self._wake.notify()

    async def get(self, task_id: str) -> ResultRecord | None:
        rows = await self._conn.run(lambda conn: conn.execute(results._SQL_GET, (task_id,)).fetchall())
        return results._record(rows[0]) if rows else None

    def _listen(self) -> None:
        if self._reading is None:
            listener = self._wake.listener()
            self._reading = listener.sock.fileno()
            asyncio.get_running_loop().add_reader(self._reading, self._woken, listener)

    def _woken(self, listener: Any) -> None:
        listener.drain()
        waiters, self._waiters = self._waiters, set()
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def wait(self, task_id: str, *, timeout_s: float | None, interval_s: float) -> ResultRecord | None:
        """Like ``SQLiteBackend.wait``: the wake socket is watched before the first look,
        so a result stored in between still wakes us; ``interval_s`` caps each wait as
        the safety poll for a lost wake-up."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        cap = max(min(interval_s, SAFETY_POLL_S), 0.001)
        self._listen()
        while True:
            woken: asyncio.Future[None] = loop.create_future()
            self._waiters.add(woken)
            try:
                state = await self._conn.run(
                    lambda conn: conn.execute(results._SQL_STATE, (task_id,)).fetchall()
                )
                if state and state[0][0] in READY_STATES:
                    return await self.get(task_id)
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return await self.get(task_id) if state else None
                try:
                    await asyncio.wait_for(woken, cap if remaining is None else min(cap, remaining))
                except asyncio.TimeoutError:
                    pass
            finally:
                self._waiters.discard(woken)

    async def aclose(self) -> None:
        if self._reading is not None:
            asyncio.get_running_loop().remove_reader(self._reading)
            self._reading = None
        self._wake.close()
        self._conn.close()
