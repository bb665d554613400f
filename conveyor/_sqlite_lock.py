"""One writer at a time per SQLite file, across threads and processes, for a bounded time.

Writers would otherwise meet on SQLite's file lock, where the loser's busy handler
*sleeps* in steps of a millisecond or more instead of waking when the lock is free:
measured, that halved a worker's throughput. Here a thread waits on an in-process
lock, then the process on ``flock`` of a lock file beside the database, and the
kernel wakes the next writer the moment the previous one commits. flock goes with
its holder when the holder dies, however it dies.

The wait is bounded (DESIGN.md, "Bad input": a clear error, never a hang). A
process that holds the lock and does not let go (stopped with SIGSTOP, hung in a
debugger) would otherwise hang every producer on the machine. A blocking ``flock``
cannot be given a timeout or cancelled, so the lock is first tried without
blocking, and a lock still taken is waited for by a thread of the lock's own that
blocks in ``flock`` and hands the lock to the caller, who waits on a condition
with a deadline. A caller that gives
up (deadline, exception) leaves that thread waiting; what it gets later, nobody
wants, and it lets go at once.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
import time
from collections.abc import Iterator

from conveyor.exceptions import BrokerError

# Tries of a non-blocking flock before the wait goes to the flock thread. One:
# retries with short sleeps saved contending producers a wake-up but cost a
# draining worker more CPU per task than they saved.
_RETRY_PAUSES_S = (0.0,)


class WriteLock:
    """A re-entrant thread lock plus an exclusive ``flock`` held while it is held.

    The flock is taken by the outermost acquire only (the lock is re-entrant for
    nested writes in one batch). The file descriptor is opened per process: a forked
    child shares its parent's open file description, and flock would then count the
    two as one holder.

    Args:
        path: the lock file.
        database: the database file it guards, for error messages.
    """

    def __init__(self, path: str, database: str) -> None:
        self.path = path
        self.database = database
        self._lock = threading.RLock()
        self._depth = 0
        self._fd: int | None = None
        self._pid = os.getpid()
        # The hand-off between the flock thread and the caller waiting for it.
        self._handoff = threading.Condition(threading.Lock())
        self._requested = False  # the flock thread should block in flock (or already does)
        self._wanted = False  # a caller waits for the flock now
        self._granted = False  # the flock thread got it for that caller
        self._thread: threading.Thread | None = None

    @contextlib.contextmanager
    def held(self, timeout_s: float) -> Iterator[None]:
        """Hold the lock for the block, waiting at most ``timeout_s`` for it.

        Raises:
            BrokerError: still held elsewhere after ``timeout_s``; nothing is held then.
        """
        self.acquire(timeout_s)
        try:
            yield
        finally:
            self.release()

    def acquire(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        if not self._lock.acquire(timeout=max(timeout_s, 0.0)):
            raise BrokerError(
                f"the SQLite write lock on {self.database} stayed taken for over {timeout_s:g} s by "
                f"another thread of this process ({os.getpid()}): a write is stuck; find that thread"
            )
        try:
            if self._depth == 0:
                self._lock_file(deadline, timeout_s)
            self._depth += 1
        except BaseException:
            # A timeout or an exception while waiting (KeyboardInterrupt): nothing stays
            # held, or this process and then every other one would wait on it forever.
            if self._depth == 0 and self._fd is not None:
                with contextlib.suppress(OSError):
                    fcntl.flock(self._fd, fcntl.LOCK_UN)
            self._lock.release()
            raise

    def release(self) -> None:
        self._depth -= 1
        if self._depth == 0 and self._fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._fd, fcntl.LOCK_UN)
        self._lock.release()

    def _file(self) -> int | None:
        if self._fd is None or self._pid != os.getpid():
            self._pid = os.getpid()
            try:
                self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError:
                self._fd = None  # read-only directory: SQLite's own locking still holds
        return self._fd

    def _lock_file(self, deadline: float, timeout_s: float) -> None:
        fd = self._file()
        if fd is None:
            return
        for pause in _RETRY_PAUSES_S:
            if pause:
                time.sleep(pause)
            if self._try_file(fd):
                return
        if not self._wait_for_file(deadline):
            raise BrokerError(self._stuck_message(fd, timeout_s))

    def _try_file(self, fd: int) -> bool:
        """One non-blocking flock; True when it is held (or cannot be had at all)."""
        with self._handoff:
            # While the flock thread waits on the file it owns the next grant: a
            # non-blocking flock here would succeed through the same open file, and
            # that thread, getting the lock nobody asked it for, would release it.
            if self._requested:
                return False
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            except OSError:
                return True  # no flock here (ENOLCK): SQLite's own locking still holds
            return True

    def _wait_for_file(self, deadline: float) -> bool:
        with self._handoff:
            self._wanted = True
            if not self._requested:
                self._requested = True
                self._handoff.notify_all()
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="sqlite-write-lock", daemon=True)
                self._thread.start()
            try:
                while not self._granted and (remaining := deadline - time.monotonic()) > 0:
                    self._handoff.wait(remaining)
            finally:
                got, self._granted, self._wanted = self._granted, False, False
            return got

    def _run(self) -> None:
        fd = self._fd
        while fd is not None and self._pid == os.getpid():
            with self._handoff:
                while not self._requested:
                    self._handoff.wait()
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
            except OSError:
                got = False
            else:
                got = True
            with self._handoff:
                self._requested = False
                if got and self._wanted:
                    self._granted = True
                    self._handoff.notify_all()
                elif got:  # the caller gave up meanwhile
                    with contextlib.suppress(OSError):
                        fcntl.flock(fd, fcntl.LOCK_UN)

    def _stuck_message(self, fd: int, timeout_s: float) -> str:
        holder = _flock_holder(fd)
        who = "another process" if holder is None else f"process {holder}"
        if holder is not None and _is_stopped(holder):
            who += " (stopped: SIGCONT or end it)"
        return (
            f"the SQLite write lock on {self.database} stayed taken for over {timeout_s:g} s by {who}: "
            "a writer is stuck; end it, or raise the wait with ?timeout=SECONDS in the sqlite URL"
        )


def _flock_holder(fd: int) -> int | None:
    """The pid holding a flock on ``fd``'s file, from /proc/locks (Linux), else None."""
    try:
        stat = os.fstat(fd)
        with open("/proc/locks") as locks:
            lines = locks.read().splitlines()
    except OSError:
        return None
    file_id = f"{os.major(stat.st_dev):02x}:{os.minor(stat.st_dev):02x}:{stat.st_ino}"
    for line in lines:
        # "1: FLOCK  ADVISORY  WRITE 1234 fe:00:5678 0 EOF"; waiters' lines have "->".
        fields = line.split()
        if len(fields) >= 6 and fields[1] == "FLOCK" and fields[5] == file_id:
            with contextlib.suppress(ValueError):
                pid = int(fields[4])
                return pid if pid > 0 and pid != os.getpid() else None
    return None


def _is_stopped(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] in ("T", "t")
    except (OSError, IndexError):
        return False
