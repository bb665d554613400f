"""The Redis result store: one key per task, expiring after ``result_expires``.

Keys (``P`` is the URL's ``?prefix=``, ``conveyor`` by default):

- ``P:r:<task id>``  the record, JSON, with a TTL of ``result_expires`` (none when 0);
- ``P:rw:<task id>`` how many ``wait()`` calls are waiting for it;
- ``P:rn:<task id>`` a list the storing script pushes one copy of the finished
  record onto per waiter; each waiter BLPOPs its copy, so it wakes the moment the
  result is stored and needs no second read. Nobody waiting: nothing is pushed.
- ``P:chord:<chord id>`` the set of a chord's members counted so far, with the
  records' TTL: its size is the chord's counter, and a member added twice counts once.

Storing is one Lua script (``lua/store.lua``) for the whole batch; inside a broker ``batch()`` it joins
the worker's MULTI/EXEC with the acks.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from conveyor._redis import RedisLink
from conveyor._redis_script import Script
from conveyor.backends.base import Reply, ResultRecord
from conveyor.serialization import dumps, loads
from conveyor.states import READY_STATES

if TYPE_CHECKING:
    pass

NOTIFY_TTL_MS = 60_000  # a waiter's copy outlives the wait that asked for it by this much (as in _STORE)

# The Lua scripts, one file each in conveyor/backends/lua/ (headers: KEYS and ARGV).
_STORE = Script("conveyor.backends", "store")
_COUNT_CHORD = Script("conveyor.backends", "count_chord")
# wait(): look and register as a waiter, with the BLPOP in the same write.
_AWAIT = Script("conveyor.backends", "await")
SCRIPTS = (_STORE, _COUNT_CHORD, _AWAIT)

_READY = tuple(sorted(READY_STATES))
# A stored record is a JSON array whose first item is the state: these open a ready one.
_READY_PREFIXES = tuple(f'["{state}"' for state in _READY)


def store_call(
    prefix: str, expires_s: float, records: Sequence[ResultRecord]
) -> tuple[list[str], list[Any]]:
    """KEYS and ARGV of store.lua for ``records`` (the async client's too). Encodes
    every record first: a bad value stores nothing."""
    ttl_ms = int(expires_s * 1000) if expires_s > 0 else 0
    keys: list[str] = []
    args: list[Any] = [ttl_ms]
    for record in records:
        task_id = record.task_id
        # The names task_keys() gives, spelled out: this runs for every task.
        keys += (f"{prefix}:r:{task_id}", f"{prefix}:rw:{task_id}", f"{prefix}:rn:{task_id}")
        args += ("1" if record.state in READY_STATES else "0", _encode(record))
    return keys, args


def task_keys(link: RedisLink, task_id: str) -> tuple[str, str, str]:
    """A task's record, waiter count and notify list (the async client's too)."""
    return link.key("r", task_id), link.key("rw", task_id), link.key("rn", task_id)


class RedisBackend:
    """ResultBackend on Redis.

    Args:
        url: a Redis URL (see ``RedisBroker``), e.g. ``redis://localhost:6379/1``.
        result_expires_s: seconds a record is kept after its last update; 0 keeps it.
        link: share a broker's connections and write batches (``RedisBroker.result_backend``).
    """

    def __init__(
        self,
        url: str = "redis://localhost:6379/0",
        *,
        result_expires_s: float = 86400.0,
        link: RedisLink | None = None,
    ) -> None:
        self.url = url
        self.result_expires_s = result_expires_s
        self._owns_link = link is None
        self.link = link or RedisLink(url)
        self.prefix = self.link.prefix

    def __repr__(self) -> str:
        from conveyor._redis import mask

        return f"<RedisBackend {mask(self.url)}>"

    def _key(self, task_id: str) -> str:
        return self.link.key("r", task_id)

    def store(self, records: Sequence[ResultRecord]) -> None:
        if not records:
            return
        self.link.run(_STORE, *store_call(self.prefix, self.result_expires_s, records))

    def get(self, task_id: str) -> ResultRecord | None:
        key = self._key(task_id)
        data = self.link.send([("GET", key)])[0]
        return None if data is None else _decode(task_id, data)

    def get_many(self, task_ids: Sequence[str]) -> dict[str, ResultRecord]:
        if not task_ids:
            return {}
        ids = list(dict.fromkeys(task_ids))
        keys = [self._key(i) for i in ids]
        values = self.link.send([("MGET", *keys)])[0]
        return {i: _decode(i, v) for i, v in zip(ids, values, strict=True) if v is not None}

    def wait(self, task_id: str, *, timeout_s: float | None, interval_s: float) -> ResultRecord | None:
        """Look, register as a waiter and block on this task's notify list, in one write.

        The script (_AWAIT) looks and registers atomically, so a result stored before
        it is pushed by the script itself and one stored after it is pushed by the
        storing script: the BLPOP in the same write gets it either way. Out of time,
        one last look. ``interval_s`` is not used: nothing polls (each BLPOP lasts up
        to a couple of seconds only so a dead server is noticed).
        """
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        key, waiters, notify = task_keys(self.link, task_id)
        max_block = self.link.max_block_s
        registered = False
        try:
            while True:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    data = self.link.send([("GET", key)])[0]
                    return None if data is None else _decode(task_id, data)
                expire_ms = int(((remaining or max_block) + max_block) * 1000) + NOTIFY_TTL_MS
                block = max_block if remaining is None else min(remaining, max_block)
                # EVAL, not EVALSHA: a NOSCRIPT here would leave the BLPOP blocking for nothing.
                now_registered, got = self.link.send(
                    [
                        (
                            "EVAL",
                            _AWAIT.source,
                            3,
                            key,
                            waiters,
                            notify,
                            expire_ms,
                            int(not registered),
                            *_READY_PREFIXES,
                        ),
                        ("BLPOP", notify, max(block, 0.001)),
                    ]
                )
                registered = bool(now_registered)
                if got:
                    registered = False  # our copy was consumed with our registration
                    pushed = _decode(task_id, got[1])
                    if pushed.ready:
                        return pushed
        finally:
            if registered:
                self._unregister(waiters)

    def _unregister(self, waiters: str) -> None:
        try:
            self.link.send([("DECR", waiters)])
        except Exception:  # best effort: the counter expires anyway
            return

    def forget(self, task_id: str) -> None:
        self.link.command("DEL", self._key(task_id))

    def count_chord_member(self, chord_id: str, task_id: str, *, size: int) -> Reply[bool]:
        ttl_ms = int(self.result_expires_s * 1000) if self.result_expires_s > 0 else 0
        # In the broker's batch this joins the MULTI/EXEC that stores the member's
        # result and acks it; the answer comes back with the EXEC.
        key = self.link.key("chord", chord_id)
        return self.link.run_replied(_COUNT_CHORD, (key,), (task_id, size, ttl_ms), convert=_is_one)

    def cleanup(self, *, now: float | None = None) -> int:
        """Delete records whose expiry falls before ``now``.

        Redis expires records by itself, so this is only needed to remove them early
        (``now`` in the future); it walks this prefix's records with SCAN.
        """
        pattern = self.link.key("r", "*")

        seconds, micros = self.link.send([("TIME",)])[0]
        server_now = int(seconds) + int(micros) / 1e6
        limit = time.time() if now is None else now
        removed, cursor = 0, b"0"
        while True:
            cursor, keys = self.link.send([("SCAN", cursor, "MATCH", pattern, "COUNT", 1000)])[0]
            if keys:
                ttls = self.link.send([("PTTL", key) for key in keys])
                expired = [
                    key
                    for key, ttl in zip(keys, ttls, strict=True)
                    if ttl >= 0 and server_now + ttl / 1000 <= limit
                ]
                if expired:
                    removed += int(self.link.send([("DEL", *expired)])[0])
            if cursor in (b"0", 0, "0"):
                return removed

    def close(self) -> None:
        if self._owns_link:
            self.link.close()


def _is_one(reply: Any) -> bool:
    return bool(reply == 1)


def _encode(record: ResultRecord) -> bytes:
    return dumps(
        [
            record.state,
            record.task,
            record.result,
            record.exception,
            record.traceback,
            record.retries,
            record.worker,
            record.queue,
            list(record.args),
            dict(record.kwargs),
            record.started_at,
            record.finished_at,
        ]
    )


def _decode(task_id: str, data: bytes) -> ResultRecord:
    state, task, result, exception, traceback, retries, worker, queue, args, kwargs, started, finished = (
        loads(data)
    )
    return ResultRecord(
        task_id=task_id,
        state=state,
        task=task,
        result=result,
        exception=exception,
        traceback=traceback,
        retries=retries,
        worker=worker,
        queue=queue,
        args=args,
        kwargs=kwargs,
        started_at=started,
        finished_at=finished,
    )
