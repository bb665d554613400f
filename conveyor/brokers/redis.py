"""The Redis broker: many workers on many hosts, one Redis (``redis://``).

Layout (``P`` is the key prefix, ``conveyor`` unless the URL says ``?prefix=``):

Every key of one queue carries the queue's name as its hash tag, ``P:{<queue>}:...``,
so a queue's keys share one Redis Cluster slot. On a ``redis+cluster://`` URL ``P``
is itself a tag, ``{<prefix>}``, which Redis hashes first: every key of the
deployment then shares one slot (docs/brokers.md, Redis Cluster).

- ``P:{<queue>}:q:<0-9>`` list per priority: ready entries, FIFO (RPUSH, LPOP)
- ``P:{<queue>}:lz``      sorted set: receipt -> lease end (epoch s, Redis clock)
- ``P:{<queue>}:lh``      hash: receipt -> leased entry
- ``P:{<queue>}:d``       sorted set: "<seq>|<entry>" -> eta (delays, retries)
- ``P:{<queue>}:seq``     counter making the delay set's members unique
- ``P:{<queue>}:s``       list of at most one token, pushed on a publish while
                          consumers wait on the queue: the wake-up they BLPOP
- ``P:{<queue>}:w``       sorted set: consumer id -> time it began waiting (hand-off)
- ``P:{<queue>}:dlq``     sorted set of the queue's dead-letter ids (score = id)
- ``P:wt:<consumer>``     hash while that consumer waits: fetch token, lease seconds,
                          one field per queue; expires just after its wait
- ``P:in:<consumer>``     list: deliveries handed to that consumer, already leased
- ``P:queues``            set of queue names
- ``P:dlq:<id>``          hash per dead letter; ``P:dlq:all`` sorted set of ids
- ``P:rl:<key>``, ``P:lease:<name>``, ``P:kv:<ns>`` (+ ``P:kvx:<ns>``)
- ``P:log:<stream>``      stream: one entry per append, a ``d`` field per event;
                          ``P:{P:log:<stream>}:n`` counts its events (trimming)

An entry is ``b"<attempts>|<priority>|<task id>\\n" + body``. Every state change
that reads before it writes (lease, reclaim, promote, ack, nack, dead-letter) is one
Lua script (``lua/*.lua``, each declaring its KEYS), so it is atomic across every
client; so is publishing one ready message (it may hand the message straight to a
waiting consumer); the rest of publishing is plain commands.
Times inside scripts come from Redis's clock (``TIME``), so hosts with skewed
clocks still agree on when a lease runs out.

Why lists and not Streams with consumer groups: docs/brokers.md, "Redis".
"""

from __future__ import annotations

import functools
import itertools
import logging
import re
import threading
import time
import uuid
from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

from conveyor import _redis
from conveyor._redis import RedisLink
from conveyor._redis_script import Script
from conveyor.brokers.base import DeadLetter, Delivery, QueueStats, check_name
from conveyor.exceptions import BrokerError
from conveyor.message import MAX_PRIORITY, MIN_PRIORITY, Message, decode

if TYPE_CHECKING:
    from conveyor.backends.redis import RedisBackend

log = logging.getLogger("conveyor.broker")
_LOG_ID = re.compile(r"\d+(-\d+(\.\d+)?)?")
PUBLISH_CHUNK = 1000  # entries per command in publish_many (all sent in one round trip)


def _script(name: str) -> Script:
    return Script("conveyor.brokers", name)


# The Lua scripts, one file each in conveyor/brokers/lua/ (the header of each says
# its KEYS and ARGV). Every state change that reads before it writes is one of them.
_SEND = _script("send")
_FETCH = _script("fetch")
_GIVE_UP = _script("give_up")
_ACK = _script("ack")
_EXTEND = _script("extend")
_NACK = _script("nack")
_DEAD = _script("dead")
_REPLAY = _script("replay")
_PURGE_DEAD = _script("purge_dead")
_STATS = _script("stats")
_PURGE = _script("purge")
_RATE = _script("rate")
_LEASE = _script("lease")
_CLAIM = _script("claim")
_RELEASE = _script("release")
_KV_SET = _script("kv_set")
_KV_GET = _script("kv_get")
_KV_ITEMS = _script("kv_items")
_KV_DELETE = _script("kv_delete")
_LOG_BOUND = _script("log_bound")
_LOG_TRIM = _script("log_trim")
SCRIPTS: tuple[Script, ...] = (_SEND, _FETCH, _GIVE_UP, _ACK, _EXTEND, _NACK, _DEAD, _REPLAY, _PURGE_DEAD)
SCRIPTS += (
    _STATS,
    _PURGE,
    _RATE,
    _LEASE,
    _CLAIM,
    _RELEASE,
    _KV_SET,
    _KV_GET,
    _KV_ITEMS,
    _KV_DELETE,
    _LOG_BOUND,
    _LOG_TRIM,
)


def queue_key(prefix: str, queue: str, part: str) -> str:
    """One key of a queue: ``P:{queue}:part``. The queue's name is the hash tag, so
    every key of one queue lives in one Redis Cluster slot (as qkey() in queue_keys.lua)."""
    return f"{prefix}:{{{queue}}}:{part}"


_QUEUE_PARTS = (*(f"q:{p}" for p in range(10)), "lz", "lh", "d", "s", "w")


@functools.lru_cache(maxsize=1024)
def queue_keys(prefix: str, queue: str) -> tuple[str, ...]:
    """A queue's keys in the order the scripts read them (queue_keys.lua): its ten
    ready lists by priority, lease set, leased entries, delay set, wake-up token list
    and waiting consumers. Cached: every publish and fetch passes them."""
    return tuple(f"{prefix}:{{{queue}}}:{part}" for part in _QUEUE_PARTS)


def fetch_keys(prefix: str, consumer: str, queues: Sequence[str]) -> list[str]:
    """KEYS of fetch.lua and give_up.lua: the consumer's registration and inbox, then
    each queue's keys."""
    keys = [f"{prefix}:wt:{consumer}", f"{prefix}:in:{consumer}"]
    for queue in queues:
        keys += queue_keys(prefix, queue)
    return keys


_unique_counter = itertools.count()


def _token() -> str:
    """Unique across processes, hosts and time: a per-process random tag and a counter.

    A lease receipt is ``<token>:<n>``; two fetches sharing a token would share
    receipts, so the tag is fresh in every process, and the counter needs no system
    call per fetch, unlike os.urandom.
    """
    return f"{_redis.process_tag()}.{next(_unique_counter):x}"


def _unique() -> bytes:
    return f"{_token()}|".encode()


def _priority(message: Message) -> int:
    return min(MAX_PRIORITY, max(MIN_PRIORITY, int(message.priority)))


def _entry(body: bytes, priority: int, task_id: str) -> bytes:
    if "\n" in task_id:  # the id ends the header; it is informational only
        task_id = task_id.replace("\n", " ")
    return f"0|{priority}|{task_id}\n".encode() + body


def _describe(body: bytes) -> tuple[str, str, int]:
    """Task id, name and priority for a dead letter ("" when undecodable)."""
    try:
        message = decode(body)
    except Exception:  # often the very reason it is dead-lettered
        return "", "", 0
    return message.id, message.task, _priority(message)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def lease_key(link: RedisLink, name: str) -> str:
    """A named lease's key (the async client's too)."""
    return link.key("lease", name)


def publish_call(
    prefix: str, message: Message, eta: float | None
) -> tuple[tuple[str, ...], tuple[Any, ...]] | list[tuple[Any, ...]]:
    """What publishing ``message`` sends (the async client's too): KEYS and ARGV of
    send.lua for a ready message, or the commands of one MULTI/EXEC for a delayed one."""
    priority = _priority(message)
    entry = _entry(message.encode(), priority, message.id)
    queue = message.queue
    if eta is None or eta <= time.time():
        return (f"{prefix}:queues", *queue_keys(prefix, queue)), (prefix, queue, priority, entry)
    # A unique member: two identical messages must not collapse into one.
    signal = queue_key(prefix, queue, "s")
    return [
        ("ZADD", queue_key(prefix, queue, "d"), repr(eta), _unique() + entry),
        ("SADD", f"{prefix}:queues", queue),
        ("LPUSH", signal, 1),
        ("LTRIM", signal, 0, 0),
    ]


class RedisBroker:
    """Broker and BrokerAdmin on Redis.

    Safe to share between threads and across ``fork()`` (redis-py gives a forked
    child fresh connections).

    Args:
        url: ``redis://[[user]:password@]host[:port][/db]``, ``rediss://...`` (TLS),
            or
            ``redis+sentinel://[[user]:password@]host:port[,host:port...]/service_name[/db]``,
            or ``redis+cluster://[[user]:password@]host:port[,host:port...]``;
            options ``?prefix=NAME`` (key prefix, default ``conveyor``) and
            ``?publish_retry=SECONDS`` (how long a publish keeps retrying while Redis
            cannot be reached before it raises, default 10), plus any redis-py
            option (``socket_timeout``, ``ssl_cert_reqs``...).

    Raises:
        ConfigurationError: malformed URL, or the ``redis`` package is missing.
        BrokerConnectionError: (on use) Redis cannot be reached.
    """

    def __init__(self, url: str = "redis://localhost:6379/0", *, link: RedisLink | None = None) -> None:
        self.url = url
        self.link = link or RedisLink(url)
        self.prefix = self.link.prefix
        self._generation = 0  # bumped by wake(); a blocked fetch watching it returns
        self._instance = uuid.uuid4().hex[:12]
        self._wake_lock = threading.Lock()

    def __repr__(self) -> str:
        from conveyor._redis import mask

        return f"<RedisBroker {mask(self.url)}>"

    # -- producing -------------------------------------------------------------------
    def publish(self, message: Message, *, eta: float | None = None) -> None:
        """One round trip. A ready message goes through a small script that hands it
        straight to a consumer blocked on its queue when nothing else is ready there
        (the consumer's BLPOP returns it: no wake-up and second fetch), or queues it.
        A delayed one is plain commands: the delay set, the queue name, the token."""
        retry_s = self.link.parsed.publish_retry_s
        call = publish_call(self.prefix, message, message.eta if eta is None else eta)
        if isinstance(call, list):
            self.link.write(call, retry_s=retry_s)
        else:
            self.link.run(_SEND, *call, retry_s=retry_s)

    def publish_many(self, messages: Sequence[Message]) -> None:
        """One MULTI/EXEC of plain commands: one RPUSH per (queue, priority) list and
        one ZADD per delay set, in chunks, then the queue names and wake-up tokens."""
        if not messages:
            return
        prefix = self.prefix
        now = time.time()
        ready: dict[str, list[bytes]] = {}
        later: dict[str, list[Any]] = {}
        # Encode everything first: a message that cannot be encoded leaves none published.
        for m in messages:
            priority = _priority(m)
            entry = _entry(m.encode(), priority, m.id)
            if m.eta is not None and m.eta > now:
                later.setdefault(queue_key(prefix, m.queue, "d"), []).extend((repr(m.eta), _unique() + entry))
            else:
                ready.setdefault(queue_key(prefix, m.queue, f"q:{priority}"), []).append(entry)
        commands: list[tuple[Any, ...]] = []
        for key, entries in ready.items():
            commands += [
                ("RPUSH", key, *entries[i : i + PUBLISH_CHUNK]) for i in range(0, len(entries), PUBLISH_CHUNK)
            ]
        for key, pairs in later.items():
            step = 2 * PUBLISH_CHUNK
            commands += [("ZADD", key, *pairs[i : i + step]) for i in range(0, len(pairs), step)]
        queues = list(dict.fromkeys(m.queue for m in messages))
        commands.append(("SADD", f"{prefix}:queues", *queues))
        for queue in queues:
            signal = queue_key(prefix, queue, "s")
            commands += [("LPUSH", signal, 1), ("LTRIM", signal, 0, 0)]
        self.link.write(commands, retry_s=self.link.parsed.publish_retry_s, atomic=True)

    def publish_raw(self, queue: str, body: bytes, *, priority: int = 0, task_id: str = "") -> None:
        """Store bytes as they are; lets tests queue a body no decoder accepts."""
        keys = [f"{self.prefix}:queues", *queue_keys(self.prefix, queue)]
        self.link.run(_SEND, keys, (self.prefix, queue, priority, _entry(body, priority, task_id)))

    # -- consuming -------------------------------------------------------------------
    def fetch(self, queues: Sequence[str], *, limit: int, lease_s: float, timeout_s: float) -> list[Delivery]:
        if limit <= 0 or not queues:
            return []
        queues = list(dict.fromkeys(queues))
        deadline = time.monotonic() + max(timeout_s, 0.0)
        generation = self._generation
        consumer = self._consumer_id()
        keys = fetch_keys(self.prefix, consumer, queues)
        while True:
            token = _token()
            remaining = deadline - time.monotonic()
            block = round(min(remaining, self.link.max_block_s), 3) if remaining > 0 else 0.0
            if self._generation != generation:
                block = 0.0
            args = (self.prefix, lease_s, limit, token, consumer, repr(max(block, 0.0)), *queues)
            reply = self.link.read(_FETCH, keys, args)
            if reply[0] == b"D":
                return [_handed(item) for item in reply[1]] + _deliveries(reply, queues)
            if block <= 0:
                return []
            handed = self._block(queues, consumer, float(reply[1]))
            if handed is not None:
                return [_handed(handed)]
            if self._generation != generation or deadline - time.monotonic() <= 0:
                # Stop waiting: no hand-off may reach a consumer that is not listening.
                items = self.link.read(_GIVE_UP, keys, (self.prefix, lease_s, consumer, *queues))
                return [_handed(item) for item in items]

    def _wake_key(self) -> str:
        # Per process (a forked child gets its own) and per broker object.
        return self.link.key("wk", f"{_redis._pid}-{self._instance}")

    def _consumer_id(self) -> str:
        # Per process, broker object and thread: names this fetcher's inbox.
        return f"{_redis._pid}-{self._instance}-{threading.get_ident()}"

    def _block(self, queues: list[str], consumer: str, seconds: float) -> bytes | None:
        """Wait for a hand-off, a publish to any of ``queues`` or a local wake(),
        without polling. Returns a delivery handed to this consumer, if that ended it.

        The fetch script registered this consumer as waiting: a publish to a queue
        with nothing ready leases the message to it and pushes it onto its inbox
        (``P:in:<consumer>``), the first key here. Other publishes (delays, bulk, a
        queue that already had work) leave one token in the queue's signal list
        (``P:s:<queue>``, never more than one); BLPOP takes it, so one publish wakes
        one blocked consumer, not all of them. A token left while nobody waited makes
        the next wait return at once: a publish between the fetch script and this
        call is never missed, at the cost of one spare fetch now and then. A consumer
        that fills its batch passes a token on, so a burst still wakes everyone.
        """
        inbox = self.link.key("in", consumer)
        keys = [inbox] + [queue_key(self.prefix, q, "s") for q in queues] + [self._wake_key()]
        timeout = round(max(min(seconds, self.link.max_block_s), 0.001), 3)
        reply = self.link.send([("BLPOP", *keys, timeout)])[0]
        if reply and _text(reply[0]) == inbox:
            return bytes(reply[1])
        return None

    def ack(self, deliveries: Sequence[Delivery]) -> None:
        for queue, receipts in _by_queue(deliveries).items():
            keys = (queue_key(self.prefix, queue, "lz"), queue_key(self.prefix, queue, "lh"))
            self.link.run(_ACK, keys, receipts)

    def nack(self, delivery: Delivery, *, retry_at: float | None = None, reason: str = "") -> None:
        at = "" if retry_at is None else repr(retry_at)
        keys = [*queue_keys(self.prefix, delivery.queue), queue_key(self.prefix, delivery.queue, "seq")]
        self.link.run(_NACK, keys, (delivery.receipt, at))

    def dead_letter(self, delivery: Delivery, *, reason: str) -> None:
        task_id, task_name, priority = _describe(delivery.body)
        queue, prefix = delivery.queue, self.prefix
        keys = [
            f"{prefix}:dlq:seq",
            f"{prefix}:dlq:all",
            queue_key(prefix, queue, "dlq"),
            f"{prefix}:queues",
            queue_key(prefix, queue, "lz"),
            queue_key(prefix, queue, "lh"),
        ]
        self.link.run(
            _DEAD,
            keys,
            (
                self.prefix,
                delivery.queue,
                delivery.receipt,
                priority,
                task_id,
                task_name,
                reason,
                repr(time.time()),
                delivery.body,
            ),
        )

    def extend(self, deliveries: Sequence[Delivery], *, lease_s: float) -> None:
        if not deliveries:
            return
        with self.link.batch():  # one round trip, whatever the number of queues
            for queue, receipts in _by_queue(deliveries).items():
                self.link.run(_EXTEND, (queue_key(self.prefix, queue, "lz"),), (lease_s, *receipts))

    def wake(self) -> None:
        with self._wake_lock:
            self._generation += 1
            generation = self._generation
        key = self._wake_key()
        # The fetch compares generations, so a token left over from an old wake()
        # costs one spare loop, never an early return; the key expires unused.
        self.link.send([("RPUSH", key, generation), ("PEXPIRE", key, 60_000)])

    def batch(self, *, reply_later: bool = False) -> AbstractContextManager[None]:
        """Queue this thread's writes and send them as one MULTI/EXEC at the end
        (results too, when the backend is this broker's: see ``result_backend``).

        ``reply_later``: the MULTI/EXEC is sent without waiting for Redis's reply,
        which is read before this thread's next command or by ``read_replies()``."""
        return self.link.batch(reply_later=reply_later)

    def read_replies(self) -> None:
        """Read what this thread's ``batch(reply_later=True)`` writes still owe, and
        send again those that failed."""
        self.link.read_replies()

    def result_backend(self, *, result_expires_s: float) -> RedisBackend:
        """Results in this broker's Redis, on the same connections and batches."""
        from conveyor.backends.redis import RedisBackend

        return RedisBackend(self.url, result_expires_s=result_expires_s, link=self.link)

    def close(self) -> None:
        self.link.close()

    # -- admin -----------------------------------------------------------------------
    def _queue_names(self) -> list[str]:
        return sorted(_text(q) for q in self.link.send([("SMEMBERS", self.link.key("queues"))])[0])

    def queue_stats(self, queues: Sequence[str] | None = None) -> list[QueueStats]:
        names = self._queue_names() if queues is None else list(dict.fromkeys(queues))
        if not names:
            return []
        keys = [self.link.key("queues")]
        for name in names:
            keys += (*queue_keys(self.prefix, name), queue_key(self.prefix, name, "dlq"))
        reply = self.link.read(_STATS, keys, ("1" if queues is None else "0", *names))
        found = {
            _text(reply[i]): QueueStats(_text(reply[i]), *(int(v) for v in reply[i + 1 : i + 5]))
            for i in range(0, len(reply), 5)
        }
        if queues is not None:
            return [found[name] for name in queues]
        return [found[name] for name in sorted(found)]

    def purge(self, queue: str | None = None) -> int:
        names = self._queue_names() if queue is None else [queue]
        return sum(int(self.link.read(_PURGE, queue_keys(self.prefix, name), ())) for name in names)

    def dead_letters(
        self, queue: str | None = None, *, limit: int = 100, offset: int = 0
    ) -> list[DeadLetter]:
        index = self.link.key("dlq", "all") if queue is None else queue_key(self.prefix, queue, "dlq")
        if limit <= 0:
            return []

        ids = [_text(i) for i in self.link.send([("ZREVRANGE", index, offset, offset + limit - 1)])[0]]
        if not ids:
            return []
        found = self.link.send([("HGETALL", self.link.key("dlq", i)) for i in ids])
        return [_dead_letter(i, _pairs(flat)) for i, flat in zip(ids, found, strict=True) if flat]

    def get_dead_letter(self, entry_id: str) -> DeadLetter | None:
        if not str(entry_id).isdigit():
            return None
        key = self.link.key("dlq", str(int(entry_id)))
        flat = self.link.send([("HGETALL", key)])[0]
        return _dead_letter(str(int(entry_id)), _pairs(flat)) if flat else None

    def replay_dead_letters(self, entry_ids: Sequence[str] | None = None) -> int:
        return self._dead_op(_REPLAY, entry_ids)

    def purge_dead_letters(self, entry_ids: Sequence[str] | None = None) -> int:
        return self._dead_op(_PURGE_DEAD, entry_ids)

    def _dead_op(self, script: Script, entry_ids: Sequence[str] | None) -> int:
        """One script per dead letter, each in its queue's slot; a letter replayed or
        purged meanwhile by someone else is skipped (the script checks it is there)."""
        if entry_ids is None:
            ids = [_text(i) for i in self.link.send([("ZRANGE", self.link.key("dlq", "all"), 0, -1)])[0]]
        else:
            ids = [str(i) for i in sorted({int(e) for e in entry_ids if str(e).isdigit()})]
        if not ids:
            return 0
        queues = self.link.send([("HGET", self.link.key("dlq", i), "q") for i in ids])
        done = 0
        for entry_id, raw in zip(ids, queues, strict=True):
            if raw is None:
                continue
            queue = _text(raw)
            keys = [
                self.link.key("dlq", entry_id),
                self.link.key("dlq", "all"),
                queue_key(self.prefix, queue, "dlq"),
            ]
            if script is _REPLAY:
                keys += (self.link.key("queues"), *queue_keys(self.prefix, queue))
            done += int(self.link.read(script, keys, (entry_id, queue)))
        return done

    def rate_limit_wait(self, key: str, interval_s: float, *, now: float | None = None) -> float:
        if interval_s <= 0:
            return 0.0
        args = (repr(float(interval_s)), "" if now is None else repr(now))
        return float(self.link.read(_RATE, (self.link.key("rl", key),), args))

    def server_time(self) -> float:
        """Now by Redis's clock (``TIME``), the one its TTLs and scripts use: beat counts
        due times by it, so a stepped local clock neither sends runs early nor late."""
        seconds, micros = self.link.send([("TIME",)])[0]
        return int(seconds) + int(micros) / 1e6

    def acquire_lease(self, name: str, owner: str, ttl_s: float) -> bool:
        args = (owner, max(1, int(ttl_s * 1000)))
        return bool(self.link.read(_LEASE, (lease_key(self.link, name),), args))

    def claim_lease(self, name: str, owner: str, ttl_s: float) -> str:
        ttl_ms = max(1, int(ttl_s * 1000))
        holder = self.link.read(_CLAIM, (lease_key(self.link, name),), (owner, ttl_ms))
        return holder.decode() if isinstance(holder, bytes) else str(holder)

    def release_lease(self, name: str, owner: str) -> None:
        self.link.run(_RELEASE, (lease_key(self.link, name),), (owner,))

    # -- upgrade -----------------------------------------------------------------------
    def _old_layout(self) -> list[tuple[str, str]]:
        """(old key, new key) for each queue key written before queues had hash tags
        (``P:q:<queue>:<p>``, ``P:lz:<queue>``...), where the old key still exists."""
        prefix, pairs = self.prefix, []
        for queue in self._queue_names():
            pairs += [(f"{prefix}:q:{queue}:{p}", queue_key(prefix, queue, f"q:{p}")) for p in range(10)]
            pairs += [
                (f"{prefix}:{part}:{queue}", queue_key(prefix, queue, part)) for part in ("lz", "lh", "d")
            ]
            pairs.append((f"{prefix}:dlq:q:{queue}", queue_key(prefix, queue, "dlq")))
        if not pairs:
            return []
        found = self.link.send([("EXISTS", old) for old, _ in pairs])
        return [pair for pair, there in zip(pairs, found, strict=True) if there]

    def old_layout_keys(self) -> int:
        """How many keys are still in the layout before hash tags (``migrate_layout``)."""
        return len(self._old_layout())

    def migrate_layout(self) -> int:
        """Move queues written by Conveyor before queue keys had hash tags into the
        current layout; returns how many keys moved. Run it (``conveyor migrate``)
        with the old version's workers and producers stopped: it is not atomic, and
        they would go on writing the old keys. Leases move too, so what was running
        when they stopped comes back when its lease runs out."""
        prefix = self.prefix
        pairs = self._old_layout()
        for old, new in pairs:
            kind = _text(self.link.send([("TYPE", old)])[0])
            if not self.link.send([("EXISTS", new)])[0]:
                self.link.send([("RENAME", old, new)])
                continue
            # Both exist (the new version already ran): merge, old entries first.
            if kind == "list":
                items = self.link.send([("LRANGE", old, 0, -1)])[0]
                self.link.write([("LPUSH", new, *reversed(items)), ("DEL", old)], atomic=True)
            elif kind == "zset":
                flat = self.link.send([("ZRANGE", old, 0, -1, "WITHSCORES")])[0]
                pairs_ = [a for i in range(0, len(flat), 2) for a in (flat[i + 1], flat[i])]
                self.link.write([("ZADD", new, *pairs_), ("DEL", old)], atomic=True)
            elif kind == "hash":
                flat = self.link.send([("HGETALL", old)])[0]
                self.link.write([("HSET", new, *flat), ("DEL", old)], atomic=True)
        # Delay-set members were made unique by one counter for all queues; each queue
        # counts on from it, so no new member can equal an old one.
        seq = self.link.send([("GET", f"{prefix}:seq")])[0]
        if seq is not None:
            names = self._queue_names()
            self.link.send([("SET", queue_key(prefix, q, "seq"), seq, "NX") for q in names])
            # Wake-up tokens and waiting sets only live as long as a wait: drop the old ones.
            self.link.send([("DEL", f"{prefix}:seq", *(f"{prefix}:{p}:{q}" for q in names for p in "sw"))])
        return len(pairs)

    # -- kv records --------------------------------------------------------------------
    def _kv_keys(self, namespace: str) -> tuple[str, str]:
        check_name("namespace", namespace)
        return self.link.key("kv", namespace), self.link.key("kvx", namespace)

    def kv_set(self, namespace: str, key: str, value: bytes, *, ttl_s: float | None = None) -> None:
        ttl = "" if ttl_s is None else repr(float(ttl_s))
        self.link.read(_KV_SET, self._kv_keys(namespace), (key, value, ttl))

    def kv_get(self, namespace: str, key: str) -> bytes | None:
        value = self.link.read(_KV_GET, self._kv_keys(namespace), (key,))
        return None if value is None else bytes(value)

    def kv_items(self, namespace: str) -> dict[str, bytes]:
        flat = self.link.read(_KV_ITEMS, self._kv_keys(namespace), ())
        return {_text(flat[i]): bytes(flat[i + 1]) for i in range(0, len(flat), 2)}

    def kv_delete(self, namespace: str, key: str) -> bool:
        return bool(self.link.read(_KV_DELETE, self._kv_keys(namespace), (key,)))

    # -- logs --------------------------------------------------------------------------
    def _log_key(self, stream: str) -> str:
        return self.link.key("log", check_name("stream", stream))

    def _log_keys(self, stream: str) -> tuple[str, str]:
        key = self._log_key(stream)
        return key, f"{self.prefix}:{{{key}}}:n"  # the count, in the stream's own cluster slot

    def log_append(self, stream: str, entries: Sequence[bytes], *, maxlen: int) -> None:
        """One stream entry for all ``entries`` (one XADD, a field per event), the log
        kept at about ``maxlen`` events: inside a ``batch()`` it rides with the
        worker's settle (task events with the results they describe).

        Plain commands, not a script: a script is handed the events as arguments, and
        that copy costs Redis more than the XADD itself. The event count kept beside
        the stream says when the oldest entries must go (log_bound.lua), about once
        per twentieth of ``maxlen`` events."""
        if not entries:
            return
        keys = self._log_keys(stream)
        fields: list[Any] = []
        for entry in entries:
            fields += ("d", entry)
        maxlen = max(1, int(maxlen))
        bound = maxlen + -(-maxlen // 20)

        def trim_when_over(count: Any) -> None:
            if int(count) > bound:
                try:
                    self.link.read(_LOG_BOUND, keys, (maxlen,))
                except BrokerError as exc:  # the next append tries again: the count stays over
                    log.warning("could not trim the %s log: %s", stream, exc)

        with self.link.batch():
            self.link.command("XADD", keys[0], "*", *fields)
            self.link.command_then(("INCRBY", keys[1], len(entries)), trim_when_over)

    def log_read(
        self, stream: str, *, after: str = "0", limit: int = 1000, timeout_s: float = 0.0
    ) -> list[tuple[str, bytes]]:
        """Events after ``after``, each with its own id: an entry's last event has the
        entry's id, and one with ``n`` more after it in its entry ``<entry id>.<n>``
        (so "after" an event inside an entry reads that entry's rest first)."""
        key = self._log_key(stream)
        after = after or "0"
        if not _LOG_ID.fullmatch(after):
            raise ValueError(f"invalid log id {after!r}: pass an id returned by log_read or log_tail")
        limit = max(1, limit)
        entry, _, later = after.partition(".")
        if later:
            # Every entry holds at least one event: ``limit`` entries are enough.
            reply = self.link.send([("XRANGE", key, entry, "+", "COUNT", limit)])[0]
            events = _log_events(reply, entry, int(later))
            if events:
                return events[:limit]
        deadline = time.monotonic() + max(timeout_s, 0.0)
        while True:
            remaining = deadline - time.monotonic()
            args: list[Any] = ["XREAD", "COUNT", limit]
            if remaining > 0:
                args += ["BLOCK", max(1, int(min(remaining, self.link.max_block_s) * 1000))]
            args += ["STREAMS", key, entry]
            reply = self.link.send([tuple(args)])[0]
            events = _log_events(reply[0][1] if reply else [])
            if events or deadline - time.monotonic() <= 0:
                return events[:limit]

    def log_tail(self, stream: str) -> str:
        key = self._log_key(stream)
        last = self.link.send([("XREVRANGE", key, "+", "-", "COUNT", 1)])[0]
        return _text(last[0][0]) if last else "0"

    def log_trim(self, stream: str, *, older_than_s: float) -> int:
        """Drop the entries appended before then; returns how many events they held."""
        cutoff_ms = int((self.server_time() - older_than_s) * 1000)
        return int(self.link.read(_LOG_TRIM, self._log_keys(stream), (max(cutoff_ms, 0),)))


def _log_events(entries: Sequence[Any], partial: str = "", later: int = 0) -> list[tuple[str, bytes]]:
    """Stream entries (``[[id, [field, value, ...]], ...]``) as one item per event,
    with the ids ``log_read`` describes; of the entry ``partial``, its last ``later``
    events only."""
    out: list[tuple[str, bytes]] = []
    for raw_id, fields in entries:
        entry_id = _text(raw_id)
        values = fields[1::2]
        count = len(values)
        first = count - later if entry_id == partial else 0
        for index in range(max(first, 0), count):
            left = count - 1 - index
            out.append((f"{entry_id}.{left}" if left else entry_id, bytes(values[index])))
    return out


def _pairs(flat: Sequence[Any]) -> dict[Any, Any]:
    return dict(zip(flat[::2], flat[1::2], strict=True))


def _by_queue(deliveries: Sequence[Delivery]) -> dict[str, list[str]]:
    grouped: dict[str, list[str]] = {}
    for d in deliveries:
        grouped.setdefault(d.queue, []).append(d.receipt)
    return grouped


def _handed(item: bytes) -> Delivery:
    """A delivery from an inbox: ``<receipt>\\n<queue>\\n<entry>``."""
    receipt, queue, entry = bytes(item).split(b"\n", 2)
    header, _, body = entry.partition(b"\n")
    attempts, _, rest = header.partition(b"|")
    return Delivery(
        body=body,
        queue=queue.decode(),
        receipt=receipt.decode(),
        attempt=int(attempts),
        message_id=rest.partition(b"|")[2].decode(errors="replace"),
    )


def _deliveries(reply: list[Any], queues: list[str]) -> list[Delivery]:
    """Popped deliveries: ``queue index, receipt, entry`` triples after the handed ones.

    The receipt comes from the script, which numbers it after the handed deliveries:
    numbered again here, the two would disagree whenever one fetch takes both.
    """
    out = []
    for i in range(2, len(reply), 3):
        header, _, body = reply[i + 2].partition(b"\n")
        attempts, _, rest = header.partition(b"|")
        task_id = rest.partition(b"|")[2]
        out.append(
            Delivery(
                body=body,
                queue=queues[reply[i] - 1],
                receipt=_text(reply[i + 1]),
                attempt=int(attempts),
                message_id=task_id.decode(errors="replace"),
            )
        )
    return out


def _dead_letter(entry_id: str, fields: dict[Any, Any]) -> DeadLetter:
    return DeadLetter(
        id=entry_id,
        queue=_text(fields[b"q"]),
        body=bytes(fields[b"b"]),
        reason=_text(fields.get(b"r", b"")),
        failed_at=float(fields.get(b"f", b"0")),
        task_id=_text(fields[b"t"]) or None if fields.get(b"t") else None,
        task_name=_text(fields[b"n"]) or None if fields.get(b"n") else None,
    )
