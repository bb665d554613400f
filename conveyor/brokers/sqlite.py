"""The embedded broker: one SQLite file shared by every process on the machine.

Layout (table names are defined once, below):

- ``messages`` holds ready and leased messages. A row is fetchable when
  ``visible_at <= now``: either it was never leased (``receipt IS NULL``, visible_at
  0) or its lease ran out because its worker died. Leasing sets a new receipt and
  ``visible_at = now + lease_s`` in one ``UPDATE ... RETURNING``, so two consumers
  can never lease the same row. Invariant: a row with ``receipt IS NULL`` is always
  due; anything for later lives in ``scheduled``.
- ``scheduled`` holds messages with a future eta (countdown, retry, nack later).
  Each fetch moves the due ones into ``messages`` (one indexed MIN(eta) when none is).
- ``dead_letters``, ``rate_limits`` and ``leases`` back the admin side.

A receipt is ``"<row id>:<token>"``; the token is stored in the row. Every
ack/nack/extend matches both, which is what makes a stale receipt (a lease that ran
out and was fetched again by another worker) do nothing instead of deleting or
releasing the other worker's message.
"""

from __future__ import annotations

import secrets
import sqlite3
import time
from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Any

from conveyor._sqlite import SAFETY_POLL_S, Database, WakeChannel
from conveyor.backends.sqlite import SQLiteBackend
from conveyor.brokers.base import DeadLetter, Delivery, QueueStats
from conveyor.brokers.sqlite_store import STORE_SCHEMA, STORE_TABLES, SQLiteStoreMixin
from conveyor.exceptions import BrokerError
from conveyor.message import MAX_PRIORITY, MIN_PRIORITY, Message, decode

MESSAGES = "messages"
SCHEDULED = "scheduled"
DEAD_LETTERS = "dead_letters"
RATE_LIMITS = "rate_limits"
LEASES = "leases"
TABLES = (MESSAGES, SCHEDULED, DEAD_LETTERS, RATE_LIMITS, LEASES)

_PROMOTE_BATCH = 1000  # due scheduled rows moved per fetch, so one fetch never stalls on a backlog

SCHEMA = (
    # No AUTOINCREMENT (it costs a sqlite_sequence write per publish): a new row still
    # gets max(id) + 1, which keeps FIFO, and a reused id cannot fool a stale receipt
    # because the receipt's token must match too.
    f"""CREATE TABLE IF NOT EXISTS {MESSAGES} (
        id INTEGER PRIMARY KEY,
        queue TEXT NOT NULL,
        priority INTEGER NOT NULL DEFAULT 0,
        visible_at REAL NOT NULL DEFAULT 0,
        receipt TEXT,
        attempts INTEGER NOT NULL DEFAULT 0,
        task_id TEXT,
        body BLOB NOT NULL
    )""",
    # visible_at rides along so the fetch scan skips leased rows without a table lookup.
    f"CREATE INDEX IF NOT EXISTS {MESSAGES}_fetch ON {MESSAGES} (queue, priority DESC, id, visible_at)",
    # Only leased rows (few): the next lease to run out, for a blocked fetch's timeout,
    # and the in-flight counts, without scanning the backlog.
    f"CREATE INDEX IF NOT EXISTS {MESSAGES}_leased ON {MESSAGES} (visible_at, queue) WHERE receipt IS NOT NULL",
    f"""CREATE TABLE IF NOT EXISTS {SCHEDULED} (
        id INTEGER PRIMARY KEY,
        queue TEXT NOT NULL,
        priority INTEGER NOT NULL DEFAULT 0,
        eta REAL NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        task_id TEXT,
        body BLOB NOT NULL
    )""",
    f"CREATE INDEX IF NOT EXISTS {SCHEDULED}_eta ON {SCHEDULED} (eta)",
    # AUTOINCREMENT here: entry ids are shown to people ("dlq show 12") and must never
    # come back naming a different entry after a purge.
    f"""CREATE TABLE IF NOT EXISTS {DEAD_LETTERS} (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        queue TEXT NOT NULL,
        priority INTEGER NOT NULL DEFAULT 0,
        task_id TEXT,
        task_name TEXT,
        reason TEXT NOT NULL,
        failed_at REAL NOT NULL,
        body BLOB NOT NULL
    )""",
    f"CREATE INDEX IF NOT EXISTS {DEAD_LETTERS}_queue ON {DEAD_LETTERS} (queue, id)",
    f"CREATE TABLE IF NOT EXISTS {RATE_LIMITS} (key TEXT PRIMARY KEY, tat REAL NOT NULL) WITHOUT ROWID",
    f"""CREATE TABLE IF NOT EXISTS {LEASES} (
        name TEXT PRIMARY KEY, owner TEXT NOT NULL, expires_at REAL NOT NULL
    ) WITHOUT ROWID""",
)

_SQL_INSERT = f"INSERT INTO {MESSAGES} (queue, priority, attempts, task_id, body) VALUES (?, ?, ?, ?, ?)"
_SQL_SCHEDULE = (
    f"INSERT INTO {SCHEDULED} (queue, priority, eta, attempts, task_id, body) VALUES (?, ?, ?, ?, ?, ?)"
)
_SQL_NEXT_ETA = f"SELECT MIN(eta) FROM {SCHEDULED}"
_SQL_TAKE_DUE = f"""
DELETE FROM {SCHEDULED}
WHERE id IN (SELECT id FROM {SCHEDULED} WHERE eta <= ? ORDER BY eta, id LIMIT ?)
RETURNING eta, id, queue, priority, attempts, task_id, body
"""
_SQL_FETCH = f"""
UPDATE {MESSAGES} SET receipt = ?, visible_at = ?, attempts = attempts + 1
WHERE id IN (
    SELECT id FROM {MESSAGES} WHERE queue = ? AND visible_at <= ?
    ORDER BY priority DESC, id LIMIT ?
)
RETURNING id, priority, attempts, task_id, body
"""
_SQL_HAS_DUE = f"SELECT 1 FROM {MESSAGES} WHERE queue = ? AND visible_at <= ? LIMIT 1"
_SQL_NEXT_LEASE_END = f"SELECT MIN(visible_at) FROM {MESSAGES} WHERE receipt IS NOT NULL AND visible_at > ?"
_SQL_ACK = f"DELETE FROM {MESSAGES} WHERE id = ? AND receipt = ?"
_SQL_RELEASE = f"UPDATE {MESSAGES} SET receipt = NULL, visible_at = 0 WHERE id = ? AND receipt = ?"
_SQL_TAKE_LEASED = (
    f"DELETE FROM {MESSAGES} WHERE id = ? AND receipt = ? RETURNING queue, priority, attempts, task_id, body"
)
_SQL_EXTEND = f"UPDATE {MESSAGES} SET visible_at = ? WHERE id = ? AND receipt = ?"

_SQL_COUNT_ALL = f"SELECT queue, COUNT(*) FROM {MESSAGES} GROUP BY queue"
# INDEXED BY: left alone, the planner walks the whole backlog in queue order instead.
_SQL_COUNT_LEASED = f"""
SELECT queue, COUNT(*) FROM {MESSAGES} INDEXED BY {MESSAGES}_leased
WHERE receipt IS NOT NULL AND visible_at > ? GROUP BY queue
"""
# Split at now: a due row counts as ready before a fetch moves it (QueueStats.delayed
# is "in the future"), or `conveyor queues` with no worker running shows it delayed.
_SQL_COUNT_SCHEDULED = f"SELECT queue, SUM(eta > ?), SUM(eta <= ?) FROM {SCHEDULED} GROUP BY queue"
_SQL_COUNT_DEAD = f"SELECT queue, COUNT(*) FROM {DEAD_LETTERS} GROUP BY queue"
# Purge spares only live leases: a ran-out lease belongs to a dead worker, so its row is backlog.
_SQL_PURGE_QUEUE = f"DELETE FROM {MESSAGES} WHERE queue = ? AND (receipt IS NULL OR visible_at <= ?)"
_SQL_PURGE_ALL = f"DELETE FROM {MESSAGES} WHERE receipt IS NULL OR visible_at <= ?"
_SQL_PURGE_SCHEDULED_QUEUE = f"DELETE FROM {SCHEDULED} WHERE queue = ?"
_SQL_PURGE_SCHEDULED_ALL = f"DELETE FROM {SCHEDULED}"

_DLQ_COLUMNS = "id, queue, body, reason, failed_at, task_id, task_name"
_SQL_DLQ_INSERT = f"""
INSERT INTO {DEAD_LETTERS} (queue, priority, task_id, task_name, reason, failed_at, body)
VALUES (?, ?, ?, ?, ?, ?, ?)
"""
_SQL_DLQ_LIST_ALL = f"SELECT {_DLQ_COLUMNS} FROM {DEAD_LETTERS} ORDER BY id DESC LIMIT ? OFFSET ?"
_SQL_DLQ_LIST_QUEUE = (
    f"SELECT {_DLQ_COLUMNS} FROM {DEAD_LETTERS} WHERE queue = ? ORDER BY id DESC LIMIT ? OFFSET ?"
)
_SQL_DLQ_GET = f"SELECT {_DLQ_COLUMNS} FROM {DEAD_LETTERS} WHERE id = ?"
_SQL_DLQ_TAKE_ONE = f"DELETE FROM {DEAD_LETTERS} WHERE id = ? RETURNING id, queue, priority, task_id, body"
_SQL_DLQ_TAKE_ALL = f"DELETE FROM {DEAD_LETTERS} RETURNING id, queue, priority, task_id, body"
_SQL_DLQ_DELETE_ONE = f"DELETE FROM {DEAD_LETTERS} WHERE id = ?"
_SQL_DLQ_DELETE_ALL = f"DELETE FROM {DEAD_LETTERS}"

# GCRA with no burst: the slot is free when the theoretical arrival time (TAT) has
# passed; taking it moves TAT to now + interval. One statement, so it is atomic
# across processes without an explicit transaction.
_SQL_RATE_TAKE = f"""
INSERT INTO {RATE_LIMITS} (key, tat) VALUES (?, ?)
ON CONFLICT (key) DO UPDATE SET tat = excluded.tat WHERE {RATE_LIMITS}.tat <= ?
"""
_SQL_RATE_TAT = f"SELECT tat FROM {RATE_LIMITS} WHERE key = ?"
_SQL_LEASE_TAKE = f"""
INSERT INTO {LEASES} (name, owner, expires_at) VALUES (?, ?, ?)
ON CONFLICT (name) DO UPDATE SET owner = excluded.owner, expires_at = excluded.expires_at
WHERE {LEASES}.owner = excluded.owner OR {LEASES}.expires_at <= ?
"""
_SQL_LEASE_EXPIRE = f"DELETE FROM {LEASES} WHERE expires_at <= ?"
_SQL_LEASE_CLAIM = f"""
INSERT INTO {LEASES} (name, owner, expires_at) VALUES (?, ?, ?)
ON CONFLICT (name) DO UPDATE SET owner = excluded.owner, expires_at = excluded.expires_at
WHERE {LEASES}.expires_at <= ?
"""
_SQL_LEASE_OWNER = f"SELECT owner FROM {LEASES} WHERE name = ?"
_SQL_LEASE_RELEASE = f"DELETE FROM {LEASES} WHERE name = ? AND owner = ?"
_LEASE_SWEEP_EVERY = 100  # acquire_lease calls per sweep: the scheduler claims one lease per run


def _priority(message: Message) -> int:
    return min(MAX_PRIORITY, max(MIN_PRIORITY, int(message.priority)))


def _parse_receipt(receipt: str) -> tuple[int, str]:
    row_id, sep, token = receipt.partition(":")
    if not sep or not row_id.isdigit():
        raise BrokerError(f"receipt {receipt!r} was not issued by the SQLite broker")
    return int(row_id), token


def _describe(body: bytes) -> tuple[str | None, str | None, int]:
    """Task id, name and priority for a dead letter; an undecodable body keeps none."""
    try:
        message = decode(body)
    except Exception:  # the very reason it is being dead-lettered, often
        return None, None, 0
    return message.id, message.task, _priority(message)


class SQLiteBroker(SQLiteStoreMixin):
    """Broker and BrokerAdmin on one SQLite file (``sqlite:///conveyor.sqlite3``).

    Safe to share between threads (one connection each) and to use on both sides of
    a ``fork()`` (the child opens its own connections and wake socket).

    Args:
        url: ``sqlite:///relative.sqlite3`` or ``sqlite:////absolute.sqlite3``, with
            optional ``?synchronous=normal|full`` (full: fsync on every commit, so a
            power cut loses no acknowledged publish; normal: may lose the last ones).

    Raises:
        ConfigurationError: the URL is malformed.
        BrokerConnectionError: (on first use) the file cannot be opened.
    """

    def __init__(self, url: str = "sqlite:///conveyor.sqlite3") -> None:
        self.url = url
        self._db = Database(url, schema=SCHEMA + STORE_SCHEMA, tables=TABLES + STORE_TABLES, what="broker")
        self.path = self._db.path
        self._wake = WakeChannel(self.path)
        self._init_store()
        self._lease_calls = 0

    def __repr__(self) -> str:
        return f"<SQLiteBroker {self.path}>"

    # -- producing -------------------------------------------------------------------
    def publish(self, message: Message, *, eta: float | None = None) -> None:
        if eta is None:
            eta = message.eta
        body = message.encode()
        if eta is not None and eta > time.time():
            self._db.write(_SQL_SCHEDULE, (message.queue, _priority(message), eta, 0, message.id, body))
        else:
            self._db.write(_SQL_INSERT, (message.queue, _priority(message), 0, message.id, body))
        # After the commit, never before: a consumer woken earlier would find nothing
        # and sleep again with the message sitting there.
        self._db.after_commit(self._wake.notify)

    def publish_many(self, messages: Sequence[Message]) -> None:
        if not messages:
            return
        now = time.time()
        ready: list[tuple[Any, ...]] = []
        later: list[tuple[Any, ...]] = []
        for message in messages:
            body = message.encode()
            if message.eta is not None and message.eta > now:
                later.append((message.queue, _priority(message), message.eta, 0, message.id, body))
            else:
                ready.append((message.queue, _priority(message), 0, message.id, body))

        def insert(conn: sqlite3.Connection) -> None:
            if ready:
                conn.executemany(_SQL_INSERT, ready)
            if later:
                conn.executemany(_SQL_SCHEDULE, later)

        self._db.transaction(insert)
        self._db.after_commit(self._wake.notify)

    # -- consuming -------------------------------------------------------------------
    def fetch(self, queues: Sequence[str], *, limit: int, lease_s: float, timeout_s: float) -> list[Delivery]:
        if limit <= 0 or not queues:
            return []
        queues = list(dict.fromkeys(queues))
        deadline = time.monotonic() + max(timeout_s, 0.0)
        # The socket exists before the first attempt: a publish committed between an
        # empty attempt and the wait then leaves a byte behind instead of being missed.
        listener = self._wake.listener() if timeout_s > 0 else None
        generation = self._wake.generation
        while True:
            if listener is not None:
                listener.drain()
            now = time.time()
            deliveries, next_due = self._lease(queues, limit, lease_s, now)
            if deliveries:
                return deliveries
            remaining = deadline - time.monotonic()
            if listener is None or remaining <= 0 or self._wake.generation != generation:
                return []
            pause = min(remaining, SAFETY_POLL_S)
            if next_due is not None:
                # Wake for the next eta or the next lease to run out, which nobody
                # publishes about; the floor keeps a clock step from spinning us.
                pause = min(pause, max(next_due - time.time(), 0.001))
            listener.wait(pause)

    def _lease(
        self, queues: list[str], limit: int, lease_s: float, now: float
    ) -> tuple[list[Delivery], float | None]:
        db = self._db
        next_eta = db.query(_SQL_NEXT_ETA)[0][0]
        if next_eta is not None and next_eta <= now:
            self._promote_due(now)
            next_eta = db.query(_SQL_NEXT_ETA)[0][0]
        token = secrets.token_hex(8)
        until = now + lease_s
        out: list[Delivery] = []
        for queue in queues:
            # A read first: an empty fetch (idle workers, every safety poll) then
            # never takes the write lock that busy workers and producers need.
            if not db.query(_SQL_HAS_DUE, (queue, now)):
                continue
            rows = db.query(_SQL_FETCH, (token, until, queue, now, limit - len(out)), write=True)
            if not rows:
                continue
            rows.sort(key=lambda row: (-row[1], row[0]))  # RETURNING order is unspecified
            out.extend(
                Delivery(
                    # A foreign producer may have stored TEXT; the worker expects bytes.
                    body=body if isinstance(body, bytes) else str(body).encode(),
                    queue=queue,
                    receipt=f"{row_id}:{token}",
                    attempt=attempts,
                    message_id=task_id or "",
                )
                for row_id, _, attempts, task_id, body in rows
            )
            if len(out) >= limit:
                break
        if out:
            return out, None
        next_lease_end = db.query(_SQL_NEXT_LEASE_END, (now,))[0][0]
        candidates = [t for t in (next_eta, next_lease_end) if t is not None]
        return out, min(candidates) if candidates else None

    def _promote_due(self, now: float) -> None:
        def move(conn: sqlite3.Connection) -> None:
            rows = conn.execute(_SQL_TAKE_DUE, (now, _PROMOTE_BATCH)).fetchall()
            rows.sort(key=lambda row: (row[0], row[1]))  # keep eta order within a priority
            conn.executemany(_SQL_INSERT, [row[2:] for row in rows])

        self._db.transaction(move)

    def ack(self, deliveries: Sequence[Delivery]) -> None:
        params = [_parse_receipt(d.receipt) for d in deliveries]
        if len(params) == 1:
            self._db.write(_SQL_ACK, params[0])
        elif params:
            self._db.transaction(lambda conn: conn.executemany(_SQL_ACK, params))

    def nack(self, delivery: Delivery, *, retry_at: float | None = None, reason: str = "") -> None:
        row_id, token = _parse_receipt(delivery.receipt)
        if retry_at is None or retry_at <= time.time():
            self._db.write(_SQL_RELEASE, (row_id, token))
        else:

            def reschedule(conn: sqlite3.Connection) -> None:
                row = conn.execute(_SQL_TAKE_LEASED, (row_id, token)).fetchone()
                if row is not None:  # None: the lease ran out and someone else holds it now
                    queue, priority, attempts, task_id, body = row
                    conn.execute(_SQL_SCHEDULE, (queue, priority, retry_at, attempts, task_id, body))

            self._db.transaction(reschedule)
        # A released message is due now; a rescheduled one may be due before the
        # blocked consumers' next planned wake-up.
        self._db.after_commit(self._wake.notify)

    def dead_letter(self, delivery: Delivery, *, reason: str) -> None:
        row_id, token = _parse_receipt(delivery.receipt)
        task_id, task_name, priority = _describe(delivery.body)
        entry = (delivery.queue, priority, task_id, task_name, reason, time.time(), delivery.body)

        def move(conn: sqlite3.Connection) -> None:
            conn.execute(_SQL_DLQ_INSERT, entry)
            # Matching the receipt: after an ack the row is gone (nothing to delete),
            # and a lease that ran out belongs to whoever fetched it again.
            conn.execute(_SQL_ACK, (row_id, token))

        self._db.transaction(move)

    def extend(self, deliveries: Sequence[Delivery], *, lease_s: float) -> None:
        until = time.time() + lease_s
        params = [(until, *_parse_receipt(d.receipt)) for d in deliveries]
        if len(params) == 1:
            self._db.write(_SQL_EXTEND, params[0])
        elif params:
            self._db.transaction(lambda conn: conn.executemany(_SQL_EXTEND, params))

    def wake(self) -> None:
        self._wake.wake_local()

    def batch(self, *, reply_later: bool = False) -> AbstractContextManager[None]:
        """One transaction for the writes that follow in this thread (results included
        when the result backend shares this file: see ``result_backend``)."""
        return self._db.batch()

    def read_replies(self) -> None:
        """Nothing to wait for: every write here is committed before it returns."""

    def result_backend(self, *, result_expires_s: float) -> SQLiteBackend:
        """The result store in this broker's file, sharing its connections."""
        return SQLiteBackend(self.url, result_expires_s=result_expires_s, database=self._db)

    def close(self) -> None:
        # Wake first: a fetch blocked in another thread returns instead of waiting on a
        # socket closed under it.
        self._wake.wake_local()
        self._wake.close()
        self._close_store()
        self._db.close()

    # -- admin -----------------------------------------------------------------------
    def queue_stats(self, queues: Sequence[str] | None = None) -> list[QueueStats]:
        now = time.time()

        def read(conn: sqlite3.Connection) -> list[dict[str, int]]:
            scheduled = conn.execute(_SQL_COUNT_SCHEDULED, (now, now)).fetchall()
            return [
                dict(conn.execute(_SQL_COUNT_ALL).fetchall()),
                dict(conn.execute(_SQL_COUNT_LEASED, (now,)).fetchall()),
                {queue: later for queue, later, _ in scheduled},
                {queue: due for queue, _, due in scheduled},
                dict(conn.execute(_SQL_COUNT_DEAD).fetchall()),
            ]

        total, leased, later, due, dead = self._db.transaction(read, immediate=False)  # one snapshot
        names = list(queues) if queues is not None else sorted({*total, *later, *dead})
        return [
            QueueStats(
                name=name,
                ready=total.get(name, 0) - leased.get(name, 0) + due.get(name, 0),
                in_flight=leased.get(name, 0),
                delayed=later.get(name, 0),
                dead=dead.get(name, 0),
            )
            for name in names
        ]

    def purge(self, queue: str | None = None) -> int:
        now = time.time()

        def delete(conn: sqlite3.Connection) -> int:
            if queue is None:
                return (
                    conn.execute(_SQL_PURGE_ALL, (now,)).rowcount
                    + conn.execute(_SQL_PURGE_SCHEDULED_ALL).rowcount
                )
            return (
                conn.execute(_SQL_PURGE_QUEUE, (queue, now)).rowcount
                + conn.execute(_SQL_PURGE_SCHEDULED_QUEUE, (queue,)).rowcount
            )

        return self._db.transaction(delete)

    def dead_letters(
        self, queue: str | None = None, *, limit: int = 100, offset: int = 0
    ) -> list[DeadLetter]:
        if queue is None:
            rows = self._db.query(_SQL_DLQ_LIST_ALL, (limit, offset))
        else:
            rows = self._db.query(_SQL_DLQ_LIST_QUEUE, (queue, limit, offset))
        return [_dead_letter(row) for row in rows]

    def get_dead_letter(self, entry_id: str) -> DeadLetter | None:
        if not str(entry_id).isdigit():
            return None
        rows = self._db.query(_SQL_DLQ_GET, (int(entry_id),))
        return _dead_letter(rows[0]) if rows else None

    def replay_dead_letters(self, entry_ids: Sequence[str] | None = None) -> int:
        def move(conn: sqlite3.Connection) -> int:
            if entry_ids is None:
                rows = conn.execute(_SQL_DLQ_TAKE_ALL).fetchall()
            else:
                rows = []
                for entry_id in dict.fromkeys(entry_ids):
                    if str(entry_id).isdigit():
                        rows.extend(conn.execute(_SQL_DLQ_TAKE_ONE, (int(entry_id),)).fetchall())
            rows.sort()  # oldest failure first, as they were queued
            conn.executemany(
                _SQL_INSERT, [(queue, prio, 0, task_id, body) for _, queue, prio, task_id, body in rows]
            )
            return len(rows)

        count = self._db.transaction(move)
        if count:
            self._db.after_commit(self._wake.notify)
        return count

    def purge_dead_letters(self, entry_ids: Sequence[str] | None = None) -> int:
        if entry_ids is None:
            return self._db.write(_SQL_DLQ_DELETE_ALL)
        params = [(int(e),) for e in dict.fromkeys(entry_ids) if str(e).isdigit()]

        def delete(conn: sqlite3.Connection) -> int:
            return sum(conn.execute(_SQL_DLQ_DELETE_ONE, p).rowcount for p in params)

        return self._db.transaction(delete) if params else 0

    def rate_limit_wait(self, key: str, interval_s: float, *, now: float | None = None) -> float:
        if interval_s <= 0:
            return 0.0
        if now is None:
            now = time.time()
        if self._db.write(_SQL_RATE_TAKE, (key, now + interval_s, now)):
            return 0.0
        rows = self._db.query(_SQL_RATE_TAT, (key,))
        # TAT only grows, so it is still in the future; the floor guards a clock step back.
        return max(rows[0][0] - now, 1e-6) if rows else 1e-6

    def acquire_lease(self, name: str, owner: str, ttl_s: float) -> bool:
        now = time.time()
        self._lease_calls += 1
        if self._lease_calls % _LEASE_SWEEP_EVERY == 0:
            # An expired lease is as free as a missing one; without the sweep every
            # claimed scheduler run would stay on disk for good.
            self._db.write(_SQL_LEASE_EXPIRE, (now,))
        return self._db.write(_SQL_LEASE_TAKE, (name, owner, now + ttl_s, now)) > 0

    def claim_lease(self, name: str, owner: str, ttl_s: float) -> str:
        now = time.time()

        def claim(conn: sqlite3.Connection) -> str:
            conn.execute(_SQL_LEASE_CLAIM, (name, owner, now + ttl_s, now))
            return str(conn.execute(_SQL_LEASE_OWNER, (name,)).fetchone()[0])

        return self._db.transaction(claim)

    def release_lease(self, name: str, owner: str) -> None:
        self._db.write(_SQL_LEASE_RELEASE, (name, owner))


def _dead_letter(row: tuple[Any, ...]) -> DeadLetter:
    entry_id, queue, body, reason, failed_at, task_id, task_name = row
    return DeadLetter(
        id=str(entry_id),
        queue=queue,
        body=bytes(body),
        reason=reason,
        failed_at=failed_at,
        task_id=task_id,
        task_name=task_name,
    )
