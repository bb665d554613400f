"""The kv records and logs every broker keeps (schedules, heartbeats, events, control).

Runs against every broker through the ``broker_case`` fixture, like test_contract.py.
"""

from __future__ import annotations

import multiprocessing
import threading
import time

import pytest

from conveyor.brokers.base import AdminBroker, broker_from_url
from conveyor.monitor.records import before, ref_of, sort_key

from .conftest import BrokerCase


def test_kv_set_get_replace_delete(broker: AdminBroker) -> None:
    assert broker.kv_get("periodic", "nightly") is None
    broker.kv_set("periodic", "nightly", b"one")
    broker.kv_set("periodic", "nightly", b"two")
    broker.kv_set("periodic", "hourly", b"three")
    broker.kv_set("workers", "nightly", b"other namespace")
    assert broker.kv_get("periodic", "nightly") == b"two"
    assert broker.kv_items("periodic") == {"hourly": b"three", "nightly": b"two"}
    assert broker.kv_delete("periodic", "nightly") is True
    assert broker.kv_delete("periodic", "nightly") is False
    assert broker.kv_items("periodic") == {"hourly": b"three"}
    assert broker.kv_get("workers", "nightly") == b"other namespace"


def test_kv_ttl_expires(broker: AdminBroker) -> None:
    broker.kv_set("workers", "w1", b"alive", ttl_s=0.3)
    broker.kv_set("workers", "w2", b"forever")
    assert broker.kv_get("workers", "w1") == b"alive"
    deadline = time.monotonic() + 5
    while broker.kv_get("workers", "w1") is not None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert broker.kv_get("workers", "w1") is None
    assert broker.kv_items("workers") == {"w2": b"forever"}
    assert broker.kv_delete("workers", "w1") is False


def test_bad_names_are_refused(broker: AdminBroker) -> None:
    with pytest.raises(ValueError, match="namespace"):
        broker.kv_set("bad name", "k", b"v")
    with pytest.raises(ValueError, match="stream"):
        broker.log_append("bad/stream", [b"x"], maxlen=10)


def test_log_append_and_read_in_order(broker: AdminBroker) -> None:
    assert broker.log_tail("events") == "0"
    assert broker.log_read("events") == []
    broker.log_append("events", [b"a", b"b"], maxlen=100)
    broker.log_append("events", [b"c"], maxlen=100)
    broker.log_append("control", [b"other"], maxlen=100)
    entries = broker.log_read("events")
    assert [body for _, body in entries] == [b"a", b"b", b"c"]
    assert broker.log_tail("events") == entries[-1][0]
    assert [body for _, body in broker.log_read("events", after=entries[0][0])] == [b"b", b"c"]
    assert [body for _, body in broker.log_read("events", after=entries[0][0], limit=1)] == [b"b"]
    assert broker.log_read("events", after=entries[-1][0]) == []


def test_each_event_of_an_append_has_its_own_id(broker: AdminBroker) -> None:
    """What the dashboard's index does with ids: page one event at a time, and read
    an event back by its id (``before``), whether or not its append held others."""
    broker.log_append("events", [b"a", b"b", b"c"], maxlen=100)
    broker.log_append("events", [b"d"], maxlen=100)
    broker.log_append("events", [b"e", b"f"], maxlen=100)
    entries = broker.log_read("events")
    assert [body for _, body in entries] == [b"a", b"b", b"c", b"d", b"e", b"f"]
    ids = [entry_id for entry_id, _ in entries]
    assert len(set(ids)) == 6 and sorted(ids, key=lambda i: sort_key(ref_of(i))) == ids
    assert broker.log_tail("events") == ids[-1]
    for entry_id, body in entries:
        assert broker.log_read("events", after=before(ref_of(entry_id)), limit=1) == [(entry_id, body)]
    paged, after = [], "0"
    while page := broker.log_read("events", after=after, limit=1):
        paged += page
        after = page[-1][0]
    assert paged == entries
    assert [body for _, body in broker.log_read("events", after=ids[1], limit=2)] == [b"c", b"d"]


def test_log_keeps_about_maxlen_newest(broker: AdminBroker) -> None:
    for i in range(300):
        broker.log_append("events", [b"%d" % i], maxlen=50)
    bodies = [body for _, body in broker.log_read("events", limit=10_000)]
    assert bodies[-1] == b"299"
    assert bodies == [b"%d" % i for i in range(300 - len(bodies), 300)]  # oldest dropped first, no gaps
    assert 50 <= len(bodies) <= 120  # trimming may lag behind a little


def test_log_trim_by_age(broker: AdminBroker) -> None:
    broker.log_append("events", [b"old1", b"old2"], maxlen=100)
    time.sleep(0.3)
    broker.log_append("events", [b"new"], maxlen=100)
    assert broker.log_trim("events", older_than_s=0.2) == 2
    assert [body for _, body in broker.log_read("events")] == [b"new"]


def test_blocked_log_read_wakes_on_append(broker_case: BrokerCase, broker: AdminBroker) -> None:
    tail = broker.log_tail("control")
    got: list[list[tuple[str, bytes]]] = []
    reader = threading.Thread(
        target=lambda: got.append(broker_case.make().log_read("control", after=tail, timeout_s=5))
    )
    started = time.monotonic()
    reader.start()
    time.sleep(0.2)
    broker.log_append("control", [b"ping"], maxlen=100)
    reader.join(5)
    assert [body for _, body in got[0]] == [b"ping"]
    assert time.monotonic() - started < 2  # woken, not timed out


def test_blocked_log_read_times_out_empty(broker: AdminBroker) -> None:
    started = time.monotonic()
    assert broker.log_read("replies", after=broker.log_tail("replies"), timeout_s=0.3) == []
    assert 0.25 <= time.monotonic() - started < 2


def _append_from_child(url: str, body: bytes) -> None:
    time.sleep(0.3)
    broker_from_url(url).log_append("control", [body], maxlen=100)


def test_log_read_wakes_across_processes(broker_case: BrokerCase, broker: AdminBroker) -> None:
    if not broker_case.cross_process:
        pytest.skip(f"{broker_case.name} lives in one process")
    tail = broker.log_tail("control")
    child = multiprocessing.get_context("spawn").Process(
        target=_append_from_child, args=(broker_case.url, b"hi")
    )
    child.start()
    try:
        started = time.monotonic()
        entries = broker.log_read("control", after=tail, timeout_s=10)
        assert [body for _, body in entries] == [b"hi"]
        assert time.monotonic() - started < 5
    finally:
        child.join(10)


def test_expired_leases_are_swept(broker_case: BrokerCase, broker: AdminBroker) -> None:
    if broker_case.name != "sqlite":
        pytest.skip("only the SQLite broker keeps expired lease rows until swept")
    import sqlite3

    for i in range(150):
        assert broker.acquire_lease(f"beat-run:x:{i}", "me", 0.001)
    time.sleep(0.01)
    for i in range(60):
        broker.acquire_lease(f"fresh:{i}", "me", 60)
    with sqlite3.connect(broker_case.url.removeprefix("sqlite:///")) as conn:
        left = conn.execute("SELECT COUNT(*) FROM leases WHERE name LIKE 'beat-run:%'").fetchone()[0]
    assert left < 150
