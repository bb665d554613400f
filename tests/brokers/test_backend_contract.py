"""The result-store contract, proved the same way for every backend (``backend_case`` fixture)."""

from __future__ import annotations

import threading
import time

import pytest

from conveyor import states
from conveyor.backends.base import ResultBackend, ResultRecord
from conveyor.message import new_id

from .conftest import BackendCase

# A wake-up, not a poll: well under the SQLite broker's safety poll (1 s) and every
# other broker's, so only a real notification passes, with room for a loaded machine
# (CI shares it). How fast the wake-up is, is measured in bench/throughput.py.
WAKE_BOUND_S = 0.5


def record(state: str = states.SUCCESS, **fields: object) -> ResultRecord:
    return ResultRecord(task_id=str(fields.pop("task_id", new_id())), state=state, **fields)  # type: ignore[arg-type]


def test_implements_protocol(backend: ResultBackend) -> None:
    assert isinstance(backend, ResultBackend)


def test_store_and_get_every_field(backend: ResultBackend) -> None:
    full = record(
        states.FAILURE,
        task="tests.fails",
        result=None,
        exception={"type": "ValueError", "module": "builtins", "message": "bad", "args": ["bad"]},
        traceback="Traceback (most recent call last): ...",
        retries=3,
        worker="w1@host",
        queue="email",
        args=[1, "two", {"three": 3}],
        kwargs={"flag": True, "nested": [1.5, None]},
        started_at=1000.25,
        finished_at=1001.5,
    )
    success = record(result={"total": 5, "items": [1, 2]}, task="tests.add")
    backend.store([full, success])
    assert backend.get(full.task_id) == full
    assert backend.get(success.task_id) == success
    assert backend.get("unknown") is None


def test_store_replaces(backend: ResultBackend) -> None:
    started = record(states.STARTED, task="tests.add", worker="w1")
    backend.store([started])
    done = started.with_changes(state=states.SUCCESS, result=3)
    backend.store([done])
    assert backend.get(started.task_id) == done
    backend.store([])


def test_get_many_returns_only_known(backend: ResultBackend) -> None:
    records = [record(result=i) for i in range(5)]
    backend.store(records)
    wanted = [records[0].task_id, records[3].task_id, "missing"]
    found = backend.get_many(wanted)
    assert found == {records[0].task_id: records[0], records[3].task_id: records[3]}
    assert backend.get_many([]) == {}


def test_wait_wakes_when_stored(backend_case: BackendCase, backend: ResultBackend) -> None:
    writer = backend_case.make(3600.0)  # another connection, as a worker process would have
    done = record(result=42)
    stored_at: list[float] = []

    def finish() -> None:
        time.sleep(0.2)
        writer.store([done.with_changes(state=states.STARTED)])
        time.sleep(0.05)
        stored_at.append(time.monotonic())
        writer.store([done])

    thread = threading.Thread(target=finish)
    thread.start()
    got = backend.wait(done.task_id, timeout_s=5.0, interval_s=0.1)
    latency = time.monotonic() - stored_at[0]
    thread.join()
    writer.close()
    assert got == done  # STARTED was not ready: it kept waiting
    assert latency < WAKE_BOUND_S, latency


def test_wait_timeout_returns_latest_or_none(backend: ResultBackend) -> None:
    start = time.monotonic()
    assert backend.wait("never-stored", timeout_s=0.2, interval_s=0.05) is None
    assert 0.18 <= time.monotonic() - start < 2.0
    running = record(states.STARTED)
    backend.store([running])
    assert backend.wait(running.task_id, timeout_s=0.1, interval_s=0.05) == running


def test_wait_returns_ready_record_at_once(backend: ResultBackend) -> None:
    done = record(states.REVOKED)
    backend.store([done])
    start = time.monotonic()
    assert backend.wait(done.task_id, timeout_s=None, interval_s=1.0) == done
    assert time.monotonic() - start < WAKE_BOUND_S


def test_forget(backend: ResultBackend) -> None:
    done = record()
    backend.store([done])
    backend.forget(done.task_id)
    backend.forget(done.task_id)
    assert backend.get(done.task_id) is None


def test_cleanup_removes_expired_records(backend_case: BackendCase) -> None:
    short = backend_case.make(60.0)
    forever = backend_case.make(0.0)
    old, kept = record(), record()
    short.store([old])
    forever.store([kept])
    assert short.cleanup(now=time.time()) == 0
    assert short.cleanup(now=time.time() + 61) == 1
    assert short.get(old.task_id) is None
    assert short.get(kept.task_id) == kept  # result_expires=0: kept forever
    short.close()
    forever.close()


def test_stores_share_records_by_url(backend_case: BackendCase, backend: ResultBackend) -> None:
    other = backend_case.make(3600.0)
    done = record(result="shared")
    other.store([done])
    assert backend.get(done.task_id) == done
    other.close()


@pytest.mark.parametrize("value", [None, 0, "", [], {"a": [1, {"b": None}]}, "ünïcode", 2**53, 1.25])
def test_results_round_trip_as_json(backend: ResultBackend, value: object) -> None:
    done = record(result=value)
    backend.store([done])
    got = backend.get(done.task_id)
    assert got is not None and got.result == value
