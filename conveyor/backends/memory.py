"""An in-process result store for unit tests and eager mode.

Stores made with the same URL share their records, like ``MemoryBroker``, so a
worker thread and the test that waits on ``AsyncResult.get()`` see the same results.
``wait()`` sleeps on a condition that ``store()`` notifies: no polling.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator, Sequence

from conveyor.backends.base import Reply, ResultRecord


class _Store:
    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.records: dict[str, tuple[ResultRecord, float | None]] = {}  # task id -> (record, expires_at)
        self.chords: dict[str, set[str]] = {}  # chord id -> ids of the members counted
        self.watchers: set[Callable[[], None]] = set()  # called after every store (async waits)


_stores: dict[str, _Store] = {}
_stores_lock = threading.Lock()


def _store_for(url: str) -> _Store:
    with _stores_lock:
        store = _stores.get(url)
        if store is None:
            store = _stores[url] = _Store()
        return store


def reset() -> None:
    """Forget every memory result store's records, for existing MemoryBackends too."""
    with _stores_lock:
        _stores.clear()


class MemoryBackend:
    """ResultBackend in this process's memory.

    Args:
        url: ``memory://`` or ``memory://name``; backends with the same URL share records.
        result_expires_s: records older than this are removed by ``cleanup()``; 0 keeps them.
    """

    reset = staticmethod(reset)

    def __init__(self, url: str = "memory://", *, result_expires_s: float = 86400.0) -> None:
        self.url = url
        self.result_expires_s = result_expires_s

    def __repr__(self) -> str:
        return f"<MemoryBackend {self.url}>"

    @property
    def _store(self) -> _Store:
        # Looked up on every call, not kept: after reset(), a backend an app cached
        # before the reset sees the same fresh store as one made after it.
        return _store_for(self.url)

    def store(self, records: Sequence[ResultRecord]) -> None:
        expires_at = time.time() + self.result_expires_s if self.result_expires_s > 0 else None
        store = self._store
        with store.cond:
            for record in records:
                store.records[record.task_id] = (record, expires_at)
            store.cond.notify_all()
            for watcher in list(store.watchers):
                watcher()

    def get(self, task_id: str) -> ResultRecord | None:
        store = self._store
        with store.cond:
            found = store.records.get(task_id)
        return found[0] if found else None

    def get_many(self, task_ids: Sequence[str]) -> dict[str, ResultRecord]:
        store = self._store
        with store.cond:
            found = {task_id: store.records.get(task_id) for task_id in task_ids}
        return {task_id: item[0] for task_id, item in found.items() if item is not None}

    def wait(self, task_id: str, *, timeout_s: float | None, interval_s: float) -> ResultRecord | None:
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        store = self._store
        with store.cond:
            while True:
                found = store.records.get(task_id)
                record = found[0] if found else None
                if record is not None and record.ready:
                    return record
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return record
                store.cond.wait(remaining)

    @contextlib.contextmanager
    def watch(self, callback: Callable[[], None]) -> Iterator[None]:
        """Call ``callback`` (from the storing thread) after each store while the block runs:
        how an event loop learns of a result without a thread blocked in ``wait()``."""
        store = self._store
        with store.cond:
            store.watchers.add(callback)
        try:
            yield
        finally:
            with store.cond:
                store.watchers.discard(callback)

    def forget(self, task_id: str) -> None:
        store = self._store
        with store.cond:
            store.records.pop(task_id, None)

    def count_chord_member(self, chord_id: str, task_id: str, *, size: int) -> Reply[bool]:
        store = self._store
        with store.cond:
            done = store.chords.setdefault(chord_id, set())
            if task_id in done:
                return Reply.now(False)
            done.add(task_id)
            return Reply.now(len(done) == size)

    def cleanup(self, *, now: float | None = None) -> int:
        if now is None:
            now = time.time()
        store = self._store
        with store.cond:
            records = store.records
            expired = [
                key
                for key, (_, expires_at) in records.items()
                if expires_at is not None and expires_at <= now
            ]
            for key in expired:
                del records[key]
        return len(expired)

    def close(self) -> None:
        return None
