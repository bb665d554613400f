"""SQLite plumbing shared by the embedded broker and the embedded result store.

Both live in one file (``sqlite:///conveyor.sqlite3`` by default) that many processes
on one machine use at once: workers, their prefork children, producers inside web
servers, the CLI. Three things make that safe, and they live here so the broker and
the result store cannot disagree about them:

- ``Database``: one connection per thread per process, in WAL mode, with a long
  busy timeout and ``BEGIN IMMEDIATE`` writes, so concurrent writers queue up instead
  of failing with "database is locked". A connection inherited through ``fork()`` is
  never used, closed or finalised in the child (SQLite forbids it: closing it there
  can checkpoint or unlock the parent's files).
- ``WakeChannel``: consumers block on a UNIX datagram socket in a directory next to
  the database file and publishers send one byte to each after a commit. That is how
  an idle worker uses no CPU yet picks up a message within milliseconds.
- error translation: ``sqlite3`` errors become one-line ``BrokerError`` messages at
  this boundary and nowhere else.
- every statement runs inside ``_forkguard.guard``, and every connection closes before
  a guarded fork (see conveyor/_forkguard.py): SQLite keeps process-wide lock
  bookkeeping per open file (its "inode" records, the WAL-index lock counts) and
  mutexes, which a child must not inherit from a thread caught inside a statement.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import os
import random
import secrets
import select
import socket
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import parse_qsl, unquote, urlsplit

from conveyor import _forkguard
from conveyor._sqlite_checkpoint import Checkpointer
from conveyor._sqlite_lock import WriteLock
from conveyor.exceptions import BrokerConnectionError, BrokerError, ConfigurationError

T = TypeVar("T")

SCHEMA_VERSION = 1  # PRAGMA user_version of a file holding the current tables
BUSY_TIMEOUT_S = 10.0
WAL_LIMIT_MIB = 16.0  # see _sqlite_checkpoint: the WAL stays near this size under load
LOCKED_RETRIES = 3  # after the busy timeout itself ran out
MIN_SQLITE_VERSION = (3, 35, 0)  # UPDATE/DELETE ... RETURNING
SAFETY_POLL_S = 1.0  # a lost wake-up (socket dir on a different machine, full buffer) costs at most this
_SOCKET_PATH_MAX = 100  # sun_path is 108 bytes on Linux, 104 on macOS

_SQL_SYNCHRONOUS = {"normal": "PRAGMA synchronous = NORMAL", "full": "PRAGMA synchronous = FULL"}
_SQL_GET_JOURNAL_MODE = "PRAGMA journal_mode"
_SQL_SET_WAL = "PRAGMA journal_mode = WAL"
_SQL_GET_VERSION = "PRAGMA user_version"
_SQL_NO_AUTOCHECKPOINT = "PRAGMA wal_autocheckpoint = 0"
_SQL_SET_VERSION = f"PRAGMA user_version = {SCHEMA_VERSION:d}"  # PRAGMA takes no ? parameters
_SQL_TABLES = "SELECT name FROM sqlite_master WHERE type = 'table'"

# Updated in the child after fork, so hot paths compare a global instead of calling getpid().
_pid = os.getpid()
# Connections and sockets inherited through fork: kept referenced forever so they are
# never finalised in the child (sqlite3_close there could checkpoint or unlink the
# parent's WAL). One entry per fork of a process that had used the database.
_abandoned: list[Any] = []
_databases: weakref.WeakSet[Database] = weakref.WeakSet()
_write_locks: dict[str, WriteLock] = {}
_checkpointers: dict[str, Checkpointer] = {}
_channels: weakref.WeakSet[WakeChannel] = weakref.WeakSet()
_owned_sockets: set[str] = set()  # wake socket paths bound by this process, unlinked at exit


def _close_for_fork() -> None:
    # Closed, not just idle: SQLite frees a file's process-wide records only when its
    # last connection in the process closes.
    for database in list(_databases):
        database.close()
    for checkpointer in list(_checkpointers.values()):
        checkpointer.close_connection()


_forkguard.before_fork(_close_for_fork)


@dataclass(frozen=True, slots=True)
class SQLiteURL:
    path: str  # absolute
    synchronous: str  # a key of _SQL_SYNCHRONOUS
    timeout_s: float  # longest wait for the write lock before a clear error
    wal_limit: int  # bytes: past this, the WAL is checkpointed and made to start over


def parse_url(url: str) -> SQLiteURL:
    """Read ``sqlite:///relative.db`` or ``sqlite:////absolute.db`` like SQLAlchemy does.

    The path is made absolute now, so a later ``chdir`` (daemonising, Django's
    autoreloader) cannot silently point the same app at another file.

    Raises:
        ConfigurationError: the URL has a host, no path, or an unknown option.
    """
    parts = urlsplit(url)
    if parts.scheme.lower() != "sqlite":
        raise ConfigurationError(f"not a sqlite URL: {url!r}")
    if parts.netloc:
        raise ConfigurationError(
            f"sqlite URLs have no host ({url!r}): use sqlite:///relative/path.sqlite3 or sqlite:////absolute/path.sqlite3"
        )
    path = unquote(parts.path)[1:]  # "/rel.db" -> "rel.db", "//abs.db" -> "/abs.db"
    if not path or path == ":memory:":
        raise ConfigurationError(
            f"{url!r} names no database file: use sqlite:///conveyor.sqlite3 (an in-memory database "
            "cannot be shared between processes; use memory:// in tests)"
        )
    options = dict(parse_qsl(parts.query))
    synchronous = options.pop("synchronous", "normal").lower()
    if synchronous not in _SQL_SYNCHRONOUS:
        raise ConfigurationError(f"sqlite URL option synchronous={synchronous!r} is not one of normal, full")
    timeout_s = _positive(url, "timeout", options.pop("timeout", None), BUSY_TIMEOUT_S)
    wal_limit_mib = _positive(url, "wal_limit_mib", options.pop("wal_limit_mib", None), WAL_LIMIT_MIB)
    if options:
        raise ConfigurationError(
            f"unknown sqlite URL option(s) {', '.join(sorted(options))}: "
            "only synchronous=, timeout= and wal_limit_mib="
        )
    return SQLiteURL(
        path=os.path.abspath(path),
        synchronous=synchronous,
        timeout_s=timeout_s,
        wal_limit=int(wal_limit_mib * 1024 * 1024),
    )


def _positive(url: str, name: str, text: str | None, default: float) -> float:
    if text is None:
        return default
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value < float("inf"):
        raise ConfigurationError(f"sqlite URL option {name}={text!r} in {url!r} is not a number > 0")
    return value


def same_file(url: str, other: str) -> bool:
    """Whether two sqlite URLs name one database file, however each is spelled.

    Relative or absolute, ``./`` or ``..`` segments, a symlinked directory, URL
    options: all compare by the file they open.
    """
    return os.path.realpath(parse_url(url).path) == os.path.realpath(parse_url(other).path)


def _is_locked(exc: sqlite3.OperationalError) -> bool:
    text = str(exc)
    return "locked" in text or "busy" in text


class Database:
    """Per-thread connections to one SQLite file, with retries and error translation.

    Args:
        url: the sqlite URL.
        schema: DDL run (idempotently) the first time this process opens the file.
        tables: the tables ``schema`` creates; when all exist the DDL is skipped, so an
            ordinary connect takes no write lock.
        what: "broker" or "result store", for error messages.
    """

    def __init__(self, url: str, *, schema: Sequence[str], tables: Iterable[str], what: str) -> None:
        if sqlite3.sqlite_version_info < MIN_SQLITE_VERSION:
            raise ConfigurationError(
                f"the SQLite {what} needs SQLite >= 3.35 (this Python has {sqlite3.sqlite_version}): "
                "use a newer Python build or the Redis broker"
            )
        spec = parse_url(url)
        self.url = url
        self.path = spec.path
        self.what = what
        self._sql_synchronous = _SQL_SYNCHRONOUS[spec.synchronous]
        self.timeout_s = spec.timeout_s
        self.wal_limit = spec.wal_limit
        self._schema = tuple(schema)
        self._tables = frozenset(tables)
        self._schema_ready = False
        self._local = threading.local()
        self._lock = threading.Lock()
        # Every connection this process opened, with the thread that owns it, so that
        # close() reaches other threads' connections and dead threads' ones get closed.
        self._conns: list[tuple[threading.Thread, sqlite3.Connection]] = []
        _databases.add(self)

    def add_schema(self, schema: Sequence[str], tables: Iterable[str]) -> None:
        """Let another store (the results) share this file and its connections.

        Sharing one connection per thread is what lets ``batch()`` write a task's
        result and its ack in one transaction, and keeps one store's writes from
        invalidating the other's page cache.
        """
        self._schema = self._schema + tuple(schema)
        self._tables = self._tables | frozenset(tables)
        self._schema_ready = False
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None:
            with _forkguard.guard:
                self.retrying(lambda: self._ensure_schema(conn))
            self._schema_ready = True

    # -- connections ---------------------------------------------------------------
    def connection(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        return conn if conn is not None else self._connect()

    def _connect(self) -> sqlite3.Connection:
        directory = os.path.dirname(self.path)
        if not os.path.isdir(directory):
            raise BrokerConnectionError(
                f"cannot open the SQLite {self.what} {self.path}: directory {directory} does not exist; "
                "create it or point the URL at another path"
            )
        conn = self.retrying(self._open)
        current = threading.current_thread()
        with self._lock:
            alive = []
            for thread, other in self._conns:
                if thread.is_alive():
                    alive.append((thread, other))
                else:  # a thread that used us and ended: its connection would leak otherwise
                    other.close()
            alive.append((current, conn))
            self._conns = alive
        self._local.conn = conn
        return conn

    def _open(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self.path,
            timeout=self.timeout_s,
            isolation_level=None,  # we issue BEGIN IMMEDIATE ourselves
            check_same_thread=False,  # only so close() may close it from another thread
        )
        try:
            if conn.execute(_SQL_GET_JOURNAL_MODE).fetchone()[0].lower() != "wal":
                mode = conn.execute(_SQL_SET_WAL).fetchone()[0]
                if str(mode).lower() != "wal":
                    raise BrokerConnectionError(
                        f"the SQLite {self.what} {self.path} cannot use WAL mode (journal mode stays {mode!r}; "
                        "a network file system?): put the database on a local disk"
                    )
            conn.execute(self._sql_synchronous)
            # Checkpoints run in a background thread (_sqlite_checkpoint), not inside a
            # writer's COMMIT, where they held every other writer up for milliseconds.
            conn.execute(_SQL_NO_AUTOCHECKPOINT)
            # Kept under wal_limit so that the file's size tells the checkpointer how
            # full the WAL is; a quarter: a rewound WAL seldom needs to regrow the file.
            conn.execute(f"PRAGMA journal_size_limit = {self.wal_limit // 4:d}")
            if not self._schema_ready:
                self._ensure_schema(conn)
                self._schema_ready = True
        except BaseException:
            conn.close()
            raise
        return conn

    def _ensure_schema(self, conn: sqlite3.Connection) -> None:
        version = conn.execute(_SQL_GET_VERSION).fetchone()[0]
        if version > SCHEMA_VERSION:
            raise BrokerError(
                f"the SQLite {self.what} {self.path} has schema version {version}, newer than this "
                f"Conveyor understands ({SCHEMA_VERSION}): upgrade Conveyor or use another file"
            )
        existing = {row[0] for row in conn.execute(_SQL_TABLES)}
        if version == SCHEMA_VERSION and self._tables <= existing:
            return
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in self._schema:
                conn.execute(statement)
            conn.execute(_SQL_SET_VERSION)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def close(self) -> None:
        """Close every connection this process opened; the next call reconnects."""
        with self._lock:
            conns, self._conns = self._conns, []
            # A fresh local drops every thread's cached connection at once.
            self._local = threading.local()
        for _, conn in conns:
            try:
                conn.close()
            except sqlite3.Error:
                pass

    def _after_fork(self) -> None:
        _abandoned.append(self._conns)
        self._conns = []
        self._local = threading.local()
        self._lock = threading.Lock()  # may have been held by a thread that does not exist here

    # -- running statements --------------------------------------------------------
    def retrying(self, operation: Callable[[], T]) -> T:
        """Run ``operation``, retrying on "database is locked", translating sqlite errors.

        The busy timeout already waits ``timeout_s`` for the lock; the retries cover
        the cases SQLite reports without waiting (WAL recovery by another process).
        """
        for attempt in range(LOCKED_RETRIES + 1):
            started = time.monotonic()
            try:
                return operation()
            except sqlite3.OperationalError as exc:
                # A failure that already sat out the busy timeout is not retried: the
                # caller would wait minutes for a lock some process is not giving up.
                waited_out = time.monotonic() - started >= self.timeout_s * 0.9
                if _is_locked(exc) and not waited_out and attempt < LOCKED_RETRIES:
                    time.sleep(0.02 * (attempt + 1) + random.random() * 0.02)
                    continue
                raise self.translate(exc) from None
            except sqlite3.Error as exc:
                raise self.translate(exc) from None
        raise AssertionError("unreachable")  # pragma: no cover

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """Make every write this thread makes inside the block one transaction.

        Nested ``write``/``transaction``/``batch`` calls join it; callbacks given to
        ``after_commit`` (wake-ups) run once it is committed, never before, so nobody
        is woken to read rows that are not there yet.
        """
        if getattr(self._local, "batch", None) is not None:
            yield
            return
        with _forkguard.guard, self.write_lock.held(self.timeout_s):
            conn = self.connection()
            self.retrying(lambda: conn.execute("BEGIN IMMEDIATE"))
            after: list[Callable[[], None]] = []
            self._local.batch = after
            try:
                yield
                self.retrying(lambda: conn.execute("COMMIT"))
                self.checkpointer.committed()
            except BaseException:
                if conn.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute("ROLLBACK")
                raise
            finally:
                self._local.batch = None
        for callback in after:
            callback()

    def after_commit(self, callback: Callable[[], None]) -> None:
        pending: list[Callable[[], None]] | None = getattr(self._local, "batch", None)
        if pending is None:
            callback()
        else:
            pending.append(callback)

    def _in_batch(self) -> bool:
        return getattr(self._local, "batch", None) is not None

    def query(self, sql: str, params: Sequence[Any] = (), *, write: bool = False) -> list[Any]:
        """One statement in autocommit mode; all its rows (RETURNING included).

        ``write=True`` for statements that write (UPDATE ... RETURNING): they take the
        process's write lock like ``write()`` does.
        """
        with _forkguard.guard:
            conn = self.connection()
            if write:
                with self.write_lock.held(self.timeout_s):
                    rows = self.retrying(lambda: conn.execute(sql, params).fetchall())
                if not self._in_batch():
                    self.checkpointer.committed()
                return rows
            return self.retrying(lambda: conn.execute(sql, params).fetchall())

    def write(self, sql: str, params: Sequence[Any] = ()) -> int:
        """One statement in autocommit mode (atomic on its own); returns the changed row count."""
        with _forkguard.guard:
            conn = self.connection()
            with self.write_lock.held(self.timeout_s):
                count = self.retrying(lambda: conn.execute(sql, params).rowcount)
        if not self._in_batch():
            self.checkpointer.committed()
        return count

    @property
    def checkpointer(self) -> Checkpointer:
        found = _checkpointers.get(self.path)
        if found is None:
            made = Checkpointer(
                self.path, self.write_lock, wal_limit=self.wal_limit, lock_timeout_s=self.timeout_s
            )
            found = _checkpointers.setdefault(self.path, made)
        return found

    @property
    def write_lock(self) -> WriteLock:
        """One writer at a time per database file, across threads and processes (_sqlite_lock)."""
        lock = _write_locks.get(self.path)
        if lock is None:
            lock = _write_locks.setdefault(self.path, WriteLock(self.path + "-lock", self.path))
        return lock

    def transaction(self, body: Callable[[sqlite3.Connection], T], *, immediate: bool = True) -> T:
        """Run ``body`` in one transaction, retried as a whole when the lock is busy.

        ``BEGIN IMMEDIATE`` takes the write lock up front: a deferred transaction that
        reads and then writes fails at once with SQLITE_BUSY when another process
        committed in between, and the busy timeout does not help it.
        """
        with _forkguard.guard:
            return self._transaction(body, immediate=immediate)

    def _transaction(self, body: Callable[[sqlite3.Connection], T], *, immediate: bool) -> T:
        conn = self.connection()
        if self._in_batch():
            return self.retrying(lambda: body(conn))
        begin = "BEGIN IMMEDIATE" if immediate else "BEGIN"

        def run() -> T:
            conn.execute(begin)
            try:
                result = body(conn)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    try:
                        conn.execute("ROLLBACK")
                    except sqlite3.Error:
                        pass
                raise
            return result

        if not immediate:
            return self.retrying(run)
        with self.write_lock.held(self.timeout_s):
            result = self.retrying(run)
        self.checkpointer.committed()
        return result

    def translate(self, exc: sqlite3.Error) -> BrokerError:
        text = str(exc)
        where = f"the SQLite {self.what} {self.path}"
        if isinstance(exc, sqlite3.OperationalError):
            if _is_locked(exc):
                return BrokerError(
                    f"{where} stayed locked for over {self.timeout_s:g} s: another process holds a long "
                    "write transaction; retry, or find the stuck process"
                )
            if "unable to open" in text:
                return BrokerConnectionError(
                    f"cannot open {where}: check that its directory exists and is writable ({text})"
                )
            if "readonly" in text:
                return BrokerConnectionError(
                    f"{where} is read-only: make the file and its directory writable"
                )
        if isinstance(exc, sqlite3.DatabaseError) and "not a database" in text:
            return BrokerConnectionError(f"{where} is not an SQLite database: point the URL at another file")
        return BrokerError(f"{where} failed: {text}")


# -- wake-ups --------------------------------------------------------------------------
def wake_dir(db_path: str) -> str:
    """Where the wake sockets of one database live: ``<dbfile>-wake/`` when short enough.

    A socket path longer than sun_path cannot be bound, so a deep database path gets a
    directory in /tmp named after a hash of the path instead; every process computes
    the same name, so they still find each other.
    """
    directory = db_path + "-wake"
    if len(os.fsencode(directory)) + 20 <= _SOCKET_PATH_MAX:
        return directory
    digest = hashlib.sha256(os.fsencode(db_path)).hexdigest()[:20]
    return os.path.join("/tmp", f"conveyor-wake-{digest}")


class _Listener:
    """One consumer thread's wake socket."""

    __slots__ = ("sock", "path", "pid", "closed", "__weakref__")

    def __init__(self, directory: str) -> None:
        self.pid = _pid
        self.path = os.path.join(directory, f"{_pid}-{secrets.token_hex(4)}")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.closed = False
        try:
            self.sock.setblocking(False)
            self.sock.bind(self.path)
        except BaseException:
            self.sock.close()
            raise
        _owned_sockets.add(self.path)
        # A thread that fetched and then ended drops its listener: remove its file then,
        # not only at exit, so publishers do not keep sending to it.
        weakref.finalize(self, _release_socket, self.sock, self.path, self.pid)

    def drain(self) -> None:
        # Pending bytes are wake-ups for attempts already made; leaving them would turn
        # the next wait into an immediate, useless extra attempt.
        try:
            while True:
                self.sock.recv(16)
        except OSError:  # BlockingIOError when empty; EBADF when closed under us
            pass

    def wait(self, timeout_s: float) -> None:
        if self.closed:
            return
        try:
            select.select([self.sock], [], [], max(timeout_s, 0.0))
        except (OSError, ValueError):  # closed by close() in another thread
            pass

    def close(self) -> None:
        self.closed = True
        _release_socket(self.sock, self.path, self.pid)


def _release_socket(sock: socket.socket, path: str, pid: int) -> None:
    sock.close()
    # Only the process that bound the file removes it: a forked child dropping an
    # inherited listener must not unlink the parent's live socket.
    if pid == _pid:
        _owned_sockets.discard(path)
        try:
            os.unlink(path)
        except OSError:
            pass


class WakeChannel:
    """Cross-process wake-ups for consumers blocked on one database.

    Publishers call ``notify()`` after committing; consumers ``listener().wait()``.
    The directory listing is cached and re-read only when the directory's mtime
    changes, so a publish costs one ``stat`` plus one ``sendto`` per consumer.
    """

    def __init__(self, db_path: str) -> None:
        self.directory = wake_dir(db_path)
        self.generation = 0  # bumped by wake(): a blocked fetch seeing it change returns
        self._local = threading.local()
        self._lock = threading.Lock()
        self._listeners: weakref.WeakSet[_Listener] = weakref.WeakSet()
        self._sender: socket.socket | None = None
        self._paths: tuple[str, ...] = ()
        self._mtime_ns = -1
        self._racy = True
        _channels.add(self)

    def listener(self) -> _Listener:
        """This thread's wake socket, created on first use."""
        found: _Listener | None = getattr(self._local, "listener", None)
        if found is not None:
            return found
        try:
            created = self._bind()
        except OSError as exc:
            raise BrokerConnectionError(
                f"cannot create the wake-up socket in {self.directory} ({exc.strerror}): "
                "make the database's directory writable"
            ) from None
        with self._lock:
            self._listeners.add(created)
        self._local.listener = created
        return created

    def _bind(self) -> _Listener:
        # mkdir, never makedirs: creating the database's own (missing) directory here
        # would let a mistyped path silently start a second, empty broker.
        for _ in range(3):
            with contextlib.suppress(FileExistsError):
                os.mkdir(self.directory)
            try:
                return _Listener(self.directory)
            except FileNotFoundError:
                continue  # another process removed the emptied directory just now
        return _Listener(self.directory)

    def notify(self) -> None:
        """Wake every consumer blocked on this database, in any process."""
        try:
            mtime_ns = os.stat(self.directory).st_mtime_ns
        except OSError:
            return  # no consumer has ever waited on this database
        if mtime_ns != self._mtime_ns or self._racy:
            self._rescan(mtime_ns)
        if self._paths:
            self._send_all(self._paths)

    def wake_local(self) -> None:
        """Make fetches blocked in this process (on this channel) return."""
        self.generation += 1
        with self._lock:
            paths = tuple(listener.path for listener in self._listeners)
        self._send_all(paths)

    def _rescan(self, mtime_ns: int) -> None:
        try:
            names = os.listdir(self.directory)
        except OSError:
            names = []
        self._paths = tuple(os.path.join(self.directory, name) for name in names)
        self._mtime_ns = mtime_ns
        # Directory mtimes tick coarsely (a jiffy): a socket created in the same tick as
        # the listing would leave the mtime unchanged and never be seen. Until the tick
        # is safely past, re-read the listing on every notify.
        self._racy = time.time_ns() - mtime_ns < 50_000_000

    def _send_all(self, paths: Sequence[str]) -> None:
        sender = self._sender
        if sender is None:
            sender = self._sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            sender.setblocking(False)
        stale = False
        for path in paths:
            try:
                sender.sendto(b"\0", path)
            except BlockingIOError:
                pass  # its buffer is full of wake-ups already
            except ConnectionRefusedError:
                # Nobody is bound: the consumer died without cleaning up (SIGKILL).
                stale = True
                try:
                    os.unlink(path)
                except OSError:
                    pass
            except OSError:  # FileNotFoundError: it closed since the listing
                stale = True
        if stale:
            self._racy = True

    def close(self) -> None:
        with self._lock:
            listeners = list(self._listeners)
            self._listeners = weakref.WeakSet()
            self._local = threading.local()
        for listener in listeners:
            listener.close()
        sender, self._sender = self._sender, None
        if sender is not None:
            sender.close()
        # The last one out removes the directory (it fails while others use it), so
        # short-lived processes do not leave one behind per database.
        with contextlib.suppress(OSError):
            os.rmdir(self.directory)

    def _after_fork(self) -> None:
        # The parent's sockets stay the parent's: close our copies of the descriptors
        # (so the parent's files vanish when it exits) but never unlink them.
        for listener in list(self._listeners):
            listener.closed = True
            listener.sock.close()
        _abandoned.append(self._sender)
        self._sender = None
        self._listeners = weakref.WeakSet()
        self._local = threading.local()
        self._lock = threading.Lock()


def _after_fork_in_child() -> None:
    global _pid
    _pid = os.getpid()
    # A lock held by a parent thread at fork time would stay held forever here.
    _write_locks.clear()
    _checkpointers.clear()  # its thread did not survive the fork
    _owned_sockets.clear()
    for database in list(_databases):
        database._after_fork()
    for channel in list(_channels):
        channel._after_fork()


def _remove_own_sockets() -> None:
    directories = {os.path.dirname(path) for path in _owned_sockets}
    for path in list(_owned_sockets):
        try:
            os.unlink(path)
        except OSError:
            pass
    _owned_sockets.clear()
    for directory in directories:
        with contextlib.suppress(OSError):
            os.rmdir(directory)  # only succeeds once no other process has a socket there


os.register_at_fork(after_in_child=_after_fork_in_child)
atexit.register(_remove_own_sockets)
