"""The PostgreSQL broker: queues, leases and dead letters in one schema of a database.

Layout (table names are defined once, below; all live in the URL's ``schema``):

- ``messages`` holds waiting, delayed and leased messages. A row is fetchable when
  ``visible_at <= now``: never leased and due (``receipt IS NULL``), or leased by a
  worker whose lease ran out. Fetching is ``SELECT ... FOR UPDATE SKIP LOCKED`` by
  priority (higher first) then id (age), and sets a new receipt token and
  ``visible_at = now + lease_s`` in the same statement, so two consumers never lease
  one row and neither waits for the other's locked rows. A delayed message (eta,
  retry countdown, nack later) is a row with ``receipt IS NULL`` and a future
  ``visible_at``: nothing moves it when it becomes due.
- ``dead_letters``, ``rate_limits`` and ``leases`` back the admin side; ``kv`` and
  ``logs`` (``postgres_store``) the schedules, heartbeats, events and control.

Acked rows are deleted, not flagged, so the tables stay the size of the backlog.

A receipt is ``"<row id>:<token>"``. Every ack/nack/extend matches both, which is what
makes a stale receipt (a lease that ran out and was fetched again by another worker)
do nothing instead of deleting or releasing the other worker's message.

Wake-ups: a publish runs ``pg_notify`` on the queue's channel in its transaction
(delivered at COMMIT); an idle consumer LISTENs on its queues' channels and blocks in
``select()`` until a notification, its next eta or lease end, or its timeout.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

from conveyor._postgres import SAFETY_POLL_S, Database, channel
from conveyor.brokers.base import DeadLetter, Delivery, QueueStats
from conveyor.brokers.postgres_store import STORE_SCHEMA, STORE_TABLES, PostgresStoreMixin
from conveyor.exceptions import BrokerError
from conveyor.message import MAX_PRIORITY, MIN_PRIORITY, Message, decode

if TYPE_CHECKING:
    import psycopg

    from conveyor.backends.postgres import PostgresBackend

MESSAGES = "messages"
DEAD_LETTERS = "dead_letters"
RATE_LIMITS = "rate_limits"
LEASES = "leases"
TABLES = (MESSAGES, DEAD_LETTERS, RATE_LIMITS, LEASES)

SCHEMA = (
    f"""CREATE TABLE IF NOT EXISTS {MESSAGES} (
        id BIGSERIAL PRIMARY KEY,
        queue TEXT NOT NULL,
        priority SMALLINT NOT NULL DEFAULT 0,
        visible_at DOUBLE PRECISION NOT NULL DEFAULT 0,
        receipt TEXT,
        attempts INTEGER NOT NULL DEFAULT 0,
        task_id TEXT,
        body BYTEA NOT NULL
    )""",
    # The fetch walks this in order and skips rows not yet visible (leased, delayed)
    # without visiting the table.
    f"CREATE INDEX IF NOT EXISTS {MESSAGES}_fetch ON {MESSAGES} (queue, priority DESC, id) INCLUDE (visible_at)",
    # The next eta or lease end, for a blocked fetch's timeout, and the stats.
    f"CREATE INDEX IF NOT EXISTS {MESSAGES}_visible ON {MESSAGES} (visible_at) WHERE visible_at > 0",
    f"""CREATE TABLE IF NOT EXISTS {DEAD_LETTERS} (
        id BIGSERIAL PRIMARY KEY,
        queue TEXT NOT NULL,
        priority SMALLINT NOT NULL DEFAULT 0,
        task_id TEXT,
        task_name TEXT,
        reason TEXT NOT NULL,
        failed_at DOUBLE PRECISION NOT NULL,
        body BYTEA NOT NULL
    )""",
    f"CREATE INDEX IF NOT EXISTS {DEAD_LETTERS}_queue ON {DEAD_LETTERS} (queue, id)",
    f"CREATE TABLE IF NOT EXISTS {RATE_LIMITS} (key TEXT PRIMARY KEY, tat DOUBLE PRECISION NOT NULL)",
    f"""CREATE TABLE IF NOT EXISTS {LEASES} (
        name TEXT PRIMARY KEY, owner TEXT NOT NULL, expires_at DOUBLE PRECISION NOT NULL
    )""",
)

_SQL_INSERT = f"""
INSERT INTO {MESSAGES} (queue, priority, visible_at, attempts, task_id, body) VALUES (%s, %s, %s, %s, %s, %s)
"""
# One statement, so a lone publish is one round trip, its NOTIFY sent at its commit.
_SQL_PUBLISH_ONE = f"""
WITH inserted AS (
    INSERT INTO {MESSAGES} (queue, priority, visible_at, attempts, task_id, body)
    VALUES (%s, %s, %s, %s, %s, %s) RETURNING queue
)
SELECT pg_notify(%s, '') FROM inserted
"""
# A bulk publish (map(), a group): one statement, so one round trip and atomic on its
# own; the rows are inserted in the order given (FIFO: ids grow along the array), and
# each queue's channel is notified once, at the commit.
_SQL_PUBLISH_MANY = f"""
WITH inserted AS (
    INSERT INTO {MESSAGES} (queue, priority, visible_at, attempts, task_id, body)
    SELECT m.queue, m.priority, m.visible_at, 0, m.task_id, m.body
    FROM unnest(%(queues)b::text[], %(priorities)b::smallint[], %(visible_at)b::float8[],
                %(task_ids)b::text[], %(bodies)b::bytea[])
         WITH ORDINALITY AS m(queue, priority, visible_at, task_id, body, n)
    ORDER BY m.n
    RETURNING 1
)
SELECT pg_notify(ch, '') FROM unnest(%(channels)s::text[]) AS ch WHERE EXISTS (SELECT 1 FROM inserted)
"""
# SKIP LOCKED: rows another consumer is leasing right now are passed over, not waited for.
_SQL_FETCH = f"""
WITH picked AS (
    SELECT id FROM {MESSAGES} WHERE queue = %s AND visible_at <= %s
    ORDER BY priority DESC, id LIMIT %s FOR UPDATE SKIP LOCKED
)
UPDATE {MESSAGES} m SET receipt = %s, visible_at = %s, attempts = m.attempts + 1
FROM picked WHERE m.id = picked.id
RETURNING m.id, m.priority, m.attempts, m.task_id, m.body
"""
_SQL_NEXT_VISIBLE = f"SELECT MIN(visible_at) FROM {MESSAGES} WHERE visible_at > %s AND queue = ANY(%s)"
_SQL_ACK = f"DELETE FROM {MESSAGES} WHERE id = %s AND receipt = %s"
_SQL_ACK_MANY = (
    f"DELETE FROM {MESSAGES} WHERE (id, receipt) IN (SELECT * FROM unnest(%s::bigint[], %s::text[]))"
)
_SQL_RELEASE = f"""
UPDATE {MESSAGES} SET receipt = NULL, visible_at = %s WHERE id = %s AND receipt = %s RETURNING queue
"""
_SQL_EXTEND = f"""
UPDATE {MESSAGES} SET visible_at = %s
WHERE (id, receipt) IN (SELECT * FROM unnest(%s::bigint[], %s::text[]))
"""

_SQL_STATS = f"""
SELECT queue,
       COUNT(*) FILTER (WHERE visible_at <= %s),
       COUNT(*) FILTER (WHERE visible_at > %s AND receipt IS NOT NULL),
       COUNT(*) FILTER (WHERE visible_at > %s AND receipt IS NULL)
FROM {MESSAGES} GROUP BY queue
"""
_SQL_COUNT_DEAD = f"SELECT queue, COUNT(*) FROM {DEAD_LETTERS} GROUP BY queue"
# Purge spares only live leases: a ran-out lease belongs to a dead worker, so its row is backlog.
_SQL_PURGE_QUEUE = f"DELETE FROM {MESSAGES} WHERE queue = %s AND (receipt IS NULL OR visible_at <= %s)"
_SQL_PURGE_ALL = f"DELETE FROM {MESSAGES} WHERE receipt IS NULL OR visible_at <= %s"

_DLQ_COLUMNS = "id, queue, body, reason, failed_at, task_id, task_name"
_SQL_DLQ_INSERT = f"""
INSERT INTO {DEAD_LETTERS} (queue, priority, task_id, task_name, reason, failed_at, body)
VALUES (%s, %s, %s, %s, %s, %s, %s)
"""
_SQL_DLQ_LIST_ALL = f"SELECT {_DLQ_COLUMNS} FROM {DEAD_LETTERS} ORDER BY id DESC LIMIT %s OFFSET %s"
_SQL_DLQ_LIST_QUEUE = (
    f"SELECT {_DLQ_COLUMNS} FROM {DEAD_LETTERS} WHERE queue = %s ORDER BY id DESC LIMIT %s OFFSET %s"
)
_SQL_DLQ_GET = f"SELECT {_DLQ_COLUMNS} FROM {DEAD_LETTERS} WHERE id = %s"
_SQL_DLQ_TAKE = f"DELETE FROM {DEAD_LETTERS} WHERE id = ANY(%s) RETURNING id, queue, priority, task_id, body"
_SQL_DLQ_TAKE_ALL = f"DELETE FROM {DEAD_LETTERS} RETURNING id, queue, priority, task_id, body"
_SQL_DLQ_DELETE = f"DELETE FROM {DEAD_LETTERS} WHERE id = ANY(%s)"
_SQL_DLQ_DELETE_ALL = f"DELETE FROM {DEAD_LETTERS}"

# GCRA with no burst, as on SQLite: the slot is free when the theoretical arrival time
# (TAT) has passed; taking it moves TAT to now + interval. ON CONFLICT makes it one
# atomic statement across every connection.
_SQL_RATE_TAKE = f"""
INSERT INTO {RATE_LIMITS} (key, tat) VALUES (%s, %s)
ON CONFLICT (key) DO UPDATE SET tat = excluded.tat WHERE {RATE_LIMITS}.tat <= %s
"""
_SQL_RATE_TAT = f"SELECT tat FROM {RATE_LIMITS} WHERE key = %s"
_SQL_LEASE_TAKE = f"""
INSERT INTO {LEASES} (name, owner, expires_at) VALUES (%s, %s, %s)
ON CONFLICT (name) DO UPDATE SET owner = excluded.owner, expires_at = excluded.expires_at
WHERE {LEASES}.owner = excluded.owner OR {LEASES}.expires_at <= %s
"""
_SQL_LEASE_EXPIRE = f"DELETE FROM {LEASES} WHERE expires_at <= %s"
# claim_lease: take a free (or expired) lease; either way, answer with whoever holds it.
_SQL_LEASE_CLAIM = f"""
INSERT INTO {LEASES} (name, owner, expires_at) VALUES (%s, %s, %s)
ON CONFLICT (name) DO UPDATE SET owner = excluded.owner, expires_at = excluded.expires_at
WHERE {LEASES}.expires_at <= %s
"""
_SQL_LEASE_OWNER = f"SELECT owner FROM {LEASES} WHERE name = %s"
_SQL_LEASE_RELEASE = f"DELETE FROM {LEASES} WHERE name = %s AND owner = %s"
_LEASE_SWEEP_EVERY = 100  # acquire_lease calls per sweep: the scheduler claims one lease per run


def _priority(message: Message) -> int:
    return min(MAX_PRIORITY, max(MIN_PRIORITY, int(message.priority)))


def _parse_receipt(receipt: str) -> tuple[int, str]:
    row_id, sep, token = receipt.partition(":")
    if not sep or not row_id.isdigit():
        raise BrokerError(f"receipt {receipt!r} was not issued by the PostgreSQL broker")
    return int(row_id), token


def _receipt_arrays(deliveries: Sequence[Delivery]) -> tuple[list[int], list[str]]:
    pairs = [_parse_receipt(d.receipt) for d in deliveries]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def _describe(body: bytes) -> tuple[str | None, str | None, int]:
    """Task id, name and priority for a dead letter; an undecodable body keeps none."""
    try:
        message = decode(body)
    except Exception:  # the very reason it is being dead-lettered, often
        return None, None, 0
    return message.id, message.task, _priority(message)


def _ids(entry_ids: Sequence[str]) -> list[int]:
    return [int(e) for e in dict.fromkeys(entry_ids) if str(e).isdigit() and int(e) < 2**63]


class PostgresBroker(PostgresStoreMixin):
    """Broker and BrokerAdmin on PostgreSQL (``postgresql://user:pass@host:5432/db?schema=conveyor``).

    Safe to share between threads (one connection each, plus one LISTEN connection
    per blocked thread) and across ``fork()`` (the child opens its own).

    Raises:
        ConfigurationError: the URL is malformed.
        BrokerConnectionError: (on first use) the server cannot be reached.
        BrokerError: (on first use) the schema was made by a newer Conveyor.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self._db = Database(url, schema=SCHEMA + STORE_SCHEMA, tables=TABLES + STORE_TABLES, what="broker")
        self.schema = self._db.schema
        self._init_store()
        self._lease_calls = 0

    def __repr__(self) -> str:
        return f"<PostgresBroker schema={self.schema}>"

    def _channel(self, queue: str) -> str:
        return channel(self.schema, "q", queue)

    # -- producing -------------------------------------------------------------------
    def publish(self, message: Message, *, eta: float | None = None) -> None:
        self.publish_many([message], etas=[message.eta if eta is None else eta])

    def publish_many(
        self, messages: Sequence[Message], *, etas: Sequence[float | None] | None = None
    ) -> None:
        if not messages:
            return
        now = time.time()
        rows: list[tuple[Any, ...]] = []
        for i, message in enumerate(messages):
            eta = message.eta if etas is None else etas[i]
            visible_at = eta if eta is not None and eta > now else 0.0
            rows.append((message.queue, _priority(message), visible_at, 0, message.id, message.encode()))
        if len(rows) == 1:
            self._db.query(_SQL_PUBLISH_ONE, (*rows[0], self._channel(messages[0].queue)))
            return
        # Inside a batch this joins its transaction, and the NOTIFY waits for its commit.
        self._db.query(_SQL_PUBLISH_MANY, self._many(rows))

    def _many(self, rows: list[tuple[Any, ...]]) -> dict[str, Any]:
        return {
            "queues": [row[0] for row in rows],
            "priorities": [row[1] for row in rows],
            "visible_at": [row[2] for row in rows],
            "task_ids": [row[4] for row in rows],
            "bodies": [row[5] for row in rows],
            "channels": list(dict.fromkeys(self._channel(row[0]) for row in rows)),
        }

    # -- consuming -------------------------------------------------------------------
    def fetch(self, queues: Sequence[str], *, limit: int, lease_s: float, timeout_s: float) -> list[Delivery]:
        if limit <= 0 or not queues:
            return []
        queues = list(dict.fromkeys(queues))
        deadline = time.monotonic() + max(timeout_s, 0.0)
        generation = self._db.generation  # before connecting: a wake() meanwhile still counts
        listener = None
        channels = [self._channel(q) for q in queues]
        if timeout_s > 0:
            listener = self._db.listener()
            if not listener.listening >= set(channels):
                # The first wait on these queues: a backlog is served before a LISTEN
                # connection is opened (a worker's start to first task).
                deliveries = self._lease(queues, limit, lease_s, time.time())
                if deliveries:
                    return deliveries
        quiet_key = ("fetch", *queues)
        while True:
            events = 0
            if listener is not None:
                # LISTEN before the attempt: a publish committed between an empty attempt
                # and the wait then leaves a notification instead of being missed. No
                # query unless the connection was lost.
                listener.listen(channels)
                events = listener.drain()
                # Nothing published, released or due since an empty look: look again
                # only when that changes (a repeated idle fetch sends no query).
                quiet_s = listener.quiet_for(quiet_key)
                if quiet_s > 0:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0 or self._db.generation != generation:
                        return []
                    listener.wait(min(remaining, quiet_s))
                    continue
            now = time.time()
            deliveries = self._lease(queues, limit, lease_s, now)
            if deliveries:
                return deliveries
            if listener is None:
                return []
            # Wake for the next eta or the next lease to run out, which nobody
            # publishes about; the floor keeps a clock step from spinning us. Read even
            # when the time is up: the next call then waits without looking first.
            next_due = self._db.query(_SQL_NEXT_VISIBLE, (now, queues), relaxed=True)[0][0]
            listener.mark_quiet(quiet_key, events, due_at=next_due, now=now)
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self._db.generation != generation:
                return []
            pause = min(remaining, SAFETY_POLL_S)
            if next_due is not None:
                pause = min(pause, max(next_due - time.time(), 0.001))
            listener.wait(pause)

    def _lease(self, queues: list[str], limit: int, lease_s: float, now: float) -> list[Delivery]:
        token = secrets.token_hex(8)
        until = now + lease_s
        out: list[Delivery] = []
        for queue in queues:
            # Relaxed: a lease lost with a crashed server only leaves the message fetchable.
            rows = self._db.query(_SQL_FETCH, (queue, now, limit - len(out), token, until), relaxed=True)
            rows.sort(key=lambda row: (-row[1], row[0]))  # RETURNING order is unspecified
            out.extend(
                Delivery(
                    body=bytes(body),
                    queue=queue,
                    receipt=f"{row_id}:{token}",
                    attempt=attempts,
                    message_id=task_id or "",
                )
                for row_id, _, attempts, task_id, body in rows
            )
            if len(out) >= limit:
                break
        return out

    def ack(self, deliveries: Sequence[Delivery]) -> None:
        # Relaxed outside a settle's batch (an early ack): an ack lost with a crashed
        # server brings the message back, and the task runs again (at least once).
        if len(deliveries) == 1:
            self._db.write(_SQL_ACK, _parse_receipt(deliveries[0].receipt), relaxed=True)
        elif deliveries:
            self._db.write(_SQL_ACK_MANY, _receipt_arrays(deliveries), relaxed=True)

    def nack(self, delivery: Delivery, *, retry_at: float | None = None, reason: str = "") -> None:
        row_id, token = _parse_receipt(delivery.receipt)
        visible_at = retry_at if retry_at is not None and retry_at > time.time() else 0.0

        def release(conn: psycopg.Connection[Any]) -> None:
            if conn.execute(_SQL_RELEASE, (visible_at, row_id, token)).fetchone() is not None:
                # Due now, or maybe before the blocked consumers' next planned wake-up.
                self._db.notify(conn, [self._channel(delivery.queue)])

        self._db.transaction(release)

    def dead_letter(self, delivery: Delivery, *, reason: str) -> None:
        row_id, token = _parse_receipt(delivery.receipt)
        task_id, task_name, priority = _describe(delivery.body)
        entry = (delivery.queue, priority, task_id, task_name, reason, time.time(), delivery.body)

        def move(conn: psycopg.Connection[Any]) -> None:
            conn.execute(_SQL_DLQ_INSERT, entry)
            # Matching the receipt: after an ack the row is gone (nothing to delete),
            # and a lease that ran out belongs to whoever fetched it again.
            conn.execute(_SQL_ACK, (row_id, token))

        self._db.transaction(move)

    def extend(self, deliveries: Sequence[Delivery], *, lease_s: float) -> None:
        if deliveries:
            self._db.write(_SQL_EXTEND, (time.time() + lease_s, *_receipt_arrays(deliveries)), relaxed=True)

    def wake(self) -> None:
        self._db.wake_local()

    def batch(self) -> AbstractContextManager[None]:
        """One transaction for the writes that follow in this thread (results included
        when the result backend shares this broker's connections: see ``result_backend``)."""
        return self._db.batch()

    def result_backend(self, *, result_expires_s: float) -> PostgresBackend:
        """The result store in this broker's schema, sharing its connections."""
        from conveyor.backends.postgres import PostgresBackend

        return PostgresBackend(self.url, result_expires_s=result_expires_s, database=self._db)

    def close(self) -> None:
        # Wakes a fetch blocked in another thread first, so it returns instead of
        # waiting on a connection closed under it.
        self._db.close()

    # -- admin -----------------------------------------------------------------------
    def queue_stats(self, queues: Sequence[str] | None = None) -> list[QueueStats]:
        now = time.time()

        def read(conn: psycopg.Connection[Any]) -> tuple[list[Any], list[Any]]:
            counts = conn.execute(_SQL_STATS, (now, now, now)).fetchall()
            return counts, conn.execute(_SQL_COUNT_DEAD).fetchall()

        counts, dead_rows = self._db.transaction(read)  # one snapshot
        by_queue = {row[0]: row[1:] for row in counts}
        dead = dict(dead_rows)
        names = list(queues) if queues is not None else sorted({*by_queue, *dead})
        out = []
        for name in names:
            ready, in_flight, delayed = by_queue.get(name, (0, 0, 0))
            out.append(
                QueueStats(name, ready=ready, in_flight=in_flight, delayed=delayed, dead=dead.get(name, 0))
            )
        return out

    def purge(self, queue: str | None = None) -> int:
        now = time.time()
        if queue is None:
            return self._db.write(_SQL_PURGE_ALL, (now,))
        return self._db.write(_SQL_PURGE_QUEUE, (queue, now))

    def dead_letters(
        self, queue: str | None = None, *, limit: int = 100, offset: int = 0
    ) -> list[DeadLetter]:
        if queue is None:
            rows = self._db.query(_SQL_DLQ_LIST_ALL, (limit, offset))
        else:
            rows = self._db.query(_SQL_DLQ_LIST_QUEUE, (queue, limit, offset))
        return [_dead_letter(row) for row in rows]

    def get_dead_letter(self, entry_id: str) -> DeadLetter | None:
        found = _ids([entry_id])
        if not found:
            return None
        rows = self._db.query(_SQL_DLQ_GET, (found[0],))
        return _dead_letter(rows[0]) if rows else None

    def replay_dead_letters(self, entry_ids: Sequence[str] | None = None) -> int:
        def move(conn: psycopg.Connection[Any]) -> int:
            if entry_ids is None:
                rows = conn.execute(_SQL_DLQ_TAKE_ALL).fetchall()
            else:
                rows = conn.execute(_SQL_DLQ_TAKE, (_ids(entry_ids),)).fetchall()
            rows.sort()  # oldest failure first, as they were queued
            with conn.cursor() as cur:
                cur.executemany(
                    _SQL_INSERT,
                    [(queue, prio, 0.0, 0, task_id, body) for _, queue, prio, task_id, body in rows],
                )
            self._db.notify(conn, [self._channel(row[1]) for row in rows])
            return len(rows)

        return self._db.transaction(move)

    def purge_dead_letters(self, entry_ids: Sequence[str] | None = None) -> int:
        if entry_ids is None:
            return self._db.write(_SQL_DLQ_DELETE_ALL)
        return self._db.write(_SQL_DLQ_DELETE, (_ids(entry_ids),))

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
            # claimed scheduler run would stay in the table for good.
            self._db.write(_SQL_LEASE_EXPIRE, (now,))
        return self._db.write(_SQL_LEASE_TAKE, (name, owner, now + ttl_s, now)) > 0

    def claim_lease(self, name: str, owner: str, ttl_s: float) -> str:
        now = time.time()

        def claim(conn: psycopg.Connection[Any]) -> str:
            conn.execute(_SQL_LEASE_CLAIM, (name, owner, now + ttl_s, now))
            row = conn.execute(_SQL_LEASE_OWNER, (name,)).fetchone()
            return str(row[0]) if row else owner

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
