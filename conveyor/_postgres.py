"""PostgreSQL plumbing shared by the PostgreSQL broker and result store.

- ``parse_url``: ``postgresql://user:pass@host:5432/db?schema=conveyor`` (or
  ``postgres://``); ``schema`` picks the schema that holds Conveyor's tables, every
  other query option goes to libpq unchanged.
- ``Database``: connections in autocommit mode from a small per-process pool per URL,
  taken per operation (per batch inside ``batch()``), with ``statement_timeout`` and
  ``idle_in_transaction_session_timeout`` set, so a stuck statement or a crashed
  client's open transaction cannot hold row locks for long. A connection inherited
  through ``fork()`` is never used or closed in the child (the pools start empty
  there): closing it would send a Terminate message down the parent's socket.
  A lost connection is reopened and the operation retried; after ``CONNECT_RETRIES``
  failures it becomes one ``BrokerConnectionError`` line.
- ``batch()``: the thread's following writes share one transaction. NOTIFY inside a
  transaction is delivered by PostgreSQL at COMMIT and dropped on ROLLBACK, so a
  consumer is never woken to read rows that are not there yet.
- ``Listener``: a second connection per thread that LISTENs; a blocked fetch waits in
  ``select()`` on its socket and on a pipe that ``wake_local()`` writes to. It also
  remembers checks that found nothing, so a waiting caller asks again only after a
  notification, a poke, a reconnect, a known due time or ``QUIET_MAX_S``.
- the schema: created at first use, under an advisory lock, with its version in
  ``schema_version``; a newer version than this code knows is refused.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import select
import threading
import time
import weakref
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import psycopg
from psycopg import sql

from conveyor.brokers.base import mask_url
from conveyor.exceptions import BrokerConnectionError, BrokerError, ConfigurationError

T = TypeVar("T")

SCHEMA_VERSION = 1
DEFAULT_SCHEMA = "conveyor"
STATEMENT_TIMEOUT_MS = 30_000
IDLE_IN_TRANSACTION_TIMEOUT_MS = 60_000
CONNECT_TIMEOUT_S = 10
CONNECT_RETRIES = 3
POOL_IDLE_MAX = 8  # idle connections kept per process and URL
SAFETY_POLL_S = 5.0  # a wait's longest stretch: a LISTEN connection lost in it is reopened after
# An empty check is trusted this long without a notification. What becomes visible
# unannounced (a lease taken by another consumer just after our look, whose owner
# then dies; a row inserted by hand) is seen this late at worst. Lost notifications
# are not its job: a dropped LISTEN connection wakes the wait and ends the spell.
QUIET_MAX_S = 30.0
_CHANNEL_MAX = 63  # NAMEDATALEN - 1: longer channel names are refused by pg_notify
_DDL_LOCK = 0x636F6E76  # advisory lock id ("conv") serialising schema creation

VERSION_TABLE = "schema_version"
_SQL_VERSION_TABLE = f"CREATE TABLE IF NOT EXISTS {VERSION_TABLE} (version INTEGER NOT NULL)"
_SQL_GET_VERSION = f"SELECT MAX(version) FROM {VERSION_TABLE}"
_SQL_SET_VERSION = f"INSERT INTO {VERSION_TABLE} (version) VALUES (%s)"
_SQL_DDL_LOCK = "SELECT pg_advisory_xact_lock(%s)"
_SQL_SCHEMA_EXISTS = "SELECT 1 FROM pg_namespace WHERE nspname = %s"
_SQL_TABLES = "SELECT tablename FROM pg_tables WHERE schemaname = %s"
_SQL_NOTIFY = "SELECT pg_notify(%s, '')"
_SQL_RELAX_COMMIT = "SET LOCAL synchronous_commit TO off"

_abandoned: list[Any] = []  # connections inherited through fork: referenced forever, never closed
_checked_schemas: set[tuple[str, str, frozenset[str]]] = set()  # (conninfo, schema, tables) found ready
_inherited_schemas: frozenset[tuple[str, str, frozenset[str]]] = frozenset()  # the parent's, at fork
_databases: weakref.WeakSet[Database] = weakref.WeakSet()


_SYNCHRONOUS_COMMIT = ("on", "off", "local", "remote_write", "remote_apply")
DEFAULT_PREPARE_THRESHOLD = 5  # psycopg's own default


@dataclass(frozen=True, slots=True)
class PostgresURL:
    conninfo: str  # the URL minus Conveyor's own options, for libpq
    schema: str
    synchronous_commit: str | None  # None: the server's (or role's, database's) setting
    prepare_threshold: int | None  # psycopg's: executions before a statement is prepared; None: never
    options: str  # the URL's own libpq ``options`` (``-c name=value ...``), sent after Conveyor's
    connect_timeout: int  # seconds, the URL's or CONNECT_TIMEOUT_S


def parse_url(url: str) -> PostgresURL:
    """Split off Conveyor's options (``schema``, ``synchronous_commit``,
    ``prepare_threshold``) and the two it merges with its own (``options``, sent after
    its session settings; ``connect_timeout``); the rest is a libpq connection URI.

    Raises:
        ConfigurationError: not a postgres URL, a schema name that is not a plain
            identifier, or an option value that cannot be used.
    """
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("postgresql", "postgres"):
        raise ConfigurationError(f"not a postgresql URL: {mask_url(url)}")
    options = parse_qsl(parts.query, keep_blank_values=True)
    schema = DEFAULT_SCHEMA
    synchronous_commit: str | None = None
    prepare_threshold: int | None = DEFAULT_PREPARE_THRESHOLD
    libpq_options: list[str] = []
    connect_timeout = CONNECT_TIMEOUT_S
    rest = []
    for key, value in options:
        if key == "schema":
            schema = value
        elif key == "options":  # merged with Conveyor's session settings, not replaced by them
            libpq_options.append(value.strip())
        elif key == "connect_timeout":
            connect_timeout = _seconds(value)
        elif key == "synchronous_commit":
            synchronous_commit = value.lower()
        elif key == "prepare_threshold":
            prepare_threshold = _threshold(value)
        else:
            rest.append((key, value))
    if synchronous_commit is not None and synchronous_commit not in _SYNCHRONOUS_COMMIT:
        raise ConfigurationError(
            f"postgresql URL option synchronous_commit={synchronous_commit!r} is not one of "
            + ", ".join(_SYNCHRONOUS_COMMIT)
        )
    if not schema.replace("_", "").isalnum() or schema[0].isdigit():
        raise ConfigurationError(
            f"postgresql URL option schema={schema!r} is not a plain identifier: use letters, digits and _"
        )
    conninfo = urlunsplit(("postgresql", parts.netloc, parts.path, urlencode(rest), ""))
    return PostgresURL(
        conninfo=conninfo,
        schema=schema.lower(),
        synchronous_commit=synchronous_commit,
        prepare_threshold=prepare_threshold,
        options=" ".join(o for o in libpq_options if o),
        connect_timeout=connect_timeout,
    )


def _seconds(value: str) -> int:
    try:
        seconds = int(value)
    except ValueError:
        seconds = -1
    if seconds < 0:
        raise ConfigurationError(
            f"postgresql URL option connect_timeout={value!r} is not a whole number of seconds: "
            "use connect_timeout=10, or 0 to wait indefinitely"
        )
    return seconds


def _threshold(value: str) -> int | None:
    if value.lower() in ("none", "off"):
        return None
    if not value.isdigit():
        raise ConfigurationError(
            f"postgresql URL option prepare_threshold={value!r} is not a number or none "
            "(none: never prepare, for PgBouncer before 1.21 in transaction mode)"
        )
    return int(value)


def channel(schema: str, kind: str, name: str = "") -> str:
    """A NOTIFY channel name; hashed when it would be too long to LISTEN on."""
    full = f"{schema}:{kind}:{name}" if name else f"{schema}:{kind}"
    if len(full.encode()) <= _CHANNEL_MAX:
        return full
    return f"{schema}:{kind}#" + hashlib.sha256(full.encode()).hexdigest()[:32]


class _Local(threading.local):
    conn: psycopg.Connection[Any] | None = None  # held by an open batch
    batch: list[Callable[[], None]] | None = None
    durable: bool = False  # the open batch wrote something a task or a result depends on
    listener: Listener | None = None


class _Pool:
    """This process's idle connections to one server with one set of session settings.

    Shared by every ``Database`` of the URL in the process, and taken per operation,
    not per thread: a thread that publishes once (a web request) or a second broker
    object for the same URL then reuses a connection instead of paying for a new one.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.idle: list[psycopg.Connection[Any]] = []
        self.all: weakref.WeakSet[psycopg.Connection[Any]] = weakref.WeakSet()


_pools: dict[tuple[str, str], _Pool] = {}
_pools_lock = threading.Lock()


def _pool(key: tuple[str, str]) -> _Pool:
    with _pools_lock:
        found = _pools.get(key)
        if found is None:
            found = _pools[key] = _Pool()
        return found


class Database:
    """Pooled connections to one PostgreSQL schema, with retries and error translation.

    Args:
        url: the postgresql URL.
        schema: DDL run (idempotently, once per process) in the schema before first use.
        tables: the tables ``schema`` creates; when all exist at this version the DDL is skipped.
        what: "broker" or "result store", for error messages.
    """

    def __init__(self, url: str, *, schema: Sequence[str], tables: Iterable[str], what: str) -> None:
        spec = parse_url(url)
        self.url = url
        self.conninfo = spec.conninfo
        self.schema = spec.schema
        self.prepare_threshold = spec.prepare_threshold
        self.what = what
        self.options = (
            f"-c statement_timeout={STATEMENT_TIMEOUT_MS} "
            f"-c idle_in_transaction_session_timeout={IDLE_IN_TRANSACTION_TIMEOUT_MS} "
            f"-c search_path={self.schema}"
        )
        if spec.synchronous_commit is not None:
            # Only when the URL asks: the server's own setting (on, unless its operator
            # chose otherwise) is what makes a publish that returned survive a crash
            # of the server. "off" trades that for a commit that does not wait for
            # the WAL flush (docs/brokers.md, Durability).
            self.options += f" -c synchronous_commit={spec.synchronous_commit}"
        # Commits whose loss in a server crash only repeats work, never loses a task or
        # a result: a fetch's lease (the message is fetched again), an ack outside a
        # settle (the task runs again: at least once), a lease extension. They skip the
        # wait for the WAL flush; any later durable commit flushes them too. With
        # synchronous_commit in the URL, the URL's choice holds for every commit.
        self.relaxed_options = self.options
        if spec.synchronous_commit is None:
            self.relaxed_options += " -c synchronous_commit=off"
        if spec.options:
            # Last, so that the URL's own settings win (a shorter statement_timeout, say).
            self.options += " " + spec.options
            self.relaxed_options += " " + spec.options
        self.connect_timeout = spec.connect_timeout
        self._ddl = tuple(schema)
        self._tables = frozenset(tables)
        self._schema_ready = False
        self._local = _Local()
        self._lock = threading.Lock()
        self._listeners: weakref.WeakSet[Listener] = weakref.WeakSet()
        self.generation = 0  # bumped by wake_local(): a blocked fetch seeing it change returns
        _databases.add(self)

    def add_schema(self, schema: Sequence[str], tables: Iterable[str]) -> None:
        """Let another store (the results) share these connections, so ``batch()`` covers both."""
        self._ddl = self._ddl + tuple(schema)
        self._tables = self._tables | frozenset(tables)
        self._schema_ready = False

    @property
    def where(self) -> str:
        return f"the PostgreSQL {self.what} {mask_url(self.url)}"

    def _pool(self, relaxed: bool = False) -> _Pool:
        return _pool((self.conninfo, self.relaxed_options if relaxed else self.options))

    # -- connections ---------------------------------------------------------------
    def open(self, relaxed: bool = False) -> psycopg.Connection[Any]:
        """A new autocommit connection with the session settings, outside the pool."""
        try:
            conn = psycopg.connect(
                self.conninfo,
                autocommit=True,
                options=self.relaxed_options if relaxed else self.options,
                connect_timeout=self.connect_timeout,
            )
        except psycopg.Error as exc:
            raise BrokerConnectionError(
                f"cannot connect to {self.where}: {_first_line(exc)}; check the URL and that the server is up"
            ) from None
        conn.prepare_threshold = self.prepare_threshold
        return conn

    def _take(self, relaxed: bool = False) -> psycopg.Connection[Any]:
        pool = self._pool(relaxed)
        conn = None
        with pool.lock:
            while pool.idle and conn is None:
                candidate = pool.idle.pop()
                if not candidate.closed:
                    conn = candidate
        if conn is None:
            conn = self.open(relaxed)
            with pool.lock:
                pool.all.add(conn)
        return conn

    def _prepare(self, conn: psycopg.Connection[Any]) -> None:
        if not self._schema_ready:
            key = (self.conninfo, self.schema, self._tables)
            # A forked child (a prefork pool process) trusts its parent's check: two
            # fewer round trips before each child's first task.
            if key not in _inherited_schemas:
                self._ensure_schema(conn)
                _checked_schemas.add(key)
            self._schema_ready = True

    def _take_retrying(self, relaxed: bool = False) -> psycopg.Connection[Any]:
        for attempt in range(CONNECT_RETRIES):
            try:
                return self._take(relaxed)
            except BrokerConnectionError:
                time.sleep(min(0.1 * 2**attempt, 1.0))
        return self._take(relaxed)

    def _give_back(self, conn: psycopg.Connection[Any], relaxed: bool = False) -> None:
        if conn.closed or conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            with contextlib.suppress(Exception):
                conn.close()
            return
        pool = self._pool(relaxed)
        with pool.lock:
            if len(pool.idle) < POOL_IDLE_MAX:
                pool.idle.append(conn)
                return
        conn.close()

    def schema_version(self) -> int | None:
        """The version recorded in the schema; None when Conveyor has not created it yet."""

        def read(conn: psycopg.Connection[Any]) -> int | None:
            tables = {name for (name,) in conn.execute(_SQL_TABLES, (self.schema,)).fetchall()}
            if VERSION_TABLE not in tables:
                return None
            row = conn.execute(
                sql.SQL("SELECT MAX(version) FROM {}.{}").format(
                    sql.Identifier(self.schema), sql.Identifier(VERSION_TABLE)
                )
            ).fetchone()
            return None if row is None else row[0]

        self._schema_ready = True  # only reading: no DDL on this connection
        try:
            return self.retrying(read)
        finally:
            self._schema_ready = False

    def migrate(self) -> None:
        """Create or upgrade the tables now (what first use does anyway)."""
        self._schema_ready = False
        self.retrying(self._ensure_schema)  # even where a parent's check is inherited

    def _ensure_schema(self, conn: psycopg.Connection[Any]) -> None:
        # Tables all there at this version: no DDL. CREATE INDEX takes a SHARE lock on
        # its table even when the index exists, which deadlocks with the running
        # workers' transactions (seen: a producer starting while workers settle).
        tables = {name for (name,) in conn.execute(_SQL_TABLES, (self.schema,)).fetchall()}
        if self._tables <= tables and VERSION_TABLE in tables:
            version = conn.execute(_SQL_GET_VERSION).fetchone()
            if version is not None and version[0] == SCHEMA_VERSION:
                return
        with conn.transaction():
            # Many processes start at once: without the lock, two CREATE TABLE IF NOT
            # EXISTS can both pass the check and one fails on a duplicate type.
            conn.execute(_SQL_DDL_LOCK, (_DDL_LOCK,))
            if conn.execute(_SQL_SCHEMA_EXISTS, (self.schema,)).fetchone() is None:
                conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(self.schema)))
            conn.execute(_SQL_VERSION_TABLE)
            row = conn.execute(_SQL_GET_VERSION).fetchone()
            version = row[0] if row else None
            if version is not None and version > SCHEMA_VERSION:
                raise BrokerError(
                    f"{self.where} has schema version {version} in schema {self.schema!r}, newer than this "
                    f"Conveyor understands ({SCHEMA_VERSION}): upgrade Conveyor or use another schema"
                )
            for statement in self._ddl:
                conn.execute(statement)
            if version is None:
                conn.execute(_SQL_SET_VERSION, (SCHEMA_VERSION,))

    def retrying(self, body: Callable[[psycopg.Connection[Any]], T], *, relaxed: bool = False) -> T:
        """Run ``body`` on a pooled connection (the batch's inside a batch), reconnecting
        when the connection was lost. ``relaxed``: a connection whose commits do not wait
        for the WAL flush (see ``relaxed_options``; ignored inside a batch).

        A body that fails on a dropped connection is run again on a new one: at
        least once, like every broker write. Inside a batch nothing is retried: the
        transaction is gone, and the caller must see that.
        """
        held = self._local.conn
        if held is not None:
            if not relaxed:
                self._local.durable = True
            try:
                return body(held)
            except psycopg.Error as exc:
                raise self.translate(exc) from None
        for attempt in range(CONNECT_RETRIES + 1):
            conn = self._take_retrying(relaxed)
            try:
                # Inside the try: a pooled connection the server dropped (a restart)
                # fails on its first statement, which may be this one.
                self._prepare(conn)
                return body(conn)
            except psycopg.OperationalError as exc:
                if not conn.closed and not _is_disconnect(exc):
                    raise self.translate(exc) from None
                if attempt == CONNECT_RETRIES:
                    raise BrokerConnectionError(
                        f"lost the connection to {self.where} and could not reconnect "
                        f"({_first_line(exc)}); check that the server is up"
                    ) from None
                time.sleep(min(0.1 * 2**attempt, 1.0))
            except psycopg.Error as exc:
                raise self.translate(exc) from None
            finally:
                self._give_back(conn, relaxed)
        raise AssertionError("unreachable")

    # -- statements --------------------------------------------------------------------
    def query(
        self, statement: str, params: Sequence[Any] | Mapping[str, Any] = (), *, relaxed: bool = False
    ) -> list[Any]:
        """One statement (atomic on its own outside a batch); all its rows."""

        def run(conn: psycopg.Connection[Any]) -> list[Any]:
            cur = conn.execute(statement, params)
            return cur.fetchall() if cur.description is not None else []

        return self.retrying(run, relaxed=relaxed)

    def write(
        self, statement: str, params: Sequence[Any] | Mapping[str, Any] = (), *, relaxed: bool = False
    ) -> int:
        """One statement; the changed row count."""
        return self.retrying(lambda conn: conn.execute(statement, params).rowcount, relaxed=relaxed)

    def transaction(self, body: Callable[[psycopg.Connection[Any]], T]) -> T:
        """Run ``body`` in one transaction (or in the open batch), retried as a whole."""
        if self._local.conn is not None:
            return self.retrying(body)

        def run(conn: psycopg.Connection[Any]) -> T:
            with conn.transaction():
                return body(conn)

        return self.retrying(run)

    def in_batch(self) -> bool:
        return self._local.conn is not None

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """One transaction for this thread's writes until the block ends."""
        local = self._local
        if local.conn is not None:
            yield
            return
        self.retrying(self._prepare)  # connected and ready, a dropped pooled connection replaced
        conn = self._take_retrying()
        after: list[Callable[[], None]] = []
        try:
            # Not pipelined: a pipelined cursor's rowcount is unknown until a sync, so
            # count_chord_member took every repeat for a new member and sent the body
            # before all results were stored (the chord test in test_postgres_faults.py).
            with conn.transaction():
                local.conn, local.batch, local.durable = conn, after, False
                try:
                    yield
                    if not local.durable and self.relaxed_options != self.options:
                        # Only relaxed writes (an early ack alone): their commit need not
                        # wait for the WAL flush either.
                        conn.execute(_SQL_RELAX_COMMIT)
                finally:
                    local.conn = local.batch = None
        except psycopg.Error as exc:
            raise self.translate(exc) from None
        finally:
            self._give_back(conn)
        for callback in after:
            callback()

    def after_commit(self, callback: Callable[[], None]) -> None:
        pending = self._local.batch
        if pending is None:
            callback()
        else:
            pending.append(callback)

    def notify(self, conn: psycopg.Connection[Any], channels: Sequence[str]) -> None:
        """Inside the caller's transaction: sent at COMMIT, dropped on ROLLBACK."""
        for name in dict.fromkeys(channels):
            conn.execute(_SQL_NOTIFY, (name,))

    def translate(self, exc: psycopg.Error) -> BrokerError:
        if isinstance(exc, psycopg.errors.QueryCanceled):
            return BrokerError(
                f"{self.where}: a statement ran past statement_timeout ({STATEMENT_TIMEOUT_MS} ms); "
                "look for long transactions holding locks"
            )
        if isinstance(exc, psycopg.OperationalError):
            return BrokerConnectionError(f"{self.where}: {_first_line(exc)}; check that the server is up")
        return BrokerError(f"{self.where} failed: {_first_line(exc)}")

    # -- wake-ups ------------------------------------------------------------------------
    def listener(self) -> Listener:
        """This thread's LISTEN connection, created on first use."""
        local = self._local
        found = local.listener
        if found is not None and not found.closed:
            return found
        created = Listener(self)
        with self._lock:
            self._listeners.add(created)
        local.listener = created
        return created

    def wake_local(self) -> None:
        """Make blocked waits of this process (on this database) return."""
        self.generation += 1
        with self._lock:
            listeners = list(self._listeners)
        for listener in listeners:
            listener.poke()

    def close(self) -> None:
        """Close this object's LISTEN connections and the URL's idle pooled ones.

        Idle ones too, although another object of the URL may use the pool: it
        reconnects when it needs to, and a process that opens many schemas (tests, a
        multi-tenant app) does not keep a session per schema open on the server.
        """
        self.wake_local()
        with self._lock:
            listeners = list(self._listeners)
            self._listeners = weakref.WeakSet()
        for listener in listeners:
            listener.close()
        for pool in {id(p): p for p in (self._pool(), self._pool(relaxed=True))}.values():
            with pool.lock:
                idle, pool.idle = pool.idle, []
            for conn in idle:
                with contextlib.suppress(Exception):
                    conn.close()
        self._local = _Local()

    def _after_fork(self) -> None:
        # Every listener here is the parent's: keep its connection referenced so it is
        # never finalised (PQfinish would end the parent's session), and start over.
        _abandoned.extend(listener.abandon() for listener in self._listeners)
        self._listeners = weakref.WeakSet()
        self._local = _Local()
        self._lock = threading.Lock()


class Listener:
    """One thread's LISTEN connection plus a pipe other threads poke to wake it."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.pid = os.getpid()
        self.thread = threading.get_ident()
        self.closed = False
        self._channels: set[str] = set()
        self._conn: psycopg.Connection[Any] | None = None
        self.events = 0  # notifications, pokes and reconnects seen: each ends every quiet spell
        self._quiet: dict[Hashable, tuple[int, float]] = {}  # check -> (events, monotonic end)
        self._read_fd, self._write_fd = os.pipe()
        os.set_blocking(self._read_fd, False)
        os.set_blocking(self._write_fd, False)
        # A thread that waited once and ended (a web request waiting on a result) drops
        # its listener unclosed: its connection and pipe must go with it, not leak.
        self._held: list[psycopg.Connection[Any]] = []  # the connection, for the finalizer
        self._release = weakref.finalize(
            self, _release, self._held, (self._read_fd, self._write_fd), self.pid
        )

    @property
    def listening(self) -> frozenset[str]:
        return frozenset(self._channels) if self._conn is not None and not self._conn.closed else frozenset()

    def listen(self, channels: Sequence[str]) -> None:
        """LISTEN on any of ``channels`` not listened to yet; before the check it guards."""
        if self._conn is not None and self._conn.closed:
            self._conn, self._channels = None, set()
        missing = [name for name in channels if name not in self._channels]
        if not missing and self._conn is not None:
            return
        if self._conn is None:
            self._conn = self.db.open()
            self._held[:] = [self._conn]
            self.events += 1  # nothing was heard while there was no connection
        for name in missing:
            try:
                self._conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(name)))
            except psycopg.Error as exc:
                with contextlib.suppress(Exception):
                    self._conn.close()
                self._conn, self._channels = None, set()
                raise self.db.translate(exc) from None
            self._channels.add(name)

    def drain(self) -> int:
        """Forget notifications and pokes that arrived before the check about to run.

        Returns:
            ``events`` after counting them: pass it to ``mark_quiet`` once the check
            found nothing.
        """
        seen = False
        with contextlib.suppress(OSError):
            while os.read(self._read_fd, 512):
                seen = True
        conn = self._conn
        if conn is None or conn.closed:
            return self.events
        try:
            conn.pgconn.consume_input()
            while conn.pgconn.notifies() is not None:
                seen = True
        except psycopg.Error:
            seen = True  # gone: notifications may have been missed
            with contextlib.suppress(Exception):
                conn.close()
        if seen:
            self.events += 1
        return self.events

    def mark_quiet(self, key: Hashable, events: int, *, due_at: float | None, now: float) -> None:
        """The check ``key`` (drained at ``events``) found nothing, and nothing it looks
        for becomes due before ``due_at`` (wall clock, as ``now``) without a notification.

        Until a notification, a poke, a reconnect, ``due_at`` or ``QUIET_MAX_S``, the
        same check would find nothing again: ``quiet_for`` lets the caller skip it, so an
        idle worker's repeated fetches send no query at all.
        """
        until = time.monotonic() + QUIET_MAX_S
        if due_at is not None:
            until = min(until, time.monotonic() + max(due_at - now, 0.0))
        self._quiet[key] = (events, until)

    def quiet_for(self, key: Hashable) -> float:
        """Seconds the check ``key`` stays quiet (see ``mark_quiet``); 0: run it."""
        found = self._quiet.pop(key, None)
        conn = self._conn
        if found is None or found[0] != self.events or conn is None or conn.closed:
            return 0.0
        left = found[1] - time.monotonic()
        if left > 0:
            self._quiet[key] = found
        return max(left, 0.0)

    def wait(self, timeout_s: float) -> None:
        if self.closed:
            return
        fds = [self._read_fd]
        conn = self._conn
        if conn is not None and not conn.closed:
            fds.append(conn.pgconn.socket)
        try:
            select.select(fds, [], [], max(timeout_s, 0.0))
        except (OSError, ValueError):  # closed by close() in another thread
            pass

    def abandon(self) -> psycopg.Connection[Any] | None:
        """In a forked child: the parent's connection, to keep; the pipe is closed."""
        self.closed = True
        conn, self._conn = self._conn, None
        self._held.clear()
        self._release()  # the pipe only
        return conn

    def poke(self) -> None:
        with contextlib.suppress(OSError):
            os.write(self._write_fd, b"\0")

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.poke()
        self._conn = None
        self._release()


def _release(held: list[psycopg.Connection[Any]], fds: tuple[int, int], pid: int) -> None:
    """Close a listener's connection (only in the process that opened it) and pipe."""
    if pid == os.getpid():
        for conn in held:
            with contextlib.suppress(Exception):
                conn.close()
    held.clear()
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


def _after_fork_in_child() -> None:
    global _pools_lock, _inherited_schemas
    _inherited_schemas = _inherited_schemas | _checked_schemas
    # The pools hold the parent's connections: referenced forever, never used here.
    for pool in _pools.values():
        _abandoned.extend(pool.all)
    _pools.clear()
    _pools_lock = threading.Lock()
    for database in list(_databases):
        database._after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _is_disconnect(exc: psycopg.OperationalError) -> bool:
    text = str(exc).lower()
    return any(
        marker in text
        for marker in (
            "server closed",
            "connection",
            "terminating",
            "admin_shutdown",
            "consuming input failed",
        )
    )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
