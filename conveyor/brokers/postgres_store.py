"""Keyed records and append-only logs in the PostgreSQL broker's schema.

- ``kv`` rows carry an optional ``expires_at``; expired rows read as absent and are
  deleted lazily by the next write to the same namespace.
- ``logs`` ids come from a sequence, and appends to one stream take a transaction-
  level advisory lock on the stream first. Without it two appends could commit in the
  other order than they drew their ids, and a reader that already read "after 41"
  would never see the entry 40 that became visible later.
- A blocked ``log_read`` LISTENs on the stream's own channel: task events arriving
  hundreds of times a second must not wake every worker's control listener. An empty
  read is not repeated until a notification (or the safety poll): an idle worker's
  control loop sends no query.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from conveyor._postgres import SAFETY_POLL_S, Database, channel
from conveyor.brokers.base import check_name, parse_log_id

if TYPE_CHECKING:
    import psycopg

KV = "kv"
LOGS = "logs"
STORE_TABLES = (KV, LOGS)
STORE_SCHEMA = (
    f"""CREATE TABLE IF NOT EXISTS {KV} (
        namespace TEXT NOT NULL, key TEXT NOT NULL, value BYTEA NOT NULL, expires_at DOUBLE PRECISION,
        PRIMARY KEY (namespace, key)
    )""",
    f"""CREATE TABLE IF NOT EXISTS {LOGS} (
        id BIGSERIAL PRIMARY KEY, stream TEXT NOT NULL, ts DOUBLE PRECISION NOT NULL, body BYTEA NOT NULL
    )""",
    f"CREATE INDEX IF NOT EXISTS {LOGS}_stream ON {LOGS} (stream, id)",
)

_SQL_KV_SET = f"""
INSERT INTO {KV} (namespace, key, value, expires_at) VALUES (%s, %s, %s, %s)
ON CONFLICT (namespace, key) DO UPDATE SET value = excluded.value, expires_at = excluded.expires_at
"""
_SQL_KV_GET = (
    f"SELECT value FROM {KV} WHERE namespace = %s AND key = %s AND (expires_at IS NULL OR expires_at > %s)"
)
_SQL_KV_ITEMS = f"""
SELECT key, value FROM {KV} WHERE namespace = %s AND (expires_at IS NULL OR expires_at > %s) ORDER BY key
"""
_SQL_KV_DELETE = (
    f"DELETE FROM {KV} WHERE namespace = %s AND key = %s AND (expires_at IS NULL OR expires_at > %s)"
)
_SQL_KV_EXPIRE = f"DELETE FROM {KV} WHERE namespace = %s AND expires_at <= %s"

# One round trip: the stream's lock (joined in, so it is taken before the first
# id is drawn), the rows in the order given, then the NOTIFY.
_SQL_LOG_APPEND = f"""
WITH locked AS (SELECT pg_advisory_xact_lock(hashtext(%(stream)s))),
appended AS (
    INSERT INTO {LOGS} (stream, ts, body)
    SELECT %(stream)s, %(ts)s, entry.body
    FROM locked, unnest(%(bodies)s::bytea[]) WITH ORDINALITY AS entry(body, n)
    ORDER BY entry.n
    RETURNING id
)
SELECT pg_notify(%(channel)s, '') FROM (SELECT 1 FROM appended LIMIT 1) AS any_row
"""
_SQL_LOG_READ = f"SELECT id, body FROM {LOGS} WHERE stream = %s AND id > %s ORDER BY id LIMIT %s"
_SQL_LOG_TAIL = f"SELECT MAX(id) FROM {LOGS} WHERE stream = %s"
_SQL_LOG_CUTOFF = f"SELECT id FROM {LOGS} WHERE stream = %s ORDER BY id DESC LIMIT 1 OFFSET %s"
_SQL_LOG_TRIM_ID = f"DELETE FROM {LOGS} WHERE stream = %s AND id <= %s"
_SQL_LOG_TRIM_AGE = f"DELETE FROM {LOGS} WHERE stream = %s AND ts < %s"


class PostgresStoreMixin:
    """The kv and log half of ``BrokerAdmin`` for a broker that owns ``_db``."""

    _db: Database
    schema: str

    def _init_store(self) -> None:
        self._appended: dict[str, int] = {}  # stream -> appends since this process last trimmed it

    # -- kv ----------------------------------------------------------------------------
    def kv_set(self, namespace: str, key: str, value: bytes, *, ttl_s: float | None = None) -> None:
        check_name("namespace", namespace)
        now = time.time()
        expires_at = None if ttl_s is None else now + ttl_s

        def put(conn: psycopg.Connection[Any]) -> None:
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
        pending = self._appended.get(stream, 0) + len(entries)
        trim = pending >= max(1, maxlen // 20)
        self._appended[stream] = 0 if trim else pending

        params = {
            "stream": stream,
            "ts": now,
            "bodies": list(entries),
            "channel": channel(self.schema, "log", stream),
        }
        if not trim:
            self._db.query(_SQL_LOG_APPEND, params)  # one statement: atomic on its own
            return

        def append(conn: psycopg.Connection[Any]) -> None:
            conn.execute(_SQL_LOG_APPEND, params)
            cutoff = conn.execute(_SQL_LOG_CUTOFF, (stream, maxlen)).fetchone()
            if cutoff is not None:
                conn.execute(_SQL_LOG_TRIM_ID, (stream, cutoff[0]))

        self._db.transaction(append)

    def log_read(
        self, stream: str, *, after: str = "0", limit: int = 1000, timeout_s: float = 0.0
    ) -> list[tuple[str, bytes]]:
        last = parse_log_id(after)
        if timeout_s <= 0:
            return self._read_log(stream, last, limit)
        generation = self._db.generation
        listener = self._db.listener()
        channels = [channel(self.schema, "log", stream)]
        quiet_key = ("log", stream, last)
        deadline = time.monotonic() + timeout_s
        while True:
            listener.listen(channels)  # no query unless the connection was lost
            events = listener.drain()
            quiet_s = listener.quiet_for(quiet_key)  # no append since an empty read: no query
            if not quiet_s:
                rows = self._read_log(stream, last, limit)  # after LISTEN: no missed append
                if rows:
                    return rows
                listener.mark_quiet(quiet_key, events, due_at=None, now=0.0)
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self._db.generation != generation:
                return []
            listener.wait(min(remaining, quiet_s or SAFETY_POLL_S))

    def _read_log(self, stream: str, last: int, limit: int) -> list[tuple[str, bytes]]:
        rows: list[Any] = self._db.query(_SQL_LOG_READ, (stream, last, limit))
        return [(str(entry_id), bytes(body)) for entry_id, body in rows]

    def log_tail(self, stream: str) -> str:
        newest = self._db.query(_SQL_LOG_TAIL, (stream,))[0][0]
        return "0" if newest is None else str(newest)

    def log_trim(self, stream: str, *, older_than_s: float) -> int:
        return self._db.write(_SQL_LOG_TRIM_AGE, (stream, time.time() - older_than_s))
