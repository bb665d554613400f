"""An idle PostgreSQL consumer, control reader or result waiter sends no query while
nothing happens, and still wakes at once for what does (a publish, a due eta, a result).

Queries are counted on the object's own ``Database`` (every statement but LISTEN goes
through ``retrying``), so the count is this object's alone on a shared server.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from conveyor.backends.base import ResultRecord
from conveyor.message import Message, new_id
from conveyor.states import PENDING, SUCCESS

from ..postgres_server import drop_schema, fresh_schema, postgres_url_or_skip, with_schema


@pytest.fixture
def pg_url() -> Iterator[str]:
    base = postgres_url_or_skip()
    schema = fresh_schema()
    yield with_schema(base, schema)
    drop_schema(base, schema)


def _count_queries(obj: Any) -> list[int]:
    """Count every statement ``obj`` sends from now on (calls through unchanged)."""
    db = obj._db
    calls = [0]
    real: Callable[..., Any] = db.retrying

    def counted(body: Callable[..., Any], **options: Any) -> Any:
        calls[0] += 1
        return real(body, **options)

    db.retrying = counted
    return calls


def _message(**fields: Any) -> Message:
    return Message(id=new_id(), task="tests.idle", args=[1], queue="q", **fields)


def test_repeated_idle_fetches_send_no_query_and_a_publish_or_an_eta_still_wakes_them(pg_url: str) -> None:
    from conveyor.brokers.postgres import PostgresBroker

    consumer, producer = PostgresBroker(pg_url), PostgresBroker(pg_url)
    try:
        assert consumer.fetch(["q"], limit=1, lease_s=30, timeout_s=0.05) == []  # looks once
        calls = _count_queries(consumer)
        for _ in range(5):  # a worker's fetch loop, idle
            assert consumer.fetch(["q"], limit=1, lease_s=30, timeout_s=0.05) == []
        assert calls[0] == 0, f"an idle fetch sent {calls[0]} queries"

        sent = _message()
        producer.publish(sent)
        [got] = consumer.fetch(["q"], limit=1, lease_s=30, timeout_s=10)
        assert got.message_id == sent.id
        consumer.ack([got])

        later = _message(eta=time.time() + 0.3)
        producer.publish(later)  # announced: the next look learns its due time
        assert consumer.fetch(["q"], limit=1, lease_s=30, timeout_s=0.05) == []
        calls[0] = 0
        [due] = consumer.fetch(["q"], limit=1, lease_s=30, timeout_s=10)  # quiet until due, then looks
        assert due.message_id == later.id
        assert calls[0] <= 2, f"{calls[0]} queries to wait for one eta"
    finally:
        consumer.close()
        producer.close()


def test_an_idle_log_reader_sends_no_query_until_an_append(pg_url: str) -> None:
    from conveyor.brokers.postgres import PostgresBroker

    reader, writer = PostgresBroker(pg_url), PostgresBroker(pg_url)
    try:
        assert reader.log_read("control", timeout_s=0.05) == []
        calls = _count_queries(reader)
        for _ in range(5):
            assert reader.log_read("control", timeout_s=0.05) == []
        assert calls[0] == 0, f"an idle log_read sent {calls[0]} queries"
        writer.log_append("control", [b"ping"], maxlen=100)
        assert [body for _, body in reader.log_read("control", timeout_s=10)] == [b"ping"]
    finally:
        reader.close()
        writer.close()


def test_a_result_wait_reads_on_notifications_not_on_an_interval(pg_url: str) -> None:
    from conveyor.backends.postgres import PostgresBackend

    waiter, worker = PostgresBackend(pg_url), PostgresBackend(pg_url)
    task_id = new_id()
    try:
        worker.store([ResultRecord(task_id=task_id, state=PENDING)])
        calls = _count_queries(waiter)
        record = waiter.wait(task_id, timeout_s=0.6, interval_s=0.01)
        assert record is not None and record.state == PENDING
        # The first read, and the latest record at the timeout: none per interval.
        assert calls[0] <= 2, f"{calls[0]} reads in 0.6 s with interval 0.01"

        got: list[ResultRecord | None] = []
        thread = threading.Thread(
            target=lambda: got.append(waiter.wait(task_id, timeout_s=20, interval_s=10))
        )
        thread.start()
        time.sleep(0.1)  # may land before or after the wait starts: both must end it
        worker.store([ResultRecord(task_id=task_id, state=SUCCESS, result=7)])
        thread.join(20)
        assert got and got[0] is not None and got[0].state == SUCCESS and got[0].result == 7
    finally:
        waiter.close()
        worker.close()


def test_threads_that_waited_once_and_ended_leave_no_descriptor_behind(pg_url: str) -> None:
    """A web server's thread per request that waits on a result: each gets a LISTEN
    connection and a wake-up pipe, which must go when the thread does."""
    import gc
    import os

    from conveyor.backends.postgres import PostgresBackend

    backend = PostgresBackend(pg_url)
    task_id = new_id()
    try:
        backend.store([ResultRecord(task_id=task_id, state=SUCCESS, result=1)])

        def one_request() -> None:
            record = backend.wait(task_id, timeout_s=5, interval_s=0.1)
            assert record is not None and record.state == SUCCESS

        def open_fds() -> int:
            gc.collect()
            return len(os.listdir("/proc/self/fd"))

        for _ in range(3):  # the pool's connection and anything else made once
            thread = threading.Thread(target=one_request)
            thread.start()
            thread.join()
        before = open_fds()
        for _ in range(20):
            thread = threading.Thread(target=one_request)
            thread.start()
            thread.join()
        assert open_fds() - before <= 2, "descriptors left by threads that have ended"
    finally:
        backend.close()
