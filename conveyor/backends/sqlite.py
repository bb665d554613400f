"""The embedded result store: a ``results`` table, by default in the broker's file.

Values (result, exception, args, kwargs) are stored as JSON, never pickle, for the
same reason messages are (``serialization``'s docstring). Records expire
``result_expires_s`` after their last update (DESIGN.md, "Results"); ``store()``
deletes expired rows itself at most once a minute, so no separate cleaner is needed.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence
from typing import Any

from conveyor._sqlite import SAFETY_POLL_S, Database, WakeChannel
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
        result BLOB,
        exception BLOB,
        traceback TEXT,
        retries INTEGER NOT NULL DEFAULT 0,
        worker TEXT,
        queue TEXT,
        args BLOB,
        kwargs BLOB,
        started_at REAL,
        finished_at REAL,
        updated_at REAL NOT NULL,
        expires_at REAL
    ) WITHOUT ROWID""",
    f"CREATE INDEX IF NOT EXISTS {RESULTS}_expires ON {RESULTS} (expires_at)",
    # A chord's counter, and the members it counted: the primary key is what makes
    # a member that finishes twice (redelivered, retried) count once.
    f"""CREATE TABLE IF NOT EXISTS {CHORDS} (
        chord_id TEXT PRIMARY KEY, done INTEGER NOT NULL, expires_at REAL
    ) WITHOUT ROWID""",
    f"""CREATE TABLE IF NOT EXISTS {CHORD_MEMBERS} (
        chord_id TEXT NOT NULL, task_id TEXT NOT NULL, expires_at REAL, PRIMARY KEY (chord_id, task_id)
    ) WITHOUT ROWID""",
)

_COLUMNS = "task_id, task, state, result, exception, traceback, retries, worker, queue, args, kwargs, started_at, finished_at"
_SQL_STORE = f"""
INSERT OR REPLACE INTO {RESULTS} ({_COLUMNS}, updated_at, expires_at)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
"""
_SQL_GET = f"SELECT {_COLUMNS} FROM {RESULTS} WHERE task_id = ?"
_SQL_GET_MANY = f"SELECT {_COLUMNS} FROM {RESULTS} WHERE task_id IN (SELECT value FROM json_each(?))"
_SQL_STATE = f"SELECT state FROM {RESULTS} WHERE task_id = ?"
_SQL_FORGET = f"DELETE FROM {RESULTS} WHERE task_id = ?"
_SQL_CLEANUP = f"DELETE FROM {RESULTS} WHERE expires_at <= ?"
_SQL_CHORD_MEMBER = f"INSERT OR IGNORE INTO {CHORD_MEMBERS} (chord_id, task_id, expires_at) VALUES (?, ?, ?)"
_SQL_CHORD_COUNT = f"""
INSERT INTO {CHORDS} (chord_id, done, expires_at) VALUES (?, 1, ?)
ON CONFLICT (chord_id) DO UPDATE SET done = done + 1, expires_at = excluded.expires_at
RETURNING done
"""
_SQL_CHORD_CLEANUP = (
    f"DELETE FROM {CHORDS} WHERE expires_at <= ?",
    f"DELETE FROM {CHORD_MEMBERS} WHERE expires_at <= ?",
)


class SQLiteBackend:
    """ResultBackend on an SQLite file, safe for many processes on one machine.

    Args:
        url: ``sqlite:///relative.sqlite3`` or ``sqlite:////absolute.sqlite3``.
        result_expires_s: seconds a record is kept after its last update; 0 keeps it forever.
    """

    def __init__(
        self,
        url: str = "sqlite:///conveyor.sqlite3",
        *,
        result_expires_s: float = 86400.0,
        database: Database | None = None,
    ) -> None:
        self.url = url
        self.result_expires_s = result_expires_s
        if database is None:
            self._db = Database(url, schema=SCHEMA, tables=TABLES, what="result store")
        else:  # the broker's file: share its connections (SQLiteBroker.result_backend)
            database.add_schema(SCHEMA, TABLES)
            self._db = database
        self._owns_db = database is None
        self.path = self._db.path
        # Waiters get a wake-up when results are stored, through the same socket
        # mechanism the broker uses for consumers (a separate directory, so storing a
        # result never wakes a fetch and publishing never wakes a get()).
        self._wake = WakeChannel(self.path + "-results")
        self._next_cleanup = 0.0  # monotonic; the first store() cleans up

    def __repr__(self) -> str:
        return f"<SQLiteBackend {self.path}>"

    def store(self, records: Sequence[ResultRecord]) -> None:
        if not records:
            return
        now = time.time()
        expires_at = now + self.result_expires_s if self.result_expires_s > 0 else None
        rows = [_row(record, now, expires_at) for record in records]  # encode before locking
        if len(rows) == 1:
            self._db.write(_SQL_STORE, rows[0])
        else:
            self._db.transaction(lambda conn: conn.executemany(_SQL_STORE, rows))
        self._db.after_commit(self._wake.notify)
        if self.result_expires_s > 0 and time.monotonic() >= self._next_cleanup:
            self._next_cleanup = time.monotonic() + CLEANUP_EVERY_S
            self.cleanup(now=now)

    def get(self, task_id: str) -> ResultRecord | None:
        rows = self._db.query(_SQL_GET, (task_id,))
        return _record(rows[0]) if rows else None

    def get_many(self, task_ids: Sequence[str]) -> dict[str, ResultRecord]:
        if not task_ids:
            return {}
        rows = self._db.query(_SQL_GET_MANY, (dumps(list(task_ids)).decode(),))
        return {row[0]: _record(row) for row in rows}

    def wait(self, task_id: str, *, timeout_s: float | None, interval_s: float) -> ResultRecord | None:
        """Block on this thread's wake socket until a store() anywhere wakes it.

        The socket is bound before the first check, so a result stored between the
        check and the wait still wakes it; each wake-up re-reads the state (it may be
        another task's result). ``interval_s`` caps each wait, as the safety poll for
        a lost wake-up.
        """
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        listener = self._wake.listener()
        cap = max(min(interval_s, SAFETY_POLL_S), 0.001)
        while True:
            listener.drain()
            state = self._db.query(_SQL_STATE, (task_id,))
            if state and state[0][0] in READY_STATES:
                return self.get(task_id)
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return self.get(task_id) if state else None
            listener.wait(cap if remaining is None else min(cap, remaining))

    def forget(self, task_id: str) -> None:
        self._db.write(_SQL_FORGET, (task_id,))

    def count_chord_member(self, chord_id: str, task_id: str, *, size: int) -> Reply[bool]:
        expires_at = time.time() + self.result_expires_s if self.result_expires_s > 0 else None

        def count(conn: sqlite3.Connection) -> bool:
            if conn.execute(_SQL_CHORD_MEMBER, (chord_id, task_id, expires_at)).rowcount == 0:
                return False  # counted before
            done: int = conn.execute(_SQL_CHORD_COUNT, (chord_id, expires_at)).fetchone()[0]
            # Equal, not at least: a member counted after completion makes it N + 1.
            return done == size

        # Inside the broker's batch (one file) this joins the transaction that stores
        # the member's result and acks it, so a crash cannot store one without the other.
        joined = self._db._in_batch()
        return Reply.now(self._db.transaction(count), committed=not joined)

    def cleanup(self, *, now: float | None = None) -> int:
        limit = time.time() if now is None else now

        def delete(conn: sqlite3.Connection) -> int:
            for sql in _SQL_CHORD_CLEANUP:
                conn.execute(sql, (limit,))
            return conn.execute(_SQL_CLEANUP, (limit,)).rowcount

        return self._db.transaction(delete)

    def close(self) -> None:
        self._wake.close()
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


def _record(row: sqlite3.Row | tuple[Any, ...]) -> ResultRecord:
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
        result=None if result is None else loads(result),
        exception=None if exception is None else loads(exception),
        traceback=traceback,
        retries=retries,
        worker=worker,
        queue=queue,
        args=[] if args is None else loads(args),
        kwargs={} if kwargs is None else loads(kwargs),
        started_at=started,
        finished_at=finished,
    )
