"""Keyed records and append-only logs in the SQLite broker's file.

Schedules, heartbeats, task events and control messages live next to the queues
so that every process that reaches the broker sees them, with nothing more to run.

- ``kv`` rows carry an optional ``expires_at``; expired rows read as absent and are
  deleted lazily by the next write to the same namespace.
- ``logs`` ids come from AUTOINCREMENT, so an id is never reused after a trim: a
  reader that remembers "after 41" can never skip a new entry that took id 41.
- Trimming to ``maxlen`` goes by the log's own id range, read by every append (two
  index seeks): once the ids span ``maxlen`` plus 5%, the oldest are deleted. Not by
  what one process has appended: a prefork child recycled every 100 tasks never
  wrote enough on its own to trim, and the log grew without bound.
- A blocked ``log_read`` waits on one wake channel per stream: task events arriving
  hundreds of times a second must not wake every worker's control listener.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Sequence
from typing import Any

from conveyor._sqlite import SAFETY_POLL_S, Database, WakeChannel
from conveyor.brokers.base import check_name, parse_log_id

KV = "kv"
LOGS = "logs"
STORE_TABLES = (KV, LOGS)
STORE_SCHEMA = (
    f"""CREATE TABLE IF NOT EXISTS {KV} (
        namespace TEXT NOT NULL, key TEXT NOT NULL, value BLOB NOT NULL, expires_at REAL,
        PRIMARY KEY (namespace, key)
    ) WITHOUT ROWID""",
    f"""CREATE TABLE IF NOT EXISTS {LOGS} (
        id INTEGER PRIMARY KEY AUTOINCREMENT, stream TEXT NOT NULL, ts REAL NOT NULL, body BLOB NOT NULL
    )""",
    f"CREATE INDEX IF NOT EXISTS {LOGS}_stream ON {LOGS} (stream, id)",
)

_SQL_KV_SET = f"INSERT OR REPLACE INTO {KV} (namespace, key, value, expires_at) VALUES (?, ?, ?, ?)"
_SQL_KV_GET = (
    f"SELECT value FROM {KV} WHERE namespace = ? AND key = ? AND (expires_at IS NULL OR expires_at > ?)"
)
_SQL_KV_ITEMS = (
    f"SELECT key, value FROM {KV} WHERE namespace = ? AND (expires_at IS NULL OR expires_at > ?) ORDER BY key"
)
_SQL_KV_DELETE = (
    f"DELETE FROM {KV} WHERE namespace = ? AND key = ? AND (expires_at IS NULL OR expires_at > ?)"
)
_SQL_KV_EXPIRE = f"DELETE FROM {KV} WHERE namespace = ? AND expires_at <= ?"

_SQL_LOG_APPEND = f"INSERT INTO {LOGS} (stream, ts, body) VALUES (?, ?, ?)"
_SQL_LOG_READ = f"SELECT id, body FROM {LOGS} WHERE stream = ? AND id > ? ORDER BY id LIMIT ?"
_SQL_LOG_TAIL = f"SELECT MAX(id) FROM {LOGS} WHERE stream = ?"
_SQL_LOG_OLDEST = f"SELECT MIN(id) FROM {LOGS} WHERE stream = ?"
_SQL_LOG_NEWEST = "SELECT last_insert_rowid()"
_SQL_LOG_TRIM_ID = f"DELETE FROM {LOGS} WHERE stream = ? AND id <= ?"
_SQL_LOG_TRIM_AGE = f"DELETE FROM {LOGS} WHERE stream = ? AND ts < ?"
_SQL_LOG_OLDEST_TS = f"SELECT ts FROM {LOGS} WHERE stream = ? ORDER BY id LIMIT 1"


class SQLiteStoreMixin:
    """The kv and log half of ``BrokerAdmin`` for a broker that owns ``_db``."""

    _db: Database
    path: str

    def _init_store(self) -> None:
        self._log_wakes: dict[str, WakeChannel] = {}
        self._log_wakes_lock = threading.Lock()

    def _log_wake(self, stream: str) -> WakeChannel:
        with self._log_wakes_lock:
            channel = self._log_wakes.get(stream)
            if channel is None:
                channel = self._log_wakes[stream] = WakeChannel(f"{self.path}-log-{stream.replace(':', '_')}")
            return channel

    def _close_store(self) -> None:
        with self._log_wakes_lock:
            channels = list(self._log_wakes.values())
            self._log_wakes.clear()
        for channel in channels:
            channel.wake_local()
            channel.close()

    # -- kv ----------------------------------------------------------------------------
    def kv_set(self, namespace: str, key: str, value: bytes, *, ttl_s: float | None = None) -> None:
        check_name("namespace", namespace)
        now = time.time()
        expires_at = None if ttl_s is None else now + ttl_s

        def put(conn: sqlite3.Connection) -> None:
            conn.execute(_SQL_KV_EXPIRE, (namespace, now))
            conn.execute(_SQL_KV_SET, (namespace, key, value, expires_at))

        self._db.transaction(put)

    def kv_get(self, namespace: str, key: str) -> bytes | None:
        rows = self._db.query(_SQL_KV_GET, (namespace, key, time.time()))
        return bytes(rows[0][0]) if rows else None

    def kv_items(self, namespace: str) -> dict[str, bytes]:
        return {key: bytes(value) for key, value in self._db.query(_SQL_KV_ITEMS, (namespace, time.time()))}

    def kv_delete(self, namespace: str, key: str) -> bool:
        return self._db.write(_SQL_KV_DELETE, (namespace, key, time.time())) > 0

    # -- logs --------------------------------------------------------------------------
    def log_append(self, stream: str, entries: Sequence[bytes], *, maxlen: int) -> None:
        if not entries:
            return
        check_name("stream", stream)
        now = time.time()
        maxlen = max(1, int(maxlen))
        slack = max(1, maxlen // 20)  # trim in steps, not one row per append

        def append(conn: sqlite3.Connection) -> None:
            conn.executemany(_SQL_LOG_APPEND, [(stream, now, body) for body in entries])
            newest = conn.execute(_SQL_LOG_NEWEST).fetchone()[0]
            oldest = conn.execute(_SQL_LOG_OLDEST, (stream,)).fetchone()[0]
            # Ids are shared by every stream, so the span can only overstate this
            # stream's length: what is kept is never more than maxlen entries.
            if oldest is not None and newest - oldest >= maxlen + slack:
                conn.execute(_SQL_LOG_TRIM_ID, (stream, newest - maxlen))

        self._db.transaction(append)
        self._db.after_commit(self._log_wake(stream).notify)

    def log_read(
        self, stream: str, *, after: str = "0", limit: int = 1000, timeout_s: float = 0.0
    ) -> list[tuple[str, bytes]]:
        last = parse_log_id(after)
        rows = self._read_log(stream, last, limit)
        if rows or timeout_s <= 0:
            return rows
        channel = self._log_wake(stream)
        listener = channel.listener()
        generation = channel.generation
        deadline = time.monotonic() + timeout_s
        while True:
            listener.drain()
            rows = self._read_log(stream, last, limit)  # after the socket exists: no missed append
            remaining = deadline - time.monotonic()
            if rows or remaining <= 0 or channel.generation != generation:
                return rows
            listener.wait(min(remaining, SAFETY_POLL_S))

    def _read_log(self, stream: str, last: int, limit: int) -> list[tuple[str, bytes]]:
        rows: list[Any] = self._db.query(_SQL_LOG_READ, (stream, last, limit))
        return [(str(entry_id), bytes(body)) for entry_id, body in rows]

    def log_tail(self, stream: str) -> str:
        newest = self._db.query(_SQL_LOG_TAIL, (stream,))[0][0]
        return "0" if newest is None else str(newest)

    def log_trim(self, stream: str, *, older_than_s: float) -> int:
        cutoff = time.time() - older_than_s
        # The age trim scans the stream (ts has no index); every reader and worker asks
        # once a minute, so first look at the oldest entry: usually nothing has expired.
        oldest = self._db.query(_SQL_LOG_OLDEST_TS, (stream,))
        if not oldest or oldest[0][0] >= cutoff:
            return 0
        return self._db.write(_SQL_LOG_TRIM_AGE, (stream, cutoff))
