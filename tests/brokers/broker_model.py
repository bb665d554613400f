"""A plain-Python model of the broker contract, for the model-based test (test_model.py).

It knows what every broker promises and nothing about how one keeps it: where each
published message is (ready, delayed, in flight under which receipt, dead, gone),
how many deliveries it has had, and which fetch results the contract allows.

Time is coarse on purpose: a lease or a delay is either *short* (it ends at the
test's next clock jump) or *long* (it never ends within a run), so the model never
has to guess what a broker's clock says.

Order is checked where every broker agrees (docs/brokers.md, test_contract*.py):

- higher priority first (9 down to 0), queue by queue in the order asked;
- FIFO among messages queued at the tail and never delivered since ("fresh": a
  publish, a replay);
- a message that comes back without a delay (lease ran out, nack now) keeps its
  place: it is not served after fresh messages queued behind it.

Where the brokers legitimately differ it checks nothing: among messages that came
back, and for a delayed message once it is due (memory keeps its publish position,
SQLite and Redis queue it when they move it).
"""

from __future__ import annotations

import enum
import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from conveyor.brokers.base import DeadLetter, Delivery, QueueStats
from conveyor.message import MAX_PRIORITY, MIN_PRIORITY, Message


class State(enum.Enum):
    READY = "ready"  # queued, or a lease that ran out, or a delay that is due
    DELAYED = "delayed"
    IN_FLIGHT = "in flight"
    DEAD = "dead"
    GONE = "gone"  # acknowledged or purged


@dataclass(eq=False)
class Entry:
    message: Message
    state: State
    attempts: int = 0  # deliveries so far
    short: bool = False  # its lease or delay ends at the next clock jump
    holder: int | None = None  # the consumer holding the lease
    live: Delivery | None = None  # the delivery whose receipt holds the lease
    # A lease that ran out and nobody fetched again: a late ack may still land
    # (SQLite, Redis) or not (memory); either way it must not touch anything else.
    late: Delivery | None = None
    acked_with: Delivery | None = None
    place: int | None = None  # queue position every broker keeps (module docstring)
    fresh: bool = False
    dead_id: str | None = None
    reason: str = ""

    @property
    def id(self) -> str:
        return self.message.id

    @property
    def queue(self) -> str:
        return self.message.queue

    @property
    def priority(self) -> int:
        return min(MAX_PRIORITY, max(MIN_PRIORITY, int(self.message.priority)))


class BrokerModel:
    """Every message one run published, and where the contract says it is."""

    def __init__(self, queues: Sequence[str]) -> None:
        self.queues = list(queues)
        self.entries: dict[str, Entry] = {}
        self.deliveries: list[Delivery] = []  # every delivery ever made, stale ones too
        self._places = itertools.count()

    # -- queries -------------------------------------------------------------------
    def where(self, state: State, queues: Iterable[str] | None = None) -> list[Entry]:
        wanted = set(self.queues if queues is None else queues)
        return [e for e in self.entries.values() if e.state is state and e.queue in wanted]

    def stale(self) -> list[Delivery]:
        """Deliveries whose receipt certainly holds nothing any more."""
        out = []
        for d in self.deliveries:
            entry = self.entries[d.message_id]
            if d is not entry.live and d is not entry.late:
                out.append(d)
        return out

    def expected_stats(self) -> list[QueueStats]:
        def count(queue: str, state: State) -> int:
            return sum(1 for e in self.entries.values() if e.queue == queue and e.state is state)

        return [
            QueueStats(
                q,
                ready=count(q, State.READY),
                in_flight=count(q, State.IN_FLIGHT),
                delayed=count(q, State.DELAYED),
                dead=count(q, State.DEAD),
            )
            for q in self.queues
        ]

    def expected_dead(self) -> set[tuple[str, str, str, str]]:
        return {(str(e.dead_id), e.queue, e.id, e.reason) for e in self.where(State.DEAD)}

    @staticmethod
    def observed_dead(letters: Sequence[DeadLetter]) -> set[tuple[str, str, str, str]]:
        return {(d.id, d.queue, str(d.task_id), d.reason) for d in letters}

    # -- producing -----------------------------------------------------------------
    def published(self, message: Message, *, delay: str) -> None:
        """``delay``: "none" (due now), "short" or "long"."""
        entry = Entry(message, State.READY)
        if delay == "none":
            self._queue_fresh(entry)
        else:
            entry.state, entry.short = State.DELAYED, delay == "short"
        self.entries[message.id] = entry

    def _queue_fresh(self, entry: Entry) -> None:
        entry.state, entry.fresh, entry.place = State.READY, True, next(self._places)

    # -- consuming -----------------------------------------------------------------
    def check_fetch(
        self, queues: Sequence[str], limit: int, got: Sequence[Delivery], *, handed: str | None = None
    ) -> list[str]:
        """What is wrong with ``got`` as the answer to fetch(queues, limit) now.

        ``handed``: a message the broker may have leased to this consumer when it was
        published (a direct hand-off), which then comes first and outside the order.
        """
        problems = []
        rest = list(got)
        if handed is not None:
            if not rest or rest[0].message_id != handed:
                problems.append(f"the message handed off ({handed}) is not the first delivery")
            else:
                problems += self._check_delivery(rest[0])
                rest, limit = rest[1:], limit - 1
        ids = [d.message_id for d in rest]
        if len(set(ids)) != len(ids):
            problems.append(f"one fetch delivered a message twice: {ids}")
        for d in rest:
            problems += self._check_delivery(d)
        if problems:
            return problems
        position = 0
        for queue in queues:
            ready = [e for e in self.where(State.READY, [queue]) if e.id != handed]
            take = min(limit - position, len(ready))
            part = [self.entries[d.message_id] for d in rest[position : position + take]]
            if any(e.queue != queue for e in part):
                problems.append(f"expected {take} from {queue!r} next, got {[(e.queue, e.id) for e in part]}")
            else:
                problems += _order_problems(queue, ready, part)
            position += take
        if position != len(rest):
            problems.append(f"fetched {len(rest)} (limit {limit}); {position} were ready in {list(queues)}")
        return problems

    def _check_delivery(self, d: Delivery) -> list[str]:
        entry = self.entries.get(d.message_id)
        if entry is None:
            return [f"delivered a message nobody published: {d.message_id!r}"]
        if entry.state is not State.READY:
            holder = f" by consumer {entry.holder}" if entry.state is State.IN_FLIGHT else ""
            return [f"delivered {entry.id} while it is {entry.state.value}{holder}"]
        problems = []
        if d.queue != entry.queue:
            problems.append(f"{entry.id} delivered from {d.queue!r}, published to {entry.queue!r}")
        if d.attempt != entry.attempts + 1:
            problems.append(f"{entry.id} delivered as attempt {d.attempt}, expected {entry.attempts + 1}")
        if d.body != entry.message.encode():
            problems.append(f"{entry.id} delivered with another body")
        return problems

    def fetched(self, consumer: int, got: Sequence[Delivery], *, short: bool) -> None:
        for d in got:
            entry = self.entries[d.message_id]
            entry.state, entry.holder, entry.live, entry.late = State.IN_FLIGHT, consumer, d, None
            entry.attempts += 1
            entry.short, entry.fresh = short, False
            self.deliveries.append(d)

    def acked(self, deliveries: Sequence[Delivery]) -> None:
        for d in deliveries:
            entry = self._holding(d)
            entry.state, entry.live, entry.holder, entry.acked_with = State.GONE, None, None, d

    def late_acked(self, d: Delivery, *, landed: bool) -> None:
        entry = self.entries[d.message_id]
        assert entry.late is d
        if landed:
            entry.state, entry.late, entry.acked_with = State.GONE, None, d

    def nacked(self, d: Delivery, *, delay: str) -> None:
        entry = self._holding(d)
        entry.live = entry.holder = None
        if delay == "none":
            entry.state = State.READY  # keeps its place
        else:
            entry.state, entry.short, entry.place = State.DELAYED, delay == "short", None

    def dead_lettered(self, d: Delivery, *, reason: str, dead_id: str) -> None:
        entry = self.entries[d.message_id]
        assert entry.live is d or (entry.state is State.GONE and entry.acked_with is d)
        entry.state, entry.live, entry.holder, entry.late = State.DEAD, None, None, None
        entry.acked_with, entry.dead_id, entry.reason, entry.place = None, dead_id, reason, None

    def extended(self, deliveries: Sequence[Delivery], *, short: bool) -> None:
        for d in deliveries:
            self._holding(d).short = short

    def _holding(self, d: Delivery) -> Entry:
        entry = self.entries[d.message_id]
        assert entry.state is State.IN_FLIGHT and entry.live is d, f"{d} holds no lease in the model"
        return entry

    # -- time and admin ---------------------------------------------------------------
    def jumped(self, *, forever: bool = False) -> None:
        """The clock passed every short lease and delay (every one, when ``forever``)."""
        for entry in self.entries.values():
            if not (entry.short or forever):
                continue
            if entry.state is State.IN_FLIGHT:
                entry.state, entry.late, entry.live, entry.holder = State.READY, entry.live, None, None
            elif entry.state is State.DELAYED:
                entry.state, entry.fresh, entry.place = State.READY, False, None

    def replayed(self, entries: Sequence[Entry]) -> None:
        """Back on their queues, oldest failure first, as if published again."""
        for entry in sorted(entries, key=lambda e: int(str(e.dead_id))):
            entry.attempts, entry.dead_id, entry.reason = 0, None, ""
            self._queue_fresh(entry)

    def purged(self, queue: str) -> int:
        gone = self.where(State.READY, [queue]) + self.where(State.DELAYED, [queue])
        for entry in gone:
            entry.state, entry.late = State.GONE, None
        return len(gone)


def _order_problems(queue: str, ready: list[Entry], part: list[Entry]) -> list[str]:
    """Priority and FIFO checks for the ``part`` a fetch took from ``queue``'s ``ready``."""
    problems = []
    taken = {e.id: i for i, e in enumerate(part)}
    priorities = [e.priority for e in part]
    if priorities != sorted(priorities, reverse=True):
        problems.append(f"{queue!r}: priorities out of order: {priorities}")
    lowest = min(priorities, default=MAX_PRIORITY + 1)
    for left in (e for e in ready if e.id not in taken and e.priority > lowest):
        problems.append(f"{queue!r}: left {left.id} (priority {left.priority}) for priority {lowest}")
    for later in (e for e in part if e.fresh and e.place is not None):
        for earlier in ready:
            if earlier.priority != later.priority or earlier.place is None or earlier.place >= later.place:
                continue
            if taken.get(earlier.id, len(part)) > taken[later.id]:
                problems.append(
                    f"{queue!r}: {later.id} (queued #{later.place}) served before "
                    f"{earlier.id} (#{earlier.place}), same priority"
                )
    return problems
