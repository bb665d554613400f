"""The broker contract: what every broker guarantees, proved the same way for each.

Brokers come from the ``broker_case`` fixture in ``conftest.py``; nothing here knows
which broker it is talking to. Cross-process tests skip for brokers that live in one
process (memory).
"""

from __future__ import annotations

import multiprocessing
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import pytest

from conveyor.brokers.base import AdminBroker, Broker, BrokerAdmin, Delivery
from conveyor.message import Message, new_id

from .conftest import BrokerCase

Q = "default"

# A wake-up, not a poll: well under the SQLite broker's safety poll (1 s) and every
# other broker's, so only a real notification passes, with room for a loaded machine
# (CI shares it). How fast the wake-up is, is measured in bench/throughput.py.
WAKE_BOUND_S = 0.5


def msg(queue: str = Q, *, priority: int = 0, task: str = "tests.add", eta: float | None = None) -> Message:
    return Message(
        id=new_id(), task=task, args=[1, 2], queue=queue, priority=priority, eta=eta, created_at=time.time()
    )


def ids(deliveries: Sequence[Delivery]) -> list[str]:
    return [d.message_id for d in deliveries]


def fetch(
    broker: AdminBroker,
    queues: Sequence[str] = (Q,),
    *,
    limit: int = 10,
    lease_s: float = 30.0,
    timeout_s: float = 0.0,
) -> list[Delivery]:
    return broker.fetch(queues, limit=limit, lease_s=lease_s, timeout_s=timeout_s)


def stats(broker: AdminBroker, queue: str = Q) -> tuple[int, int, int, int]:
    [s] = broker.queue_stats([queue])
    return s.ready, s.in_flight, s.delayed, s.dead


def wait_for(predicate: Callable[[], Any], timeout: float = 5.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.005)


def fork_context() -> Any:
    if "fork" not in multiprocessing.get_all_start_methods():
        pytest.skip("needs fork(), like the prefork pool")
    return multiprocessing.get_context("fork")


def test_implements_both_protocols(broker: AdminBroker) -> None:
    assert isinstance(broker, Broker)
    assert isinstance(broker, BrokerAdmin)


# -- ordering ----------------------------------------------------------------------------
def test_higher_priority_first_then_fifo(broker: AdminBroker) -> None:
    published = [msg(priority=p) for p in (0, 9, 0, 5, 9, 0)]
    for m in published:
        broker.publish(m)
    got = fetch(broker, limit=10)
    by_priority = sorted(published, key=lambda m: -m.priority)  # sorted() is stable: FIFO within a priority
    assert ids(got) == [m.id for m in by_priority]
    assert all(d.queue == Q and d.attempt == 1 for d in got)


def test_fifo_one_at_a_time(broker: AdminBroker) -> None:
    published = [msg() for _ in range(20)]
    broker.publish_many(published)
    got = [fetch(broker, limit=1)[0] for _ in range(20)]
    assert ids(got) == [m.id for m in published]
    assert fetch(broker) == []


def test_queues_served_in_the_order_given(broker: AdminBroker) -> None:
    first = [msg("first") for _ in range(2)]
    second = [msg("second", priority=9) for _ in range(3)]
    broker.publish_many(second + first)
    got = fetch(broker, ["first", "second"], limit=3)
    assert ids(got) == [first[0].id, first[1].id, second[0].id]
    assert [d.queue for d in got] == ["first", "first", "second"]
    assert ids(fetch(broker, ["second", "first"], limit=5)) == [second[1].id, second[2].id]


def test_fetch_respects_limit_and_other_queues(broker: AdminBroker) -> None:
    broker.publish_many([msg() for _ in range(5)] + [msg("elsewhere")])
    assert len(fetch(broker, limit=3)) == 3
    assert len(fetch(broker, limit=3)) == 2
    assert fetch(broker, limit=3) == []
    assert fetch(broker, [Q], limit=0) == []


# -- delay ---------------------------------------------------------------------------------
def test_delayed_message_not_fetched_before_eta(broker: AdminBroker) -> None:
    m = msg()
    eta = time.time() + 1.0
    broker.publish(m, eta=eta)
    early, counted = fetch(broker), stats(broker)
    # Read after the calls: while it is still before the eta, they ran before it too (a
    # machine that stalled past the eta proves nothing either way).
    if time.time() < eta:
        assert early == [] and counted == (0, 0, 1, 0)
    got = early or fetch(broker, timeout_s=5.0)
    assert ids(got) == [m.id]
    assert time.time() >= eta
    assert time.time() < eta + 3.0  # woke for the eta, not at the fetch's timeout


def test_message_eta_field_applies(broker: AdminBroker) -> None:
    later, now = msg(eta=time.time() + 60), msg(eta=time.time() - 1)
    broker.publish(later)
    broker.publish(now)
    assert ids(fetch(broker)) == [now.id]
    assert stats(broker) == (0, 1, 1, 0)


def test_publish_many_splits_ready_and_delayed(broker: AdminBroker) -> None:
    ready = [msg(), msg("other")]
    delayed = msg(eta=time.time() + 0.2)
    broker.publish_many([ready[0], delayed, ready[1]])
    assert ids(fetch(broker, [Q, "other"])) == [ready[0].id, ready[1].id]
    assert ids(fetch(broker, timeout_s=3.0)) == [delayed.id]
    broker.publish_many([])


# -- leases ----------------------------------------------------------------------------------
def test_lease_expiry_redelivers_with_next_attempt(broker: AdminBroker) -> None:
    m = msg()
    broker.publish(m)
    leased_until = time.time() + 1.0
    [first] = fetch(broker, lease_s=1.0)
    assert first.attempt == 1 and first.message_id == m.id
    early = fetch(broker)
    if time.time() < leased_until:  # else the machine stalled past the lease: proves nothing
        assert early == []  # invisible while leased
    start = time.monotonic()
    [second] = early or fetch(broker, lease_s=30, timeout_s=5.0)
    assert time.monotonic() - start < 3.0  # woke when the lease ran out, not at the timeout
    assert second.message_id == m.id and second.attempt == 2
    assert second.receipt != first.receipt
    assert second.body == first.body


def test_extend_keeps_message_invisible(broker: AdminBroker) -> None:
    broker.publish(msg())
    [d] = fetch(broker, lease_s=0.3)
    broker.extend([d], lease_s=3.0)
    assert fetch(broker, timeout_s=0.6) == []
    assert stats(broker) == (0, 1, 0, 0)
    broker.ack([d])
    assert stats(broker) == (0, 0, 0, 0)


def test_stale_receipt_does_nothing(broker: AdminBroker) -> None:
    m = msg()
    broker.publish(m)
    [stale] = fetch(broker, lease_s=0.1)
    [current] = fetch(broker, lease_s=30, timeout_s=3.0)
    assert current.message_id == m.id
    broker.ack([stale])
    broker.nack(stale, retry_at=None)
    broker.extend([stale], lease_s=0.0)
    broker.dead_letter(stale, reason="late worker")  # recorded, but must not steal the live lease
    assert stats(broker)[:2] == (0, 1)
    assert fetch(broker) == []
    broker.ack([current])
    assert stats(broker)[:2] == (0, 0)


def test_ack_removes_for_good(broker: AdminBroker) -> None:
    broker.publish_many([msg() for _ in range(3)])
    got = fetch(broker)
    broker.ack(got[:1])
    broker.ack(got[1:])
    broker.ack([])
    assert stats(broker) == (0, 0, 0, 0)
    assert fetch(broker, lease_s=0.05, timeout_s=0.2) == []


def test_nack_now_makes_it_visible_again(broker: AdminBroker) -> None:
    m = msg()
    broker.publish(m)
    [d] = fetch(broker)
    broker.nack(d, retry_at=None, reason="worker shutting down")
    [again] = fetch(broker)
    assert again.message_id == m.id and again.attempt == 2


def test_nack_later_delays_it(broker: AdminBroker) -> None:
    m = msg()
    broker.publish(m)
    [d] = fetch(broker)
    broker.nack(d, retry_at=time.time() + 0.3, reason="rate limited")
    assert stats(broker) == (0, 0, 1, 0)
    assert fetch(broker) == []
    [again] = fetch(broker, timeout_s=3.0)
    assert again.message_id == m.id and again.attempt == 2


# -- dead letters ------------------------------------------------------------------------------
def test_dead_letter_keeps_reason_and_message(broker: AdminBroker) -> None:
    m = msg(task="tests.fails")
    broker.publish(m)
    [d] = fetch(broker)
    before = time.time()
    broker.dead_letter(d, reason="max retries exceeded")
    assert stats(broker) == (0, 0, 0, 1)
    [entry] = broker.dead_letters()
    assert entry.reason == "max retries exceeded"
    assert entry.queue == Q and entry.body == d.body
    assert entry.task_id == m.id and entry.task_name == "tests.fails"
    assert before - 1 <= entry.failed_at <= time.time() + 1
    assert broker.get_dead_letter(entry.id) == entry


def test_dead_letter_after_ack(broker: AdminBroker) -> None:
    broker.publish(msg())
    [d] = fetch(broker)
    broker.ack([d])
    broker.dead_letter(d, reason="result could not be stored")
    assert stats(broker) == (0, 0, 0, 1)


def test_dead_letters_list_show_replay_purge(broker: AdminBroker) -> None:
    published = [msg("a"), msg("b", priority=7), msg("a"), msg("b")]
    broker.publish_many(published)
    for d in fetch(broker, ["a", "b"]):
        broker.dead_letter(d, reason=f"failed {d.message_id}")
    entries = broker.dead_letters()
    assert len(entries) == 4
    assert entries[0].failed_at >= entries[-1].failed_at
    assert [e.task_id for e in entries] == [published[i].id for i in (3, 1, 2, 0)]  # newest first
    assert [e.task_id for e in broker.dead_letters(limit=2, offset=1)] == [published[1].id, published[2].id]
    assert [e.task_id for e in broker.dead_letters("a")] == [published[2].id, published[0].id]
    assert broker.get_dead_letter("999999") is None
    assert broker.get_dead_letter("not-an-id") is None

    by_task = {e.task_id: e for e in entries}
    assert broker.replay_dead_letters([by_task[published[1].id].id, "999999"]) == 1
    [replayed] = fetch(broker, ["b"])
    assert replayed.message_id == published[1].id and replayed.attempt == 1
    assert broker.get_dead_letter(by_task[published[1].id].id) is None
    broker.ack([replayed])

    assert broker.purge_dead_letters([by_task[published[0].id].id]) == 1
    assert broker.replay_dead_letters() == 2
    assert sorted(ids(fetch(broker, ["a", "b"]))) == sorted([published[2].id, published[3].id])
    assert broker.dead_letters() == []
    assert broker.replay_dead_letters() == 0


def test_purge_dead_letters_all(broker: AdminBroker) -> None:
    broker.publish_many([msg() for _ in range(3)])
    for d in fetch(broker):
        broker.dead_letter(d, reason="x")
    assert broker.purge_dead_letters() == 3
    assert broker.purge_dead_letters() == 0
    assert stats(broker) == (0, 0, 0, 0)


def test_undecodable_body_is_delivered_and_can_be_dead_lettered(
    broker_case: BrokerCase, broker: AdminBroker
) -> None:
    garbage = b"\xff\x00 definitely not json"
    broker_case.inject_raw(Q, garbage)
    broker.publish(Message(id=new_id(), task=""))  # valid JSON that the decoder rejects
    got = fetch(broker)
    assert [d.body for d in got][0] == garbage
    for d in got:
        broker.dead_letter(d, reason="undecodable message")
    entries = {e.body: e for e in broker.dead_letters()}
    assert entries[garbage].task_id is None and entries[garbage].task_name is None
    assert entries[garbage].reason == "undecodable message"
    assert stats(broker) == (0, 0, 0, 2)


# -- admin -----------------------------------------------------------------------------------
def test_queue_stats(broker: AdminBroker) -> None:
    broker.publish_many([msg() for _ in range(4)] + [msg("other")])
    broker.publish(msg(), eta=time.time() + 60)
    [leased] = fetch(broker, limit=1)
    [dead] = fetch(broker, ["other"], limit=1)
    broker.dead_letter(dead, reason="x")
    assert stats(broker) == (3, 1, 1, 0)
    by_name = {s.name: s for s in broker.queue_stats()}
    assert set(by_name) == {Q, "other"}
    assert (by_name["other"].ready, by_name["other"].dead) == (0, 1)
    [empty] = broker.queue_stats(["never-used"])
    assert (empty.name, empty.ready, empty.in_flight, empty.delayed, empty.dead) == ("never-used", 0, 0, 0, 0)
    broker.ack([leased])
    assert stats(broker) == (3, 0, 1, 0)


def test_purge_spares_in_flight(broker: AdminBroker) -> None:
    broker.publish_many([msg() for _ in range(3)] + [msg("other") for _ in range(2)])
    broker.publish(msg(), eta=time.time() + 60)
    [held] = fetch(broker, limit=1)
    assert broker.purge(Q) == 3  # two ready, one delayed
    assert stats(broker) == (0, 1, 0, 0)
    assert stats(broker, "other") == (2, 0, 0, 0)
    assert broker.purge() == 2
    assert broker.purge() == 0
    broker.ack([held])
    assert stats(broker) == (0, 0, 0, 0)


def test_rate_limit_spacing(broker: AdminBroker) -> None:
    t = 1_000_000.0
    assert broker.rate_limit_wait("k", 0.5, now=t) == 0.0
    assert broker.rate_limit_wait("k", 0.5, now=t + 0.1) == pytest.approx(0.4)
    assert broker.rate_limit_wait("other", 0.5, now=t + 0.1) == 0.0  # keys are independent
    assert broker.rate_limit_wait("k", 0.5, now=t + 0.5) == 0.0
    assert broker.rate_limit_wait("k", 0.5, now=t + 0.6) == pytest.approx(0.4)
    assert broker.rate_limit_wait("k", 0.5, now=t + 5.0) == 0.0  # idle time does not bank a burst
    assert broker.rate_limit_wait("k", 0.5, now=t + 5.0) == pytest.approx(0.5)
    assert broker.rate_limit_wait("k", 0.0, now=t + 5.0) == 0.0


def test_rate_limit_is_atomic(broker_case: BrokerCase) -> None:
    results: list[float] = []
    lock = threading.Lock()
    barrier = threading.Barrier(8)

    def take() -> None:
        own = broker_case.make()  # own connection, as another worker would have
        barrier.wait()
        wait = own.rate_limit_wait("shared", 10.0, now=2_000_000.0)
        with lock:
            results.append(wait)
        own.close()

    threads = [threading.Thread(target=take) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results)[:2] == [0.0, pytest.approx(10.0)]
    assert results.count(0.0) == 1


def test_acquire_lease_exclusive_then_expires(broker: AdminBroker) -> None:
    assert broker.acquire_lease("beat", "a", 0.3)
    assert not broker.acquire_lease("beat", "b", 0.3)
    assert broker.acquire_lease("beat", "a", 0.3)  # renew
    assert broker.acquire_lease("other", "b", 0.3)  # names are independent
    assert wait_for(lambda: broker.acquire_lease("beat", "b", 5.0), timeout=3.0)
    assert not broker.acquire_lease("beat", "a", 5.0)


def test_instances_with_one_url_share_queues(broker_case: BrokerCase, broker: AdminBroker) -> None:
    other = broker_case.make()
    m = msg()
    other.publish(m)
    assert ids(fetch(broker)) == [m.id]
    other.close()


def test_usable_after_close(broker: AdminBroker) -> None:
    broker.publish(msg())
    broker.close()
    assert len(fetch(broker, timeout_s=0.1)) == 1


# -- blocking fetch ----------------------------------------------------------------------------
def test_fetch_timeout_returns_empty_in_time(broker: AdminBroker) -> None:
    start = time.monotonic()
    assert fetch(broker, timeout_s=0.3) == []
    assert 0.28 <= time.monotonic() - start < 2.0


def _publish_later(
    broker: AdminBroker, message: Message, delay: float, sent_at: list[float]
) -> threading.Thread:
    def run() -> None:
        time.sleep(delay)
        sent_at.append(time.monotonic())
        broker.publish(message)

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_blocked_fetch_wakes_on_publish_from_another_thread(
    broker_case: BrokerCase, broker: AdminBroker
) -> None:
    producer = broker_case.make()
    m = msg()
    sent_at: list[float] = []
    thread = _publish_later(producer, m, 0.2, sent_at)
    got = fetch(broker, timeout_s=5.0)
    latency = time.monotonic() - sent_at[0]
    thread.join()
    producer.close()
    assert ids(got) == [m.id]
    assert latency < WAKE_BOUND_S, latency


def test_wake_interrupts_blocked_fetch(broker: AdminBroker) -> None:
    timer = threading.Timer(0.2, broker.wake)
    start = time.monotonic()
    timer.start()
    assert fetch(broker, timeout_s=5.0) == []
    # Cut short: far sooner than its five seconds (how soon is a benchmark's business).
    assert time.monotonic() - start < 2.0
    timer.join()
    start = time.monotonic()
    assert fetch(broker, timeout_s=0.2) == []
    assert time.monotonic() - start >= 0.18  # an old wake() does not cut later fetches short


def test_idle_blocked_fetch_does_not_spin(broker: AdminBroker) -> None:
    fetch(broker, timeout_s=0.01)  # connections and sockets exist; measure the wait alone
    cpu, wall = time.process_time(), time.monotonic()
    assert fetch(broker, timeout_s=1.0) == []
    assert time.monotonic() - wall >= 0.95
    assert time.process_time() - cpu < 0.05


def _wait_in_child(case: BrokerCase, queue: str, out: Any) -> None:
    broker = case.make()
    fetch(broker, [queue], timeout_s=0.01)
    out.put("ready")
    got = fetch(broker, [queue], timeout_s=5.0)
    out.put((time.time(), ids(got)))
    broker.close()


def test_blocked_fetch_wakes_on_publish_from_another_process(
    broker_case: BrokerCase, broker: AdminBroker
) -> None:
    if not broker_case.cross_process:
        pytest.skip(f"the {broker_case.name} broker lives in one process")
    ctx = fork_context()
    out = ctx.Queue()
    child = ctx.Process(target=_wait_in_child, args=(broker_case, "wake", out))
    child.start()
    assert out.get(timeout=10) == "ready"
    time.sleep(0.2)  # let the child block in select()
    m = msg("wake")
    sent_at = time.time()
    broker.publish(m)
    woke_at, got = out.get(timeout=10)
    child.join(10)
    assert got == [m.id]
    assert woke_at - sent_at < WAKE_BOUND_S, woke_at - sent_at


def _drain_in_child(broker: AdminBroker, out: Any, first_batch: Any) -> None:
    first = fetch(broker, limit=8, timeout_s=5)
    broker.ack(first)
    seen = ids(first)
    # Every child has taken one batch before any goes on: the work is shared by
    # construction, not by how the scheduler happens to run the children.
    first_batch.wait(30)
    empty = 0
    while empty < 2:
        got = fetch(broker, limit=8, timeout_s=0.2)
        empty = 0 if got else empty + 1
        broker.ack(got)
        seen.extend(ids(got))
    out.put(seen)
    broker.close()


def test_consumers_in_several_processes_never_share_a_message(
    broker_case: BrokerCase, broker: AdminBroker
) -> None:
    if not broker_case.cross_process:
        pytest.skip(f"the {broker_case.name} broker lives in one process")
    ctx = fork_context()
    published = [msg() for _ in range(2000)]
    broker.publish_many(published)
    fetch(broker, ["unrelated"], timeout_s=0.01)  # the parent used its connection and socket before fork
    out = ctx.Queue()
    # The children use the broker object they inherit, as prefork pool children do.
    first_batch = ctx.Barrier(4)
    children = [ctx.Process(target=_drain_in_child, args=(broker, out, first_batch)) for _ in range(4)]
    for child in children:
        child.start()
    seen = [out.get(timeout=30) for _ in children]
    for child in children:
        child.join(10)
    flat = [i for part in seen for i in part]
    assert len(flat) == len(set(flat)), "a message was delivered to two consumers"
    assert set(flat) == {m.id for m in published}
    assert all(seen), [len(part) for part in seen]  # the work really was shared
    assert stats(broker) == (0, 0, 0, 0)  # and the parent still works after the fork


def test_consumer_threads_never_share_a_message(broker_case: BrokerCase, broker: AdminBroker) -> None:
    published = [msg() for _ in range(1000)]
    broker.publish_many(published)
    seen: list[list[str]] = []

    def drain() -> None:
        own = broker_case.make()
        mine: list[str] = []
        while got := fetch(own, limit=8, timeout_s=0.05):
            own.ack(got)
            mine.extend(ids(got))
        seen.append(mine)
        own.close()

    threads = [threading.Thread(target=drain) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    flat = [i for part in seen for i in part]
    assert len(flat) == len(set(flat)) == len(published)


def test_claim_lease_answers_with_the_holder_and_release_frees_it(broker: AdminBroker) -> None:
    assert broker.claim_lease("unique:k", "first", 30) == "first"
    assert broker.claim_lease("unique:k", "second", 30) == "first"
    assert broker.claim_lease("unique:k", "first", 30) == "first"
    broker.release_lease("unique:k", "second")  # not the holder: nothing happens
    assert broker.claim_lease("unique:k", "third", 30) == "first"
    broker.release_lease("unique:k", "first")
    assert broker.claim_lease("unique:k", "third", 30) == "third"
    assert broker.claim_lease("unique:short", "a", 0.2) == "a"
    assert wait_for(lambda: broker.claim_lease("unique:short", "b", 30) == "b", timeout=3.0)
