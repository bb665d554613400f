"""More of the broker contract, written while adding Redis: the places where a
broker built on different primitives (lists, sorted sets, scripts) could drift from
the SQLite and memory brokers. Runs against every broker, like test_contract.py."""

from __future__ import annotations

import time
from typing import Any

import pytest

from conveyor.brokers.base import AdminBroker
from conveyor.message import Message, new_id

from .conftest import BrokerCase
from .test_contract import Q, fetch, fork_context, ids, msg, stats, wait_for


def test_bulk_enqueue_keeps_order_per_priority_and_queue(broker: AdminBroker) -> None:
    published = [msg("a" if i % 3 else "b", priority=i % 4) for i in range(3000)]
    broker.publish_many(published)
    assert stats(broker, "a")[0] + stats(broker, "b")[0] == 3000
    for queue in ("a", "b"):
        expected = sorted((m for m in published if m.queue == queue), key=lambda m: -m.priority)
        got: list[str] = []
        while batch := fetch(broker, [queue], limit=500):
            got.extend(ids(batch))
            broker.ack(batch)
        assert got == [m.id for m in expected]


def test_bulk_enqueue_with_an_unencodable_message_publishes_nothing(broker: AdminBroker) -> None:
    good = [msg() for _ in range(3)]
    bad = Message(id=new_id(), task="tests.add", args=[object()])
    with pytest.raises(Exception, match="JSON|serializ|encode"):
        broker.publish_many([*good, bad])
    assert stats(broker) == (0, 0, 0, 0)


def test_redelivery_counts_every_attempt_and_keeps_its_place(broker: AdminBroker) -> None:
    first, second = msg(), msg()
    broker.publish_many([first, second])
    # Both leased by one fetch, so they share one deadline: a stall of this process
    # between two fetches could otherwise let the first expire before the second is
    # taken (a 0.1 s lease did, under CI load).
    got = fetch(broker, limit=2, lease_s=REDELIVERY_LEASE_S)
    assert [(d.message_id, d.attempt) for d in got] == [(first.id, 1), (second.id, 1)]
    for attempt in (2, 3):
        # Back once the lease runs out, in their places (oldest first), every attempt counted.
        got = _redelivered(broker, 2)
        assert [(d.message_id, d.attempt) for d in got] == [(first.id, attempt), (second.id, attempt)]


REDELIVERY_LEASE_S = 1.0


def _redelivered(broker: AdminBroker, count: int) -> list[Any]:
    got: list[Any] = []
    deadline = time.monotonic() + 10 * REDELIVERY_LEASE_S
    while len(got) < count and time.monotonic() < deadline:
        got += fetch(broker, limit=count - len(got), lease_s=REDELIVERY_LEASE_S, timeout_s=0.5)
    return got


def test_due_delayed_message_takes_its_priority(broker: AdminBroker) -> None:
    urgent = msg(priority=9, eta=time.time() + 0.2)
    broker.publish(urgent)
    routine = [msg() for _ in range(3)]
    broker.publish_many(routine)
    time.sleep(0.3)
    assert ids(fetch(broker, limit=10)) == [urgent.id] + [m.id for m in routine]


def test_due_delayed_message_counts_as_ready_before_any_fetch(broker: AdminBroker) -> None:
    # QueueStats: delayed is "eta in the future", ready "waiting and due", whether or
    # not a fetch has moved it yet (`conveyor queues` with every worker stopped).
    # Found by test_model.py.
    broker.publish(msg(), eta=time.time() + 0.2)
    nack_later = msg()
    broker.publish(nack_later)
    [d] = fetch(broker)
    broker.nack(d, retry_at=time.time() + 0.2)
    assert stats(broker) == (0, 0, 2, 0)
    assert wait_for(lambda: stats(broker) == (2, 0, 0, 0), timeout=5.0), stats(broker)


def test_replayed_dead_letter_keeps_priority(broker: AdminBroker) -> None:
    high = msg(priority=8)
    broker.publish(high)
    [d] = fetch(broker)
    broker.dead_letter(d, reason="x")
    low = [msg() for _ in range(2)]
    broker.publish_many(low)
    assert broker.replay_dead_letters() == 1
    assert ids(fetch(broker, limit=3)) == [high.id] + [m.id for m in low]


def test_large_and_unicode_bodies_round_trip(broker: AdminBroker) -> None:
    big = Message(id=new_id(), task="tests.big", args=["x" * 1_000_000, "ünïcode ✓ \n\t|\\"], queue=Q)
    broker.publish(big)
    [d] = fetch(broker)
    assert d.body == big.encode()
    broker.nack(d, retry_at=None)
    [again] = fetch(broker)
    assert again.body == big.encode() and again.attempt == 2


def test_purge_takes_ran_out_leases_but_not_live_ones(broker: AdminBroker) -> None:
    broker.publish_many([msg() for _ in range(2)])
    [dead_worker] = fetch(broker, limit=1, lease_s=0.05)
    [live] = fetch(broker, limit=1, lease_s=30)
    time.sleep(0.15)  # the first lease ran out: its worker is gone
    assert broker.purge(Q) == 1
    assert stats(broker) == (0, 1, 0, 0)
    broker.ack([dead_worker])  # the late worker's ack does nothing
    broker.ack([live])
    assert stats(broker) == (0, 0, 0, 0)


def _produce_in_child(case: BrokerCase, queue: str, count: int, out: Any) -> None:
    broker = case.make()
    sent = [msg(queue) for _ in range(count)]
    for m in sent[: count // 2]:
        broker.publish(m)
    broker.publish_many(sent[count // 2 :])
    out.put([m.id for m in sent])
    broker.close()


def test_producers_in_several_processes_lose_nothing(broker_case: BrokerCase, broker: AdminBroker) -> None:
    if not broker_case.cross_process:
        pytest.skip(f"the {broker_case.name} broker lives in one process")
    ctx = fork_context()
    out = ctx.Queue()
    producers = [
        ctx.Process(target=_produce_in_child, args=(broker_case, "multi", 300, out)) for _ in range(3)
    ]
    for p in producers:
        p.start()
    sent = [i for _ in producers for i in out.get(timeout=30)]
    for p in producers:
        p.join(10)
    got: list[str] = []
    while batch := fetch(broker, ["multi"], limit=100):
        got.extend(ids(batch))
        broker.ack(batch)
    assert sorted(got) == sorted(sent) and len(got) == 900
