"""Fork only between statements: the prefork supervisor forks while other threads work.

The supervisor replaces children while its heartbeat, control and scheduler threads
use the broker. A library caught mid-call in one of those threads at the moment of
``fork()`` leaves the child its half-done state: SQLite keeps process-wide lock
bookkeeping per open file and its own mutexes, so a child inheriting them believes
it holds locks it does not, or waits on a mutex nobody will release.

Libraries with such state wrap each call in ``with guard:`` and register a function
that closes their connections with ``before_fork``; the forking thread forks inside
``fork_guard()``, which waits until no thread is inside a call, closes every
connection, and keeps other threads out until the fork is done (they reconnect
afterwards). A process that never forks pays one no-op context manager per call.

This module imports nothing heavy, so a Redis worker does not load sqlite3 for it.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterator

__all__ = ["before_fork", "enable", "fork_guard", "guard"]


class _NoGuard:
    """The guard of a process that never forks: free."""

    __slots__ = ()

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


class _Guard:
    """Counts the threads inside a guarded call; re-entrant per thread, so a
    statement inside a batch does not wait on itself."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._busy = 0
        self._forking = False
        self._local = threading.local()

    def __enter__(self) -> None:
        local = self._local
        depth = getattr(local, "depth", 0)
        if depth == 0:
            with self._cond:
                while self._forking:
                    self._cond.wait()
                self._busy += 1
        local.depth = depth + 1

    def __exit__(self, *exc: object) -> None:
        local = self._local
        local.depth -= 1
        if local.depth == 0:
            with self._cond:
                self._busy -= 1
                if self._forking and self._busy == 0:
                    self._cond.notify_all()

    @contextlib.contextmanager
    def forking(self) -> Iterator[None]:
        if getattr(self._local, "depth", 0):
            raise RuntimeError("fork_guard() entered inside a guarded call: it would wait for itself")
        with self._cond:
            self._forking = True
            while self._busy:
                self._cond.wait()
        try:
            for close in list(_closers):
                close()
            yield
        finally:
            with self._cond:
                self._forking = False
                self._cond.notify_all()


guard: _NoGuard | _Guard = _NoGuard()
_closers: list[Callable[[], None]] = []


def before_fork(close: Callable[[], None]) -> None:
    """Register a function that closes a library's connections (called with no
    thread inside a guarded call)."""
    _closers.append(close)


def enable() -> None:
    """Count guarded calls from now on.

    Call it before starting the threads that will make such calls while this process
    forks: a thread already inside a call when counting starts is not waited for.
    """
    global guard
    if not isinstance(guard, _Guard):
        guard = _Guard()


@contextlib.contextmanager
def fork_guard() -> Iterator[None]:
    """Fork inside this block: no thread is in a guarded call, no connection is open."""
    enable()
    current = guard
    assert isinstance(current, _Guard)
    with current.forking():
        yield


def _after_fork_in_child() -> None:
    # The forking thread is the child's only thread, and a child does not fork:
    # its calls go uncounted.
    global guard
    guard = _NoGuard()


os.register_at_fork(after_in_child=_after_fork_in_child)
