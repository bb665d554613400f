"""What only the memory broker and result store do: sharing by URL and reset()."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from conveyor.backends import memory as memory_backend
from conveyor.backends.base import ResultRecord, backend_from_url
from conveyor.backends.memory import MemoryBackend
from conveyor.brokers import memory as memory_broker
from conveyor.brokers.base import broker_from_url
from conveyor.brokers.memory import MemoryBroker
from conveyor.message import Message, new_id


@pytest.fixture(autouse=True)
def _clean() -> Iterator[None]:
    yield
    memory_broker.reset()
    memory_backend.reset()


def msg() -> Message:
    return Message(id=new_id(), task="tests.add")


def test_same_url_shares_queues_other_urls_do_not() -> None:
    MemoryBroker("memory://a").publish(msg())
    assert MemoryBroker("memory://b").queue_stats(["default"])[0].ready == 0
    assert broker_from_url("memory://a").queue_stats(["default"])[0].ready == 1
    MemoryBroker().publish(msg())
    assert MemoryBroker("memory://").queue_stats(["default"])[0].ready == 1


def test_reset_empties_brokers_already_held() -> None:
    held = MemoryBroker("memory://held")
    held.publish(msg())
    MemoryBroker.reset()
    assert held.queue_stats(["default"])[0].ready == 0
    held.publish(msg())
    assert MemoryBroker("memory://held").queue_stats(["default"])[0].ready == 1


def test_backend_same_url_shares_records_and_reset_clears() -> None:
    held = backend_from_url("memory://r", result_expires_s=10)
    assert isinstance(held, MemoryBackend)
    MemoryBackend("memory://r").store([ResultRecord(task_id="t", state="SUCCESS", result=1)])
    assert held.get("t") is not None
    assert MemoryBackend("memory://other").get("t") is None
    MemoryBackend.reset()
    assert held.get("t") is None
