"""Copying the SQLite WAL back into the database file, off every writer's path.

SQLite's automatic checkpoint runs inside whichever COMMIT crosses the WAL size
threshold, with that writer still holding the write lock, and includes an fsync:
measured, that stalled every worker for milliseconds at a time and cost about 40%
of drain throughput. So connections turn it off, and a daemon thread per process
and file runs a PASSIVE checkpoint (which never blocks readers or writers) after
every CHECKPOINT_EVERY_COMMITS commits of this process, or CHECKPOINT_EVERY_S after
the first unsynced commit. It sleeps on an event, so an idle process spends nothing.

A PASSIVE checkpoint never lets the WAL start over while writers keep committing
and readers keep reading (a drain): it copies frames but the file only grows, to
gigabytes. So once the WAL passes ``wal_limit`` bytes, the thread also takes the
writers' lock (``WriteLock``: no conveyor writer appends meanwhile) and runs a
RESTART checkpoint, which copies the rest and makes the next writer rewind the
WAL; when a reader still uses the WAL it gives up at once and is tried again
soon, and once the WAL is twice the limit it waits a moment for the readers. ``journal_size_limit`` on every connection then cuts the file back. Most
frames were copied by the PASSIVE checkpoints before, so writers wait only for
the rest.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time

from conveyor import _forkguard
from conveyor._sqlite_lock import WriteLock
from conveyor.exceptions import BrokerError

CHECKPOINT_EVERY_COMMITS = 200
CHECKPOINT_EVERY_S = 1.0
SIZE_CHECK_EVERY_COMMITS = 16  # a stat of the WAL, to start a restart soon after the limit
RESTART_RETRY_S = 0.02  # after a RESTART that readers kept from finishing
RESTART_WAIT_S = 0.25  # past twice the limit: longest a RESTART waits for readers

_SQL_PASSIVE = "PRAGMA wal_checkpoint(PASSIVE)"
_SQL_RESTART = "PRAGMA wal_checkpoint(RESTART)"
_SQL_BUSY_TIMEOUT = "PRAGMA busy_timeout = {:d}"  # milliseconds; PRAGMA takes no ? parameters


class Checkpointer:
    """Checkpoints one database file for this process.

    Args:
        path: the database file.
        lock: the writers' lock of that file.
        wal_limit: WAL size in bytes past which the WAL is made to start over.
        lock_timeout_s: longest wait for the writers' lock.
    """

    def __init__(self, path: str, lock: WriteLock, *, wal_limit: int, lock_timeout_s: float) -> None:
        self.path = path
        self.wal_path = path + "-wal"
        self.wal_limit = wal_limit
        self._lock = lock
        self._lock_timeout_s = lock_timeout_s
        self._pending = 0
        self._first_at = 0.0
        self._commits = 0
        self._over = False  # the WAL passed wal_limit: restart it
        self._retry_at = 0.0
        self._due = threading.Event()
        self._thread: threading.Thread | None = None
        self._conn: sqlite3.Connection | None = None

    def close_connection(self) -> None:
        """Under the fork guard only: no checkpoint is running."""
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(sqlite3.Error):
                conn.close()

    def committed(self) -> None:
        self._pending += 1
        self._commits += 1
        now = time.monotonic()
        if self._pending == 1:
            self._first_at = now
            self._ensure_thread()
        if self._commits % SIZE_CHECK_EVERY_COMMITS == 0 and self._wal_size() >= self.wal_limit:
            self._over = True
            self._due.set()
        elif self._pending >= CHECKPOINT_EVERY_COMMITS or now - self._first_at >= CHECKPOINT_EVERY_S:
            self._due.set()

    def _wal_size(self) -> int:
        try:
            return os.stat(self.wal_path).st_size
        except OSError:
            return 0

    def _ensure_thread(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._run, name="sqlite-checkpoint", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while True:
            # A timeout as well: a process that made a few commits and went quiet
            # still gets them checkpointed.
            self._due.wait(CHECKPOINT_EVERY_S)
            if not self._pending and not self._over:
                continue
            self._due.clear()
            self._pending = 0
            with _forkguard.guard:
                self._checkpoint()

    def _checkpoint(self) -> None:
        try:
            conn = self._connection()
            conn.execute(_SQL_PASSIVE).fetchall()
            if not self._over or time.monotonic() < self._retry_at:
                return
            self._over = False
            with self._lock.held(self._lock_timeout_s):
                # Another process may have restarted it while we waited for the lock.
                size = self._wal_size()
                if size >= self.wal_limit:
                    # Past twice the limit, readers kept it from starting over again
                    # and again (long scans: a dashboard's counts): wait for the ones
                    # reading now, holding writers up for RESTART_WAIT_S at most.
                    wait_ms = int(RESTART_WAIT_S * 1000) if size >= 2 * self.wal_limit else 0
                    conn.execute(_SQL_BUSY_TIMEOUT.format(wait_ms))
                    busy = conn.execute(_SQL_RESTART).fetchone()[0]
                    if busy:  # a reader stayed: try again soon, not on every commit
                        self._retry_at = time.monotonic() + RESTART_RETRY_S
                        self._over = True
        except (sqlite3.Error, BrokerError):
            pass  # another process's checkpoint, a stuck writer: the next round catches up

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            # No busy timeout by default: a RESTART holds every writer up, so it
            # must not sleep in SQLite's busy handler waiting for a reader; it gives
            # up at once and is tried again (PASSIVE never waits anyway).
            self._conn = sqlite3.connect(self.path, timeout=0, isolation_level=None, check_same_thread=False)
        return self._conn
