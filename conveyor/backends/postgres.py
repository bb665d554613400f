"""The PostgreSQL result store: a ``results`` table, by default in the broker's schema.

Values (result, exception, args, kwargs) are stored as JSON, never pickle, like the
SQLite store. Records expire ``result_expires_s`` after their last update;
``store()`` deletes expired rows itself at most once a minute.

Storing a ready record runs ``pg_notify`` on the schema's results channel in the
same transaction, so ``AsyncResult.get()`` (``wait``) blocks on a LISTEN connection
and wakes at the commit, instead of polling.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import psycopg

from conveyor._postgres import QUIET_MAX_S, Database, channel
from conveyor.backends.base import Reply, ResultRecord
from conveyor.serialization import dumps, loads
from conveyor.states import READY_STATES

RESULTS = "results"
CHORDS = "chords"
CHORD_MEMBERS = "chord_members"
TABLES = (RESULTS, CHORDS, CHORD_MEMBERS)
CLEANUP_EVERY_S = 60.0

SCHEMA = (
    f"""CREATE TABLE IF NOT EXISTS {RESULTS} (
        task_id TEXT PRIMARY KEY,
        task TEXT,
        state TEXT NOT NULL,
        result BYTEA,
        exception BYTEA,
        traceback TEXT,
        retries INTEGER NOT NULL DEFAULT 0,
        worker TEXT,
        queue TEXT,
        args BYTEA,
        kwargs BYTEA,
        started_at DOUBLE PRECISION,
        finished_at DOUBLE PRECISION,
        updated_at DOUBLE PRECISION NOT NULL,
        expires_at DOUBLE PRECISION
    )""",
    f"CREATE INDEX IF NOT EXISTS {RESULTS}_expires ON {RESULTS} (expires_at)",
    # A chord's counter, and the members it counted: the primary key is what makes
    # a member that finishes twice (redelivered, retried) count once.
    f"""CREATE TABLE IF NOT EXISTS {CHORDS} (
        chord_id TEXT PRIMARY KEY, done INTEGER NOT NULL, expires_at DOUBLE PRECISION
    )""",
    f"""CREATE TABLE IF NOT EXISTS {CHORD_MEMBERS} (
        chord_id TEXT NOT NULL, task_id TEXT NOT NULL, expires_at DOUBLE PRECISION,
        PRIMARY KEY (chord_id, task_id)
    )""",
)

_COLUMNS = "task_id, task, state, result, exception, traceback, retries, worker, queue, args, kwargs, started_at, finished_at"
_SQL_STORE = f"""
INSERT INTO {RESULTS} ({_COLUMNS}, updated_at, expires_at)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
ON CONFLICT (task_id) DO UPDATE SET
    task = excluded.task, state = excluded.state, result = excluded.result, exception = excluded.exception,
    traceback = excluded.traceback, retries = excluded.retries, worker = excluded.worker,
    queue = excluded.queue, args = excluded.args, kwargs = excluded.kwargs,
    started_at = excluded.started_at, finished_at = excluded.finished_at,
    updated_at = excluded.updated_at, expires_at = excluded.expires_at
"""
# A lone ready record: stored and notified in one round trip.
_SQL_STORE_READY = f"""
WITH stored AS ({_SQL_STORE} RETURNING task_id)
SELECT pg_notify(%s, '') FROM stored
"""
_SQL_GET = f"SELECT {_COLUMNS} FROM {RESULTS} WHERE task_id = %s"
_SQL_GET_MANY = f"SELECT {_COLUMNS} FROM {RESULTS} WHERE task_id = ANY(%s)"
_SQL_FORGET = f"DELETE FROM {RESULTS} WHERE task_id = %s"
_SQL_CLEANUP = f"DELETE FROM {RESULTS} WHERE expires_at <= %s"
_SQL_CHORD_MEMBER = f"""
INSERT INTO {CHORD_MEMBERS} (chord_id, task_id, expires_at) VALUES (%s, %s, %s)
ON CONFLICT (chord_id, task_id) DO NOTHING
"""
_SQL_CHORD_COUNT = f"""
INSERT INTO {CHORDS} (chord_id, done, expires_at) VALUES (%s, 1, %s)
ON CONFLICT (chord_id) DO UPDATE SET done = {CHORDS}.done + 1, expires_at = excluded.expires_at
RETURNING done
"""
_SQL_CHORD_CLEANUP = (
    f"DELETE FROM {CHORDS} WHERE expires_at <= %s",
    f"DELETE FROM {CHORD_MEMBERS} WHERE expires_at <= %s",
)


class PostgresBackend:
    """ResultBackend on PostgreSQL (``postgresql://user:pass@host:5432/db?schema=conveyor``).

    Args:
        url: the postgresql URL; ``schema=`` picks the schema (default ``conveyor``).
        result_expires_s: seconds a record is kept after its last update; 0 keeps it forever.
    """

    def __init__(
        self, url: str, *, result_expires_s: float = 86400.0, database: Database | None = None
    ) -> None:
        self.url = url
        self.result_expires_s = result_expires_s
        if database is None:
            self._db = Database(url, schema=SCHEMA, tables=TABLES, what="result store")
        else:  # the broker's schema: share its connections (PostgresBroker.result_backend)
            database.add_schema(SCHEMA, TABLES)
            self._db = database
        self._owns_db = database is None
        self._channel = channel(self._db.schema, "results")
        self._next_cleanup = 0.0  # monotonic; the first store() cleans up

    def __repr__(self) -> str:
        return f"<PostgresBackend schema={self._db.schema}>"

    def store(self, records: Sequence[ResultRecord]) -> None:
        if not records:
            return
        now = time.time()
        expires_at = now + self.result_expires_s if self.result_expires_s > 0 else None
        rows = [_row(record, now, expires_at) for record in records]
        ready = any(record.state in READY_STATES for record in records)
        if len(rows) == 1:
            if ready:
                self._db.query(_SQL_STORE_READY, (*rows[0], self._channel))
            else:
                self._db.write(_SQL_STORE, rows[0])
        else:
            self._store_many(rows, notify=ready)
        if self.result_expires_s > 0 and time.monotonic() >= self._next_cleanup:
            self._next_cleanup = time.monotonic() + CLEANUP_EVERY_S
            self.cleanup(now=now)

    def _store_many(self, rows: list[tuple[Any, ...]], *, notify: bool) -> None:
        def write(conn: psycopg.Connection[Any]) -> None:
            with conn.cursor() as cur:
                cur.executemany(_SQL_STORE, rows)
            if notify:  # only a ready record ends a wait(); progress updates wake nobody
                self._db.notify(conn, [self._channel])

        self._db.transaction(write)

    def get(self, task_id: str) -> ResultRecord | None:
        rows = self._db.query(_SQL_GET, (task_id,))
        return _record(rows[0]) if rows else None

    def get_many(self, task_ids: Sequence[str]) -> dict[str, ResultRecord]:
        if not task_ids:
            return {}
        rows = self._db.query(_SQL_GET_MANY, (list(task_ids),))
        return {row[0]: _record(row) for row in rows}

    def wait(self, task_id: str, *, timeout_s: float | None, interval_s: float) -> ResultRecord | None:
        """Block on this thread's LISTEN connection until a ready result is stored.

        LISTEN comes before the first check, so a result stored between the check and
        the wait still wakes it; each notification re-reads the record (it may be
        another task's result). Between notifications nothing is read: ``interval_s``
        is not a poll here (as with Celery's Redis backend), only the listener's
        ``QUIET_MAX_S`` re-check is.
        """
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        listener = self._db.listener()
        channels = [self._channel]
        quiet_key = ("result", task_id)
        record = None
        while True:
            listener.listen(channels)  # no query unless the connection was lost
            events = listener.drain()
            quiet_s = listener.quiet_for(quiet_key)
            if not quiet_s:
                record = self.get(task_id)
                if record is not None and record.state in READY_STATES:
                    return record
                listener.mark_quiet(quiet_key, events, due_at=None, now=0.0)
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                # The latest record: a state that is not ready (STARTED, progress) is
                # stored without a notification.
                return self.get(task_id) if quiet_s else record
            cap = quiet_s or QUIET_MAX_S
            listener.wait(cap if remaining is None else min(cap, remaining))

    def forget(self, task_id: str) -> None:
        self._db.write(_SQL_FORGET, (task_id,))

    def count_chord_member(self, chord_id: str, task_id: str, *, size: int) -> Reply[bool]:
        expires_at = time.time() + self.result_expires_s if self.result_expires_s > 0 else None

        def count(conn: psycopg.Connection[Any]) -> bool:
            if conn.execute(_SQL_CHORD_MEMBER, (chord_id, task_id, expires_at)).rowcount == 0:
                return False  # counted before
            row = conn.execute(_SQL_CHORD_COUNT, (chord_id, expires_at)).fetchone()
            # Equal, not at least: a member counted after completion makes it N + 1.
            return row is not None and row[0] == size

        # Inside the broker's batch this joins the transaction that stores the
        # member's result and acks it, so a crash cannot store one without the other.
        joined = self._db.in_batch()
        return Reply.now(self._db.transaction(count), committed=not joined)

    def cleanup(self, *, now: float | None = None) -> int:
        limit = time.time() if now is None else now

        def delete(conn: psycopg.Connection[Any]) -> int:
            for statement in _SQL_CHORD_CLEANUP:
                conn.execute(statement, (limit,))
            return conn.execute(_SQL_CLEANUP, (limit,)).rowcount

        return self._db.transaction(delete)

    def close(self) -> None:
        if self._owns_db:
            self._db.close()


def _json(value: Any) -> bytes | None:
    return None if value is None else dumps(value)


def _row(record: ResultRecord, now: float, expires_at: float | None) -> tuple[Any, ...]:
    return (
        record.task_id,
        record.task,
        record.state,
        dumps(record.result),
        _json(record.exception),
        record.traceback,
        record.retries,
        record.worker,
        record.queue,
        dumps(list(record.args)),
        dumps(dict(record.kwargs)),
        record.started_at,
        record.finished_at,
        now,
        expires_at,
    )


def _record(row: tuple[Any, ...]) -> ResultRecord:
    (
        task_id,
        task,
        state,
        result,
        exception,
        traceback,
        retries,
        worker,
        queue,
        args,
        kwargs,
        started,
        finished,
    ) = row
    return ResultRecord(
        task_id=task_id,
        state=state,
        task=task,
        result=None if result is None else loads(bytes(result)),
        exception=None if exception is None else loads(bytes(exception)),
        traceback=traceback,
        retries=retries,
        worker=worker,
        queue=queue,
        args=[] if args is None else loads(bytes(args)),
        kwargs={} if kwargs is None else loads(bytes(kwargs)),
        started_at=started,
        finished_at=finished,
    )
