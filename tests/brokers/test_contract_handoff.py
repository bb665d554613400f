"""The contract around a blocked fetch, as a broker that hands a publish straight to
a waiting consumer (Redis) must keep it: exactly once, and nothing stranded by a
consumer that stopped waiting. Runs against every broker, like test_contract.py."""

from __future__ import annotations

import threading
import time

from conveyor.brokers.base import AdminBroker, Delivery

from .conftest import BrokerCase
from .test_contract import Q, fetch, ids, msg, stats, wait_for


def test_blocked_consumer_gets_a_publish_exactly_once(broker_case: BrokerCase, broker: AdminBroker) -> None:
    producer = broker_case.make()
    got: list[Delivery] = []
    consumer = threading.Thread(target=lambda: got.extend(fetch(broker, timeout_s=20.0)))
    consumer.start()
    time.sleep(0.2)  # let it block
    m = msg()
    producer.publish(m)
    consumer.join(30)
    assert ids(got) == [m.id] and got[0].attempt == 1
    assert stats(broker) == (0, 1, 0, 0)
    assert fetch(producer, timeout_s=0.0) == []  # not also queued
    broker.ack(got)
    assert stats(broker) == (0, 0, 0, 0)
    producer.close()


def test_two_blocked_consumers_one_publish_one_delivery(broker_case: BrokerCase, broker: AdminBroker) -> None:
    consumers = [broker_case.make(), broker_case.make()]
    got: list[list[Delivery]] = [[], []]

    def wait(i: int) -> None:
        got[i].extend(fetch(consumers[i], timeout_s=1.5, lease_s=60.0))

    threads = [threading.Thread(target=wait, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    time.sleep(0.3)  # both block
    m = msg()
    broker.publish(m)
    for thread in threads:
        thread.join(30)
    assert sorted(len(g) for g in got) == [0, 1]
    assert [d.message_id for g in got for d in g] == [m.id]
    assert stats(broker) == (0, 1, 0, 0)
    for c in consumers:
        c.close()


def test_consumer_that_gave_up_waiting_strands_nothing(broker_case: BrokerCase, broker: AdminBroker) -> None:
    quitter = broker_case.make()
    assert fetch(quitter, timeout_s=0.2, lease_s=300.0) == []
    m = msg()
    broker.publish(m)
    # Another consumer gets it now, not when some 300 s lease of the quitter ran out.
    other = broker_case.make()
    got = wait_for(lambda: fetch(other, timeout_s=0.5), timeout=5.0)
    assert ids(got) == [m.id] and got[0].attempt == 1
    other.ack(got)
    assert stats(broker, Q) == (0, 0, 0, 0)
    quitter.close()
    other.close()


def test_publishes_while_blocked_keep_priority_order(broker_case: BrokerCase, broker: AdminBroker) -> None:
    producer = broker_case.make()
    got: list[Delivery] = []
    consumer = threading.Thread(target=lambda: got.extend(fetch(broker, timeout_s=20.0)))
    consumer.start()
    time.sleep(0.2)
    first = msg(priority=1)
    producer.publish(first)
    consumer.join(30)
    later = [msg(priority=p) for p in (0, 5, 0)]
    for m in later:
        producer.publish(m)
    rest = fetch(broker, limit=10)
    assert ids(got) == [first.id]
    assert ids(rest) == [later[1].id, later[0].id, later[2].id]
    producer.close()
