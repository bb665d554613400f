"""Model-based test of the broker contract: random interleavings of what producers,
consumers and admins do, checked after every step against a plain-Python model
(``broker_model.py``), for the memory, SQLite, Redis and PostgreSQL brokers.

Steps: publish (now, with an eta, delayed, any priority; one or in bulk), fetch by
three consumers with their own limits and queue lists, a consumer blocked in fetch
that receives a publish (Redis hands it off directly), a consumer whose wait was
interrupted by publishes (Redis: a hand-off waits in its inbox while others queue),
ack, nack now or later, dead-letter (also after an ack), extend, leases running out,
late and stale receipts, replay, purge. After each step ``queue_stats`` and the
dead-letter list must agree with the model; at the end every lease and delay runs
out and everything the model holds must come back, once.

Time: a lease or delay is short (ends at the next ``jump`` step) or long (outlives
the run), so no step waits. Memory, SQLite and PostgreSQL read the time through a
shifted clock (their broker module's ``time`` is replaced: the PostgreSQL broker
stamps leases and etas with the client's clock, not the server's); Redis reads its
own clock (``TIME``) inside scripts, so a jump moves the stored lease ends and due
times back instead, which is the same for everything stored.

Reproducing a failure: the test prints the Hypothesis seed it ran with (captured
output of the failing test); run it again with that seed:

    CI=true python -m pytest -p no:cacheprovider tests/brokers/test_model.py -k redis --hypothesis-seed=SEED

A longer search: ``CONVEYOR_MODEL_PROFILE=broker-model-long`` (more runs) or
``broker-model-deep`` (longer runs) in the environment.
"""

from __future__ import annotations

import functools
import os
import random
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import hypothesis
import pytest
from hypothesis import HealthCheck, Phase, note, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from conveyor.brokers import memory as memory_broker
from conveyor.brokers import sqlite as sqlite_broker
from conveyor.brokers.base import AdminBroker, Delivery
from conveyor.message import Message, new_id

from .broker_model import BrokerModel, State
from .conftest import _BROKER_CASES, BrokerCase, _drop_postgres_schemas

QUEUES = ("a", "b")
QUEUE_CHOICES = (("a",), ("b",), ("a", "b"), ("b", "a"))
CONSUMERS = 3
SHORT_S = 300.0  # ends at the next jump
LONG_S = 10_000_000.0  # never ends within a run
JUMP_S = 1_000.0
WAIT_S = 30.0  # a blocked fetch's timeout: a publish or wake() ends it long before
DELAYS = st.sampled_from(["none", "past", "short", "long"])
PRIORITIES = st.sampled_from([0, 1, 5, 9])

_PROFILE = "broker-model"
settings.register_profile(
    _PROFILE,
    max_examples=40,
    stateful_step_count=30,
    deadline=None,
    derandomize=False,
    database=None,  # a failure is reproduced from its printed seed
    print_blob=False,
    # No explain phase: it re-runs the failing case many times over for little more.
    phases=[Phase.explicit, Phase.generate, Phase.target, Phase.shrink],
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(f"{_PROFILE}-long", settings.get_profile(_PROFILE), max_examples=200)
settings.register_profile(
    f"{_PROFILE}-deep", settings.get_profile(_PROFILE), max_examples=100, stateful_step_count=100
)


# -- clocks --------------------------------------------------------------------------------
class ShiftedTime:
    """The ``time`` module as a broker module sees it: wall time plus ``offset``."""

    def __init__(self) -> None:
        self.offset = 0.0

    def time(self) -> float:
        return time.time() + self.offset

    @staticmethod
    def monotonic() -> float:
        return time.monotonic()


@dataclass
class Harness:
    """One broker kind: a fresh store per example, its clock, and what only it can show."""

    name: str
    new_case: Callable[[], BrokerCase]
    now: Callable[[], float]
    jump: Callable[[AdminBroker, float], None]
    # Are these consumers blocked in fetch (so a publish finds them waiting)?
    waiting: Callable[[Sequence[tuple[AdminBroker, threading.Thread]]], bool] = lambda pairs: True
    # Leave this consumer registered as waiting but not listening; True when a publish
    # is then handed to it (Redis), False when the broker has no hand-off.
    interrupt_wait: Callable[[AdminBroker, Sequence[str]], bool] = lambda broker, queues: False


def _shifted_harness(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, module: Any) -> Harness:
    clock = ShiftedTime()
    monkeypatch.setattr(module, "time", clock)
    count = iter(range(1_000_000))

    def new_case() -> BrokerCase:
        directory = tmp_path / f"example-{next(count)}"
        directory.mkdir()
        return _BROKER_CASES[name](directory)

    def jump(broker: AdminBroker, seconds: float) -> None:
        clock.offset += seconds

    waiting = {"memory": _memory_waiting, "sqlite": _sqlite_waiting, "postgres": _postgres_waiting}[name]
    return Harness(name, new_case, clock.time, jump, waiting=waiting)


def _memory_waiting(pairs: Sequence[tuple[AdminBroker, threading.Thread]]) -> bool:
    store = pairs[0][0]._store  # type: ignore[attr-defined]
    return len(store.cond._waiters) >= len(pairs)


def _sqlite_waiting(pairs: Sequence[tuple[AdminBroker, threading.Thread]]) -> bool:
    # A blocking fetch binds its wake socket before it first looks, so from then on a
    # publish reaches it whether or not it is inside select() yet.
    return all(len(b._wake._listeners) for b, _ in pairs)  # type: ignore[attr-defined]


def _postgres_waiting(pairs: Sequence[tuple[AdminBroker, threading.Thread]]) -> bool:
    # A blocking fetch LISTENs before it first looks, so from then on a publish's
    # NOTIFY reaches it whether or not it is inside select() yet.
    def listening(broker: Any, thread: threading.Thread) -> bool:
        return any(lsn.thread == thread.ident and lsn.listening for lsn in list(broker._db._listeners))

    return all(listening(b, t) for b, t in pairs)


def _redis_harness(tmp_path: Path) -> Harness:
    from conveyor import _redis
    from conveyor.brokers import redis as redis_broker

    def jump(broker: AdminBroker, seconds: float) -> None:
        link = broker.link  # type: ignore[attr-defined]
        keys = [redis_broker.queue_key(link.prefix, q, kind) for q in QUEUES for kind in ("lz", "d")]
        for key, flat in zip(
            keys, link.send([("ZRANGE", key, 0, -1, "WITHSCORES") for key in keys]), strict=True
        ):
            if flat:
                moved = [a for i in range(0, len(flat), 2) for a in (float(flat[i + 1]) - seconds, flat[i])]
                link.send([("ZADD", key, *moved)])

    def waiting(pairs: Sequence[tuple[AdminBroker, threading.Thread]]) -> bool:
        link = pairs[0][0].link  # type: ignore[attr-defined]
        keys = [link.key("wt", f"{_redis._pid}-{b._instance}-{t.ident}") for b, t in pairs]  # type: ignore[attr-defined]
        return bool(link.send([("EXISTS", *keys)])[0] == len(keys))

    def interrupt_wait(broker: AdminBroker, queues: Sequence[str]) -> bool:
        # What a fetch does before it blocks, without the BLPOP: the consumer is
        # between its wake-up and its next fetch, as after a wake-up token.
        b: Any = broker
        args = (b.prefix, LONG_S, 10, redis_broker._token(), b._consumer_id(), 30.0, *queues)
        keys = redis_broker.fetch_keys(b.prefix, b._consumer_id(), queues)
        assert b.link.read(redis_broker._FETCH, keys, args)[0] == b"W"
        return True

    return Harness(
        "redis",
        lambda: _BROKER_CASES["redis"](tmp_path),
        time.time,
        jump,
        waiting=waiting,
        interrupt_wait=interrupt_wait,
    )


# -- the state machine ---------------------------------------------------------------------
F = TypeVar("F", bound=Callable[..., None])


def _step(fn: F) -> F:
    """Marks the machine unsteady while a step runs: a failed step skips teardown's check."""

    @functools.wraps(fn)
    def run(self: BrokerMachine, *args: Any, **kwargs: Any) -> None:
        self.steady = False
        fn(self, *args, **kwargs)

    return run  # type: ignore[return-value]


def _has_live(self: BrokerMachine) -> bool:
    return bool(self.model.where(State.IN_FLIGHT))


def _quiet_queue_choices(self: BrokerMachine) -> list[tuple[str, ...]]:
    return [qs for qs in QUEUE_CHOICES if not self.model.where(State.READY, qs)]


class BrokerMachine(RuleBasedStateMachine):
    def __init__(self, harness: Harness) -> None:
        super().__init__()
        self.h = harness
        self.case = harness.new_case()
        self.producer = self.case.make()
        self.consumers = [self.case.make() for _ in range(CONSUMERS)]
        self.model = BrokerModel(QUEUES)
        self.steady = True
        self.dead_count = 0

    # -- helpers ---------------------------------------------------------------------
    def _eta(self, delay: str) -> float | None:
        offsets = {"none": None, "past": -5.0, "short": SHORT_S, "long": LONG_S}
        offset = offsets[delay]
        return None if offset is None else self.h.now() + offset

    @staticmethod
    def _lease(short: bool) -> float:
        return SHORT_S if short else LONG_S

    def _message(self, queue: str, priority: int, eta: float | None = None) -> Message:
        return Message(id=new_id(), task="tests.model", args=[1], queue=queue, priority=priority, eta=eta)

    def _expect_fetch(
        self,
        consumer: int,
        queues: Sequence[str],
        limit: int,
        got: Sequence[Delivery],
        *,
        short: bool,
        handed: str | None = None,
    ) -> None:
        note(f"consumer {consumer} fetched {[(d.queue, d.message_id[:8], d.attempt) for d in got]}")
        problems = self.model.check_fetch(queues, limit, got, handed=handed)
        assert not problems, f"fetch({list(queues)}, limit={limit}): " + "; ".join(problems)
        self.model.fetched(consumer, got, short=short)

    def _live(self) -> list[tuple[int, Delivery]]:
        # In publish order, whoever holds them: which of two blocked consumers got a
        # publish must not change what later steps draw.
        return [
            (e.holder, e.live) for e in self.model.where(State.IN_FLIGHT) if e.holder is not None and e.live
        ]

    def _draw_live(self, data: st.DataObject) -> tuple[int, Delivery]:
        live = self._live()
        return live[data.draw(st.integers(0, len(live) - 1))]

    def _record_dead(self, d: Delivery, reason: str) -> None:
        [newest] = self.producer.dead_letters(limit=1)
        assert newest.task_id == d.message_id and newest.reason == reason, newest
        self.model.dead_lettered(d, reason=reason, dead_id=newest.id)

    # -- producing -------------------------------------------------------------------
    @rule(queue=st.sampled_from(QUEUES), priority=PRIORITIES, delay=DELAYS)
    @_step
    def publish(self, queue: str, priority: int, delay: str) -> None:
        m = self._message(queue, priority)
        self.producer.publish(m, eta=self._eta(delay))
        note(f"published {m.id[:8]} to {queue}")
        self.model.published(m, delay="none" if delay == "past" else delay)

    @rule(batch=st.lists(st.tuples(st.sampled_from(QUEUES), PRIORITIES, DELAYS), min_size=1, max_size=4))
    @_step
    def publish_many(self, batch: list[tuple[str, int, str]]) -> None:
        messages = [self._message(q, p, self._eta(d)) for q, p, d in batch]
        self.producer.publish_many(messages)
        note(f"published {[m.id[:8] for m in messages]}")
        for m, (_, _, delay) in zip(messages, batch, strict=True):
            self.model.published(m, delay="none" if delay == "past" else delay)

    # -- consuming -------------------------------------------------------------------
    @rule(
        consumer=st.integers(0, CONSUMERS - 1),
        queues=st.sampled_from(QUEUE_CHOICES),
        limit=st.integers(1, 4),
        short=st.booleans(),
    )
    @_step
    def fetch(self, consumer: int, queues: tuple[str, ...], limit: int, short: bool) -> None:
        got = self.consumers[consumer].fetch(queues, limit=limit, lease_s=self._lease(short), timeout_s=0.0)
        self._expect_fetch(consumer, queues, limit, got, short=short)

    @precondition(lambda self: bool(_quiet_queue_choices(self)))
    @rule(data=st.data(), priority=PRIORITIES, short=st.booleans())
    @_step
    def blocked_fetch_gets_a_publish(self, data: st.DataObject, priority: int, short: bool) -> None:
        queues = data.draw(st.sampled_from(_quiet_queue_choices(self)))
        waiters = data.draw(st.lists(st.integers(0, CONSUMERS - 1), min_size=1, max_size=2, unique=True))
        m = self._message(data.draw(st.sampled_from(queues)), priority)
        # Woken right after the publish, a consumer that was handed the message as it
        # stopped waiting must still return it (Redis: from its inbox); one that had
        # not leased it may return nothing (SQLite), and the message stays queued.
        wake_at_once = data.draw(st.booleans())
        got = self._block_then_publish(waiters, queues, m, short=short, wake_at_once=wake_at_once)
        if wake_at_once and not got:
            # Fetched now, so that later steps draw from the same state either way.
            lease_s = self._lease(short)
            got = [
                (waiters[0], d)
                for d in self.consumers[waiters[0]].fetch(queues, limit=3, lease_s=lease_s, timeout_s=0)
            ]
        assert [d.message_id for _, d in got] == [m.id], f"one publish, delivered as {got}"
        [(consumer, delivery)] = got
        self._expect_fetch(consumer, queues, 3, [delivery], short=short)

    def _block_then_publish(
        self, waiters: list[int], queues: Sequence[str], m: Message, *, short: bool, wake_at_once: bool
    ) -> list[tuple[int, Delivery]]:
        """Publish ``m`` while ``waiters`` are blocked in fetch; what each one returned."""
        results: dict[int, list[Delivery] | BaseException] = {}

        def wait(c: int) -> None:
            try:
                got = self.consumers[c].fetch(queues, limit=3, lease_s=self._lease(short), timeout_s=WAIT_S)
                results[c] = got
            except BaseException as exc:  # reported by the main thread
                results[c] = exc

        threads = {c: threading.Thread(target=wait, args=(c,), daemon=True) for c in waiters}
        for thread in threads.values():
            thread.start()
        _poll(lambda: self.h.waiting([(self.consumers[c], t) for c, t in threads.items()]), "consumers block")
        self.producer.publish(m)
        self.model.published(m, delay="none")
        if not wake_at_once:
            _poll(lambda: any(not t.is_alive() for t in threads.values()), "a blocked fetch returns")
        for c, thread in threads.items():
            # The others stop waiting when woken; again until they return, as a wake-up
            # that lands between two of a fetch's loops only costs it one more loop.
            _poll(lambda c=c, thread=thread: self.consumers[c].wake() or not thread.is_alive(), "wake()")
        got = []
        for c in waiters:
            result = results[c]
            if isinstance(result, BaseException):
                raise result
            got += [(c, d) for d in result]
        return got

    @precondition(lambda self: bool(_quiet_queue_choices(self)))
    @rule(data=st.data(), limit=st.integers(1, 4), short=st.booleans())
    @_step
    def interrupted_wait_then_fetch(self, data: st.DataObject, limit: int, short: bool) -> None:
        """Publishes reach a consumer registered as waiting but not listening; its next
        fetch takes what was handed to it and what was queued, in one batch."""
        queues = data.draw(st.sampled_from(_quiet_queue_choices(self)))
        consumer = data.draw(st.integers(0, CONSUMERS - 1))
        how = st.sampled_from(["one", "one", "bulk", "delayed"])
        sends = data.draw(
            st.lists(st.tuples(st.sampled_from(queues), PRIORITIES, how), min_size=1, max_size=4)
        )
        waits = self.h.interrupt_wait(self.consumers[consumer], queues)
        handed: str | None = None
        queued: set[str] = set()
        for queue, priority, kind in sends:
            m = self._message(queue, priority)
            if kind == "bulk":  # never handed off, and none after it past it
                self.producer.publish_many([m])
                queued.add(queue)
            elif kind == "delayed":  # never handed off
                self.producer.publish(m, eta=self._eta("short"))
            else:
                self.producer.publish(m)
                if waits and handed is None and queue not in queued:
                    handed = m.id  # the one wait takes the first publish to an empty queue
                else:
                    queued.add(queue)
            self.model.published(m, delay="short" if kind == "delayed" else "none")
        got = self.consumers[consumer].fetch(queues, limit=limit, lease_s=self._lease(short), timeout_s=0.0)
        self._expect_fetch(consumer, queues, limit, got, short=short, handed=handed)

    @precondition(_has_live)
    @rule(data=st.data())
    @_step
    def ack(self, data: st.DataObject) -> None:
        live = self._live()
        chosen = data.draw(st.lists(st.integers(0, len(live) - 1), min_size=1, unique=True))
        for consumer in range(CONSUMERS):
            mine = [live[i][1] for i in chosen if live[i][0] == consumer]
            if mine:
                note(f"consumer {consumer} acks {[d.message_id[:8] for d in mine]}")
                self.consumers[consumer].ack(mine)
                self.model.acked(mine)

    @precondition(_has_live)
    @rule(data=st.data(), delay=DELAYS)
    @_step
    def nack(self, data: st.DataObject, delay: str) -> None:
        consumer, d = self._draw_live(data)
        note(f"consumer {consumer} nacks {d.message_id[:8]}")
        self.consumers[consumer].nack(d, retry_at=self._eta(delay), reason="model")
        self.model.nacked(d, delay="none" if delay == "past" else delay)

    @precondition(_has_live)
    @rule(data=st.data())
    @_step
    def dead_letter(self, data: st.DataObject) -> None:
        consumer, d = self._draw_live(data)
        self.dead_count += 1
        reason = f"failed #{self.dead_count}"
        note(f"consumer {consumer} dead-letters {d.message_id[:8]}")
        self.consumers[consumer].dead_letter(d, reason=reason)
        self._record_dead(d, reason)

    @precondition(_has_live)
    @rule(data=st.data(), short=st.booleans())
    @_step
    def extend(self, data: st.DataObject, short: bool) -> None:
        consumer, d = self._draw_live(data)
        note(f"consumer {consumer} extends {d.message_id[:8]}")
        self.consumers[consumer].extend([d], lease_s=self._lease(short))
        self.model.extended([d], short=short)

    # -- time, late and stale receipts ------------------------------------------------
    @rule()
    @_step
    def jump(self) -> None:
        """Every short lease runs out and every short delay is due."""
        self.h.jump(self.producer, JUMP_S)
        self.model.jumped()

    @precondition(lambda self: bool(self.model.stale()))
    @rule(data=st.data(), op=st.sampled_from(["ack", "nack", "nack later", "extend", "dead-letter"]))
    @_step
    def stale_receipt_does_nothing(self, data: st.DataObject, op: str) -> None:
        stale = self.model.stale()
        d = stale[data.draw(st.integers(0, len(stale) - 1))]
        consumer = self.consumers[data.draw(st.integers(0, CONSUMERS - 1))]
        note(f"{op} with a stale receipt of {d.message_id[:8]}")
        if op == "ack":
            consumer.ack([d])
        elif op == "nack":
            consumer.nack(d, retry_at=None)
        elif op == "nack later":
            consumer.nack(d, retry_at=self._eta("short"))
        elif op == "extend":
            consumer.extend([d], lease_s=0.0)
        else:
            entry = self.model.entries[d.message_id]
            if entry.state is State.DEAD or (entry.state is State.GONE and entry.acked_with is d):
                return  # recorded again (a second entry): that would be a second copy
            # Recorded (the worker's word is kept) but must not take the message from
            # whoever holds or waits for it now: the extra entry is purged at once.
            consumer.dead_letter(d, reason="late worker")
            [newest] = self.producer.dead_letters(limit=1)
            assert newest.task_id == d.message_id, newest
            assert self.producer.purge_dead_letters([newest.id]) == 1

    @precondition(lambda self: any(e.late is not None for e in self.model.entries.values()))
    @rule(data=st.data())
    @_step
    def late_ack(self, data: st.DataObject) -> None:
        """An ack after the lease ran out and before anyone fetched the message again:
        it may land or not, but it touches that message only."""
        lates = [e for e in self.model.entries.values() if e.late is not None]
        entry = lates[data.draw(st.integers(0, len(lates) - 1))]
        assert entry.late is not None
        [before] = self.producer.queue_stats([entry.queue])
        self.consumers[data.draw(st.integers(0, CONSUMERS - 1))].ack([entry.late])
        [after] = self.producer.queue_stats([entry.queue])
        assert after.ready in (before.ready, before.ready - 1), (before, after)
        note(f"late ack of {entry.id[:8]} landed: {after.ready < before.ready}")
        self.model.late_acked(entry.late, landed=after.ready < before.ready)

    # -- admin -----------------------------------------------------------------------
    @precondition(lambda self: any(e.acked_with is not None for e in self.model.entries.values()))
    @rule(data=st.data())
    @_step
    def dead_letter_after_ack(self, data: st.DataObject) -> None:
        acked = [e for e in self.model.entries.values() if e.acked_with is not None]
        entry = acked[data.draw(st.integers(0, len(acked) - 1))]
        assert entry.acked_with is not None
        d = entry.acked_with
        self.dead_count += 1
        reason = f"failed after ack #{self.dead_count}"
        self.consumers[0].dead_letter(d, reason=reason)
        self._record_dead(d, reason)

    @precondition(lambda self: bool(self.model.where(State.DEAD)))
    @rule(data=st.data())
    @_step
    def replay(self, data: st.DataObject) -> None:
        dead = self.model.where(State.DEAD)
        if data.draw(st.booleans()):
            chosen = dead
            count = self.producer.replay_dead_letters()
        else:
            chosen = data.draw(st.lists(st.sampled_from(dead), min_size=1, unique_by=id))
            count = self.producer.replay_dead_letters([str(e.dead_id) for e in chosen] + ["999999"])
        note(f"replayed {[e.id[:8] for e in chosen]}")
        assert count == len(chosen)
        self.model.replayed(chosen)

    @rule(queue=st.sampled_from(QUEUES))
    @_step
    def purge(self, queue: str) -> None:
        assert self.producer.purge(queue) == self.model.purged(queue)

    # -- checks ----------------------------------------------------------------------
    @invariant()
    def agrees_with_the_model(self) -> None:
        self.steady = False
        stats = self.producer.queue_stats(list(QUEUES))
        assert stats == self.model.expected_stats(), (
            f"\nbroker: {stats}\nmodel:  {self.model.expected_stats()}"
        )
        dead = self.model.observed_dead(self.producer.dead_letters(limit=10_000))
        assert dead == self.model.expected_dead(), f"\nbroker: {dead}\nmodel:  {self.model.expected_dead()}"
        self.steady = True

    def teardown(self) -> None:
        try:
            if self.steady:
                self._everything_comes_back_once()
        finally:
            for b in [self.producer, *self.consumers]:
                b.close()
            memory_broker.reset()

    def _everything_comes_back_once(self) -> None:
        """Every lease and delay runs out: each live message comes back exactly once."""
        self.h.jump(self.producer, 2 * LONG_S)
        self.model.jumped(forever=True)
        for queue in QUEUES:
            got = self.consumers[0].fetch([queue], limit=10_000, lease_s=LONG_S, timeout_s=0.0)
            self._expect_fetch(0, [queue], 10_000, got, short=False)
            self.consumers[0].ack(got)
            self.model.acked(got)
        self.agrees_with_the_model()


def _poll(predicate: Callable[[], Any], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.002)


# -- the test --------------------------------------------------------------------------------
@pytest.fixture(params=["memory", "postgres", "redis", "sqlite"])
def harness(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Harness]:
    if request.param == "redis":
        yield _redis_harness(tmp_path)
    elif request.param == "postgres":
        from conveyor.brokers import postgres as postgres_broker

        yield _shifted_harness("postgres", tmp_path, monkeypatch, postgres_broker)
        _drop_postgres_schemas()
    else:
        module = memory_broker if request.param == "memory" else sqlite_broker
        yield _shifted_harness(request.param, tmp_path, monkeypatch, module)
    memory_broker.reset()


def _profile() -> settings:
    # An environment variable, not --hypothesis-profile: pytest loads that profile
    # before it imports this module, which registers these.
    return settings.get_profile(os.environ.get("CONVEYOR_MODEL_PROFILE", _PROFILE))


def test_broker_agrees_with_the_model(harness: Harness, request: pytest.FixtureRequest) -> None:
    given = request.config.getoption("--hypothesis-seed", None)
    seed: Any = random.getrandbits(64) if given is None else given
    with_seed = int(seed) if str(seed).isdigit() else seed
    print(
        f"hypothesis seed {with_seed}: reproduce with `CI=true python -m pytest -p no:cacheprovider "
        f"tests/brokers/test_model.py -k {harness.name} --hypothesis-seed={with_seed}`"
    )
    factory = hypothesis.seed(with_seed)(functools.partial(BrokerMachine, harness))
    run_state_machine_as_test(factory, settings=_profile())
