"""An in-process broker for unit tests and ``task_always_eager``.

It keeps the same contract as the SQLite and Redis brokers (leases, receipts, eta,
dead letters; ``tests/brokers/test_contract.py`` proves it), so a test written
against it means the same thing in production. Nothing leaves the process.

Brokers made with the same URL share one store: ``Conveyor(broker="memory://x")``
and a test's ``MemoryBroker("memory://x")`` see the same queues. ``reset()`` empties
every store, including those behind brokers an app already holds, for test isolation.
"""

from __future__ import annotations

import collections
import contextlib
import heapq
import itertools
import threading
import time
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass

from conveyor.backends.memory import MemoryBackend
from conveyor.brokers.base import DeadLetter, Delivery, QueueStats, check_name, parse_log_id
from conveyor.message import MAX_PRIORITY, MIN_PRIORITY, Message, decode


@dataclass(slots=True, eq=False)
class _Entry:
    seq: int  # publish order: FIFO within a priority
    queue: str
    priority: int
    body: bytes
    task_id: str
    attempts: int = 0
    receipt: str | None = None
    visible_at: float = 0.0


@dataclass(slots=True)
class _Lease:
    owner: str
    expires_at: float


class _Store:
    """Everything one ``memory://name`` holds; every field is guarded by ``cond``."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.seq = itertools.count(1)
        self.receipts = itertools.count(1)
        self.ready: dict[str, list[tuple[int, int, _Entry]]] = {}  # heap of (-priority, seq, entry)
        self.scheduled: list[tuple[float, int, _Entry]] = []  # heap by eta
        self.leased: dict[str, _Entry] = {}  # receipt -> entry
        # (visible_at, receipt); stale items (acked, extended) are skipped when popped.
        self.expiries: list[tuple[float, str]] = []
        self.dead: dict[int, tuple[DeadLetter, int]] = {}  # id -> (entry, priority), oldest first
        self.dead_ids = itertools.count(1)
        self.rate_limits: dict[str, float] = {}
        self.leases: dict[str, _Lease] = {}
        # namespace -> key -> (value, expires_at)
        self.kv: dict[str, dict[str, tuple[bytes, float | None]]] = {}
        self.logs: dict[str, collections.deque[tuple[int, float, bytes]]] = {}  # (id, appended_at, body)
        self.log_ids: dict[str, itertools.count[int]] = {}  # per stream, so ids are contiguous

    def push_ready(self, entry: _Entry) -> None:
        entry.receipt = None
        entry.visible_at = 0.0
        heapq.heappush(self.ready.setdefault(entry.queue, []), (-entry.priority, entry.seq, entry))

    def put(
        self, queue: str, body: bytes, priority: int, task_id: str, eta: float | None, now: float
    ) -> None:
        entry = _Entry(seq=next(self.seq), queue=queue, priority=priority, body=body, task_id=task_id)
        if eta is not None and eta > now:
            heapq.heappush(self.scheduled, (eta, entry.seq, entry))
        else:
            self.push_ready(entry)

    def settle_time(self, now: float) -> None:
        """Move due scheduled entries and ran-out leases back to their queues."""
        while self.scheduled and self.scheduled[0][0] <= now:
            self.push_ready(heapq.heappop(self.scheduled)[2])
        while self.expiries and self.expiries[0][0] <= now:
            _, receipt = heapq.heappop(self.expiries)
            entry = self.leased.get(receipt)
            # Extended since this item was pushed: a later item stands for it.
            if entry is not None and entry.visible_at <= now:
                del self.leased[receipt]
                self.push_ready(entry)  # a worker died holding it: deliver again

    def next_due(self) -> float | None:
        times = []
        if self.scheduled:
            times.append(self.scheduled[0][0])
        if self.expiries:
            times.append(self.expiries[0][0])
        return min(times) if times else None

    def take(self, receipt: str) -> _Entry | None:
        """Remove a leased entry if ``receipt`` still holds its lease."""
        return self.leased.pop(receipt, None)


_stores: dict[str, _Store] = {}
_stores_lock = threading.Lock()


def _store_for(url: str) -> _Store:
    with _stores_lock:
        store = _stores.get(url)
        if store is None:
            store = _stores[url] = _Store()
        return store


def reset() -> None:
    """Forget every memory broker's contents; every MemoryBroker, old or new, sees empty queues."""
    with _stores_lock:
        _stores.clear()


def _priority(message: Message) -> int:
    return min(MAX_PRIORITY, max(MIN_PRIORITY, int(message.priority)))


class MemoryBroker:
    """Broker and BrokerAdmin in this process's memory.

    Args:
        url: ``memory://`` or ``memory://name``; brokers with the same URL share queues.
    """

    reset = staticmethod(reset)

    def __init__(self, url: str = "memory://") -> None:
        self.url = url
        self._generation = 0  # bumped by wake(): a blocked fetch that sees it change returns

    def __repr__(self) -> str:
        return f"<MemoryBroker {self.url}>"

    @property
    def _store(self) -> _Store:
        # Looked up on every call, not kept: after reset(), a broker an app cached
        # before the reset sees the same fresh store as one made after it.
        return _store_for(self.url)

    # -- producing -------------------------------------------------------------------
    def publish(self, message: Message, *, eta: float | None = None) -> None:
        self.publish_raw(
            message.queue,
            message.encode(),
            priority=_priority(message),
            task_id=message.id,
            eta=message.eta if eta is None else eta,
        )

    def publish_many(self, messages: Sequence[Message]) -> None:
        # Encode first: a message that cannot be encoded must leave none published.
        encoded = [(m, m.encode()) for m in messages]
        store = self._store
        now = time.time()
        with store.cond:
            for message, body in encoded:
                store.put(message.queue, body, _priority(message), message.id, message.eta, now)
            store.cond.notify_all()

    def publish_raw(
        self, queue: str, body: bytes, *, priority: int = 0, task_id: str = "", eta: float | None = None
    ) -> None:
        """Store bytes as they are; lets tests queue a body no decoder accepts."""
        store = self._store
        with store.cond:
            store.put(queue, body, priority, task_id, eta, time.time())
            store.cond.notify_all()

    # -- consuming -------------------------------------------------------------------
    def fetch(self, queues: Sequence[str], *, limit: int, lease_s: float, timeout_s: float) -> list[Delivery]:
        if limit <= 0 or not queues:
            return []
        queues = list(dict.fromkeys(queues))
        store = self._store
        deadline = time.monotonic() + max(timeout_s, 0.0)
        generation = self._generation
        with store.cond:
            while True:
                now = time.time()
                store.settle_time(now)
                out = self._lease(store, queues, limit, now + lease_s)
                remaining = deadline - time.monotonic()
                if out or remaining <= 0 or self._generation != generation:
                    return out
                next_due = store.next_due()
                if next_due is not None:
                    remaining = min(remaining, max(next_due - now, 0.001))
                store.cond.wait(remaining)

    def _lease(self, store: _Store, queues: list[str], limit: int, until: float) -> list[Delivery]:
        out: list[Delivery] = []
        for queue in queues:
            heap = store.ready.get(queue)
            while heap and len(out) < limit:
                entry = heapq.heappop(heap)[2]
                entry.attempts += 1
                entry.receipt = f"{entry.seq}:{next(store.receipts)}"
                entry.visible_at = until
                store.leased[entry.receipt] = entry
                heapq.heappush(store.expiries, (until, entry.receipt))
                out.append(
                    Delivery(
                        body=entry.body,
                        queue=queue,
                        receipt=entry.receipt,
                        attempt=entry.attempts,
                        message_id=entry.task_id,
                    )
                )
            if len(out) >= limit:
                break
        return out

    def ack(self, deliveries: Sequence[Delivery]) -> None:
        store = self._store
        with store.cond:
            for delivery in deliveries:
                store.take(delivery.receipt)

    def nack(self, delivery: Delivery, *, retry_at: float | None = None, reason: str = "") -> None:
        store = self._store
        with store.cond:
            entry = store.take(delivery.receipt)
            if entry is None:  # stale receipt: the message is someone else's now
                return
            if retry_at is not None and retry_at > time.time():
                entry.receipt = None
                heapq.heappush(store.scheduled, (retry_at, entry.seq, entry))
            else:
                store.push_ready(entry)
            store.cond.notify_all()

    def dead_letter(self, delivery: Delivery, *, reason: str) -> None:
        try:
            message = decode(delivery.body)
            task_id, task_name, priority = message.id, message.task, _priority(message)
        except Exception:  # an undecodable body is dead-lettered raw
            task_id, task_name, priority = None, None, 0
        store = self._store
        with store.cond:
            store.take(delivery.receipt)  # nothing to take after an ack; still recorded
            entry_id = next(store.dead_ids)
            store.dead[entry_id] = (
                DeadLetter(
                    id=str(entry_id),
                    queue=delivery.queue,
                    body=delivery.body,
                    reason=reason,
                    failed_at=time.time(),
                    task_id=task_id,
                    task_name=task_name,
                ),
                priority,
            )

    def extend(self, deliveries: Sequence[Delivery], *, lease_s: float) -> None:
        store = self._store
        until = time.time() + lease_s
        with store.cond:
            for delivery in deliveries:
                entry = store.leased.get(delivery.receipt)
                if entry is not None:
                    entry.visible_at = until
                    heapq.heappush(store.expiries, (until, delivery.receipt))

    def wake(self) -> None:
        store = self._store
        with store.cond:
            self._generation += 1
            store.cond.notify_all()

    def batch(self, *, reply_later: bool = False) -> AbstractContextManager[None]:
        """Each call is already atomic under the store's lock; nothing to group."""
        return contextlib.nullcontext()

    def read_replies(self) -> None:
        """Nothing to wait for: every write here is committed before it returns."""

    def result_backend(self, *, result_expires_s: float) -> MemoryBackend:
        return MemoryBackend(self.url, result_expires_s=result_expires_s)

    def close(self) -> None:
        # The store outlives the broker (others may share the URL); only blocked fetches end.
        self.wake()

    # -- admin -----------------------------------------------------------------------
    def queue_stats(self, queues: Sequence[str] | None = None) -> list[QueueStats]:
        store = self._store
        with store.cond:
            store.settle_time(time.time())
            counts: dict[str, list[int]] = {}

            def bump(queue: str, column: int) -> None:
                counts.setdefault(queue, [0, 0, 0, 0])[column] += 1

            for queue, heap in store.ready.items():
                for _ in heap:
                    bump(queue, 0)
            for entry in store.leased.values():
                bump(entry.queue, 1)
            for _, _, entry in store.scheduled:
                bump(entry.queue, 2)
            for dead, _ in store.dead.values():
                bump(dead.queue, 3)
        names = list(queues) if queues is not None else sorted(counts)
        return [QueueStats(name, *counts.get(name, [0, 0, 0, 0])) for name in names]

    def purge(self, queue: str | None = None) -> int:
        store = self._store
        with store.cond:
            store.settle_time(time.time())  # ran-out leases are backlog, purged too
            purged = 0
            for name in [queue] if queue is not None else list(store.ready):
                purged += len(store.ready.pop(name, []))
            kept = [item for item in store.scheduled if queue is not None and item[2].queue != queue]
            purged += len(store.scheduled) - len(kept)
            heapq.heapify(kept)
            store.scheduled = kept
            return purged

    def dead_letters(
        self, queue: str | None = None, *, limit: int = 100, offset: int = 0
    ) -> list[DeadLetter]:
        store = self._store
        with store.cond:
            entries = [dead for dead, _ in reversed(store.dead.values())]
        if queue is not None:
            entries = [dead for dead in entries if dead.queue == queue]
        return entries[offset : offset + limit]

    def get_dead_letter(self, entry_id: str) -> DeadLetter | None:
        if not str(entry_id).isdigit():
            return None
        store = self._store
        with store.cond:
            found = store.dead.get(int(entry_id))
        return found[0] if found else None

    def replay_dead_letters(self, entry_ids: Sequence[str] | None = None) -> int:
        store = self._store
        with store.cond:
            keys = list(store.dead) if entry_ids is None else [int(e) for e in entry_ids if str(e).isdigit()]
            replayed = 0
            for key in sorted(set(keys)):
                found = store.dead.pop(key, None)
                if found is None:
                    continue
                dead, priority = found
                store.put(dead.queue, dead.body, priority, dead.task_id or "", None, 0.0)
                replayed += 1
            if replayed:
                store.cond.notify_all()
            return replayed

    def purge_dead_letters(self, entry_ids: Sequence[str] | None = None) -> int:
        store = self._store
        with store.cond:
            if entry_ids is None:
                count = len(store.dead)
                store.dead.clear()
                return count
            keys = {int(e) for e in entry_ids if str(e).isdigit()}
            return sum(store.dead.pop(key, None) is not None for key in keys)

    def rate_limit_wait(self, key: str, interval_s: float, *, now: float | None = None) -> float:
        if interval_s <= 0:
            return 0.0
        if now is None:
            now = time.time()
        store = self._store
        with store.cond:
            tat = store.rate_limits.get(key, now)
            if tat > now:
                return tat - now
            store.rate_limits[key] = now + interval_s  # GCRA, no burst
            return 0.0

    def acquire_lease(self, name: str, owner: str, ttl_s: float) -> bool:
        now = time.time()
        store = self._store
        with store.cond:
            lease = store.leases.get(name)
            if lease is not None and lease.owner != owner and lease.expires_at > now:
                return False
            store.leases[name] = _Lease(owner, now + ttl_s)
            return True

    def claim_lease(self, name: str, owner: str, ttl_s: float) -> str:
        now = time.time()
        store = self._store
        with store.cond:
            lease = store.leases.get(name)
            if lease is not None and lease.expires_at > now:
                return lease.owner
            store.leases[name] = _Lease(owner, now + ttl_s)
            return owner

    def release_lease(self, name: str, owner: str) -> None:
        store = self._store
        with store.cond:
            lease = store.leases.get(name)
            if lease is not None and lease.owner == owner:
                del store.leases[name]

    # -- kv and logs -------------------------------------------------------------------
    def kv_set(self, namespace: str, key: str, value: bytes, *, ttl_s: float | None = None) -> None:
        check_name("namespace", namespace)
        expires_at = None if ttl_s is None else time.time() + ttl_s
        store = self._store
        with store.cond:
            store.kv.setdefault(namespace, {})[key] = (bytes(value), expires_at)

    def _live_kv(self, store: _Store, namespace: str) -> dict[str, tuple[bytes, float | None]]:
        records = store.kv.get(namespace, {})
        now = time.time()
        for key in [
            k for k, (_, expires_at) in records.items() if expires_at is not None and expires_at <= now
        ]:
            del records[key]
        return records

    def kv_get(self, namespace: str, key: str) -> bytes | None:
        store = self._store
        with store.cond:
            found = self._live_kv(store, namespace).get(key)
            return None if found is None else found[0]

    def kv_items(self, namespace: str) -> dict[str, bytes]:
        store = self._store
        with store.cond:
            return {key: value for key, (value, _) in sorted(self._live_kv(store, namespace).items())}

    def kv_delete(self, namespace: str, key: str) -> bool:
        store = self._store
        with store.cond:
            return self._live_kv(store, namespace).pop(key, None) is not None

    def log_append(self, stream: str, entries: Sequence[bytes], *, maxlen: int) -> None:
        if not entries:
            return
        check_name("stream", stream)
        now = time.time()
        store = self._store
        with store.cond:
            log = store.logs.setdefault(stream, collections.deque())
            ids = store.log_ids.setdefault(stream, itertools.count(1))
            log.extend((next(ids), now, bytes(body)) for body in entries)
            while len(log) > max(maxlen, 0):
                log.popleft()
            store.cond.notify_all()

    def log_read(
        self, stream: str, *, after: str = "0", limit: int = 1000, timeout_s: float = 0.0
    ) -> list[tuple[str, bytes]]:
        last = parse_log_id(after)
        deadline = time.monotonic() + max(timeout_s, 0.0)
        store = self._store
        generation = self._generation
        with store.cond:
            while True:
                log = store.logs.get(stream)
                found: list[tuple[str, bytes]] = []
                if log:
                    start = max(0, last - log[0][0] + 1)  # ids are contiguous within a stream
                    found = [
                        (str(i), body) for i, _, body in itertools.islice(log, start, start + max(limit, 0))
                    ]
                remaining = deadline - time.monotonic()
                if found or remaining <= 0 or self._generation != generation:
                    return found
                store.cond.wait(remaining)

    def log_tail(self, stream: str) -> str:
        store = self._store
        with store.cond:
            log = store.logs.get(stream)
            return str(log[-1][0]) if log else "0"

    def log_trim(self, stream: str, *, older_than_s: float) -> int:
        cutoff = time.time() - older_than_s
        store = self._store
        with store.cond:
            log = store.logs.get(stream)
            dropped = 0
            while log and log[0][1] < cutoff:
                log.popleft()
                dropped += 1
            return dropped
