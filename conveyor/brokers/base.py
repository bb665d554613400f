"""The broker seam: everything the worker, the producer and the admin tools need
from a message store, and nothing about how the store does it.

The worker never talks to sqlite3 or redis itself; it talks to a ``Broker``. A new
broker is one module implementing ``Broker`` and ``BrokerAdmin`` plus one fixture in
``tests/brokers/test_contract.py``.

Delivery semantics every broker must give (DESIGN.md, "Delivery"):

- ``fetch`` leases messages: a leased message is invisible to other consumers until
  its lease runs out, then it is delivered again. This is what makes a SIGKILLed
  worker lose nothing.
- ``ack`` removes a message for good; ``nack`` makes it visible again (now or later);
  ``dead_letter`` moves it to the dead-letter queue with a reason.
- ``extend`` pushes leases forward; a live worker calls it for every message it holds,
  so a long task is never redelivered while its worker lives.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable
from urllib.parse import urlsplit, urlunsplit

from conveyor.exceptions import ConfigurationError
from conveyor.message import Message

if TYPE_CHECKING:
    from conveyor.backends.base import ResultBackend


@dataclass(frozen=True, slots=True)
class Delivery:
    """A leased message as fetched by one consumer.

    ``body`` is the raw bytes, not a decoded ``Message``: a body that cannot be
    decoded must still be deliverable so the worker can dead-letter it with the reason.
    ``receipt`` proves the lease: ack/nack/extend with a receipt whose lease has run
    out (and been re-fetched by someone else) do nothing.
    ``attempt`` counts deliveries of this message, 1 on the first.
    """

    body: bytes
    queue: str
    receipt: str
    attempt: int
    message_id: str = ""


@dataclass(frozen=True, slots=True)
class QueueStats:
    name: str
    ready: int  # waiting and due
    in_flight: int  # leased by a worker
    delayed: int  # eta or retry countdown in the future
    dead: int  # in the dead-letter queue


@dataclass(frozen=True, slots=True)
class DeadLetter:
    id: str
    queue: str
    body: bytes
    reason: str
    failed_at: float
    task_id: str | None = None
    task_name: str | None = None


@runtime_checkable
class Broker(Protocol):
    url: str

    def publish(self, message: Message, *, eta: float | None = None) -> None:
        """Store one message; with ``eta`` it becomes fetchable at that epoch time."""

    def publish_many(self, messages: Sequence[Message]) -> None:
        """Store many messages in one round trip (Task.map); each message's own eta applies."""

    def fetch(self, queues: Sequence[str], *, limit: int, lease_s: float, timeout_s: float) -> list[Delivery]:
        """Lease up to ``limit`` due messages, highest priority first, FIFO within a priority.

        Queues are served in the order given when several have messages. Blocks up to
        ``timeout_s`` when nothing is due and returns ``[]`` then, without busy-waiting.
        """

    def ack(self, deliveries: Sequence[Delivery]) -> None:
        """Delete the messages for good."""

    def nack(self, delivery: Delivery, *, retry_at: float | None = None, reason: str = "") -> None:
        """Give the message back: visible again at ``retry_at`` (now when None)."""

    def dead_letter(self, delivery: Delivery, *, reason: str) -> None:
        """Move the message to the dead-letter queue with ``reason``; works after an ack too."""

    def extend(self, deliveries: Sequence[Delivery], *, lease_s: float) -> None:
        """Renew leases so they run out ``lease_s`` from now."""

    def batch(self, *, reply_later: bool = False) -> AbstractContextManager[None]:
        """Group this thread's following writes into one atomic round trip where the
        store can (SQLite: one transaction, results included when they share the file).

        The worker settles each batch of outcomes inside one: result, follow-up
        messages and ack commit together or not at all.

        ``reply_later``: the store may send the batch and return before it answers
        (Redis); a failure then shows in ``read_replies()``, which sends it again.
        Stores that commit before returning ignore it.
        """

    def read_replies(self) -> None:
        """Wait for what this thread's ``batch(reply_later=True)`` writes still owe,
        sending again any that failed (raises ``BrokerError`` if that fails too)."""

    def wake(self) -> None:
        """Make a ``fetch`` blocked in another thread of this process return early."""

    def close(self) -> None: ...


@runtime_checkable
class BrokerAdmin(Protocol):
    """Inspection and repair, for the CLI and the dashboard, and shared primitives."""

    def queue_stats(self, queues: Sequence[str] | None = None) -> list[QueueStats]: ...

    def purge(self, queue: str | None = None) -> int:
        """Delete waiting and delayed messages (not in-flight ones); returns how many."""

    def dead_letters(
        self, queue: str | None = None, *, limit: int = 100, offset: int = 0
    ) -> list[DeadLetter]: ...

    def get_dead_letter(self, entry_id: str) -> DeadLetter | None: ...

    def replay_dead_letters(self, entry_ids: Sequence[str] | None = None) -> int:
        """Put dead letters back on their queue (all when None); returns how many."""

    def purge_dead_letters(self, entry_ids: Sequence[str] | None = None) -> int: ...

    def rate_limit_wait(self, key: str, interval_s: float, *, now: float | None = None) -> float:
        """Shared rate limiter (GCRA): 0 and a slot is taken, or the seconds to wait.

        One slot per ``interval_s`` for ``key`` across every process using this
        broker, which is what makes ``rate_limit="10/m"`` hold across all workers.
        """

    def acquire_lease(self, name: str, owner: str, ttl_s: float) -> bool:
        """Take or renew a named lease (the scheduler's leader lease)."""

    def claim_lease(self, name: str, owner: str, ttl_s: float) -> str:
        """Take a named lease unless someone holds it; returns its holder, atomically.

        ``owner`` when this call took it (or held it already), else the owner that
        holds it: unique tasks answer a second send with the first task's id.
        """

    def release_lease(self, name: str, owner: str) -> None:
        """Give a lease back if ``owner`` still holds it; inside ``batch()`` it joins
        the batch (released with the result it follows)."""

    def result_backend(self, *, result_expires_s: float) -> ResultBackend:
        """The result store that lives with this broker (``result_backend`` unset)."""

    # Small keyed records: run-time periodic schedules and their state, worker
    # heartbeats. Kept in the broker so every process that reaches it sees them,
    # with no second service to run.

    def kv_set(self, namespace: str, key: str, value: bytes, *, ttl_s: float | None = None) -> None:
        """Store ``value`` under (namespace, key), replacing any; gone ``ttl_s`` from now when given."""

    def kv_get(self, namespace: str, key: str) -> bytes | None: ...

    def kv_items(self, namespace: str) -> dict[str, bytes]:
        """Every live record in ``namespace``."""

    def kv_delete(self, namespace: str, key: str) -> bool:
        """Remove a record; True when it existed."""

    # Append-only logs: task events, control commands and their replies. Ids are
    # opaque strings ordered within one stream; "0" reads from the start.

    def log_append(self, stream: str, entries: Sequence[bytes], *, maxlen: int) -> None:
        """Append in one round trip, keeping about the newest ``maxlen`` entries
        (trimming may lag a little behind, never drop newer entries first)."""

    def log_read(
        self, stream: str, *, after: str = "0", limit: int = 1000, timeout_s: float = 0.0
    ) -> list[tuple[str, bytes]]:
        """Up to ``limit`` entries with an id after ``after``, oldest first.

        When there are none, blocks up to ``timeout_s`` for the first one to be
        appended (without busy-waiting) and returns ``[]`` if none comes.
        """

    def log_tail(self, stream: str) -> str:
        """The newest entry's id ("0" when empty): read after it to see only what comes next."""

    def log_trim(self, stream: str, *, older_than_s: float) -> int:
        """Drop entries appended more than ``older_than_s`` seconds ago; returns how many."""


class AdminBroker(Broker, BrokerAdmin, Protocol):
    """What every concrete broker in Conveyor implements."""


_NAME = re.compile(r"[A-Za-z0-9_.:-]+")


def check_name(kind: str, name: str) -> str:
    """Stream and namespace names become file names (wake channels) and Redis keys."""
    if not _NAME.fullmatch(name):
        raise ValueError(f"invalid {kind} name {name!r}: use letters, digits and _ . : -")
    return name


def parse_log_id(entry_id: str) -> int:
    try:
        return int(entry_id)
    except ValueError:
        raise ValueError(
            f"invalid log id {entry_id!r}: pass an id returned by log_read or log_tail"
        ) from None


def mask_url(url: str) -> str:
    """Hide the password in a broker URL; DESIGN.md: never printed in full."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable url>"
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    netloc = f"{user}:***@{host}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def broker_from_url(url: str) -> AdminBroker:
    """Make the broker a URL names; heavy client libraries are imported only here."""
    scheme = url.split(":", 1)[0].lower()
    if scheme == "sqlite":
        from conveyor.brokers.sqlite import SQLiteBroker

        return SQLiteBroker(url)
    if scheme == "memory":
        from conveyor.brokers.memory import MemoryBroker

        return MemoryBroker(url)
    if scheme in ("redis", "rediss", "redis+sentinel", "redis+cluster", "rediss+cluster"):
        from conveyor.brokers.redis import RedisBroker

        return RedisBroker(url)
    if scheme in ("postgresql", "postgres"):
        from conveyor.brokers.postgres import PostgresBroker

        return PostgresBroker(url)
    raise ConfigurationError(
        f"unknown broker URL scheme {scheme!r} in {mask_url(url)}: use sqlite:///path.sqlite3, redis://host:6379/0, "
        "postgresql://user@host:5432/db or memory://"
    )
