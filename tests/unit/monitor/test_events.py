"""Task events: which events an outcome stands for, and the per-process buffer."""

from __future__ import annotations

import time
from typing import Any

import orjson
import pytest

from conveyor import Conveyor, states
from conveyor.exceptions import BrokerError
from conveyor.message import Message
from conveyor.monitor import EVENTS_STREAM
from conveyor.monitor import events as ev
from conveyor.monitor.events import EventBuffer, decode_event, outcome_events, received_event, trim_events
from conveyor.worker.runner import ACK, DEAD, REQUEUE, RETRY, Outcome


def _outcome(**fields: Any) -> Outcome:
    base: dict[str, Any] = {
        "task_id": "t1",
        "task_name": "mon.add",
        "queue": "q",
        "started_at": 10.0,
        "finished_at": 10.5,
    }
    base.update(fields)
    action = base.pop("action", ACK)
    return Outcome(action, **base)


def _types(outcome: Outcome) -> list[str]:
    return [e["type"] for e in outcome_events(outcome, "w1")]


def test_outcome_events_per_state() -> None:
    assert _types(_outcome(state=states.SUCCESS, result=5)) == [ev.SUCCEEDED]
    assert _types(_outcome(state=None)) == [ev.SUCCEEDED]  # ignore_result: ran, nothing stored
    assert _types(_outcome(state=states.FAILURE, exception={"type": "ValueError", "message": "x"})) == [
        ev.FAILED
    ]
    assert _types(_outcome(action=RETRY, state=states.RETRY, retry_at=20.0)) == [ev.RETRIED]
    assert _types(_outcome(state=states.REVOKED, reason="terminated")) == [ev.REVOKED]
    assert _types(_outcome(action=DEAD, state=states.FAILURE, reason="max retries")) == [
        ev.FAILED,
        ev.DEAD_LETTERED,
    ]
    assert _types(_outcome(action=REQUEUE, state=None)) == []  # not ended: it runs again
    assert _types(_outcome(action=DEAD, task_id=None, reason="undecodable")) == []


def test_outcome_event_fields() -> None:
    failed = outcome_events(
        _outcome(
            state=states.FAILURE, exception={"type": "KeyError", "message": "'k'"}, traceback="tb", retries=2
        ),
        "w1",
    )[0]
    assert failed["id"] == "t1" and failed["name"] == "mon.add" and failed["queue"] == "q"
    assert failed["worker"] == "w1" and failed["ts"] == 10.5 and failed["runtime"] == pytest.approx(0.5)
    assert failed["exception"] == "KeyError: 'k'" and failed["traceback"] == "tb" and failed["retries"] == 2
    succeeded = outcome_events(_outcome(state=states.SUCCESS, result="x" * 5000), "w1")[0]
    assert len(succeeded["result"]) == ev.REPR_LIMIT and succeeded["result"].endswith("…")


def test_received_event_leaves_out_unset_fields() -> None:
    message = Message(id="m1", task="mon.add", args=[1, 2], kwargs={"a": 1}, queue="q", retries=1)
    event = received_event(message, "w1", 5.0)
    assert event == {
        "type": ev.RECEIVED,
        "id": "m1",
        "name": "mon.add",
        "queue": "q",
        "worker": "w1",
        "ts": 5.0,
        "args": "[1,2]",
        "kwargs": '{"a":1}',
        "retries": 1,
    }
    child = Message(id="m2", task="mon.add", parent_id="p", root_id="r", eta=9.0)
    assert {"parent_id": "p", "root_id": "r", "eta": 9.0}.items() <= received_event(child, "w1", 5.0).items()


def test_short_repr_survives_a_broken_repr() -> None:
    class Bad:
        def __repr__(self) -> str:
            raise RuntimeError("no")

    assert ev.short_repr(Bad()).startswith("<unrepresentable Bad")


def test_buffer_is_off_when_events_are_disabled(app: Conveyor) -> None:
    app.conf.worker_send_task_events = False
    assert EventBuffer.for_app(app) is None
    app.conf.worker_send_task_events = True
    assert isinstance(EventBuffer.for_app(app), EventBuffer)


def test_take_due_waits_for_a_batch_or_for_age(app: Conveyor, monkeypatch: pytest.MonkeyPatch) -> None:
    buffer = EventBuffer(app, max_count=1000, flush_after_s=60)
    buffer.emit({"type": ev.STARTED, "id": "a", "ts": 1.0})
    assert buffer.take_due() == []  # young and alone: waits for company
    monkeypatch.setattr(ev, "BATCH_AFTER_S", 0.0)
    assert [orjson.loads(b)["id"] for b in buffer.take_due()] == ["a"]
    monkeypatch.setattr(ev, "BATCH_AFTER_S", 60.0)
    buffer.emit_many([{"type": ev.STARTED, "id": str(i), "ts": 1.0} for i in range(ev.BATCH_EVENTS)])
    assert len(buffer.take_due()) == ev.BATCH_EVENTS
    assert buffer.take() == []


@pytest.mark.parametrize(
    ("broker_url", "batch"),
    [("redis://127.0.0.1:1/0", ev.REDIS_BATCH_EVENTS), ("sqlite:///unused.sqlite3", ev.BATCH_EVENTS)],
)
def test_a_batch_is_smaller_on_redis(broker_url: str, batch: int, monkeypatch: pytest.MonkeyPatch) -> None:
    # Built only, never connected: the batch size follows the broker's kind.
    monkeypatch.setattr(ev, "BATCH_AFTER_S", 60.0)
    buffer = EventBuffer.for_app(Conveyor("sizes", broker=broker_url))
    assert buffer is not None
    buffer.emit_many([{"type": ev.STARTED, "id": str(i), "ts": 1.0} for i in range(batch - 1)])
    assert buffer.take_due() == []
    buffer.emit({"type": ev.STARTED, "id": "last", "ts": 1.0})
    assert len(buffer.take_due()) == batch
    assert ev.REDIS_BATCH_EVENTS < ev.BATCH_EVENTS


def test_flusher_writes_events_no_settle_took(app: Conveyor) -> None:
    buffer = EventBuffer(app, max_count=1000, flush_after_s=0.05)
    buffer.emit({"type": ev.STARTED, "id": "long", "ts": time.time()})
    deadline = time.monotonic() + 10
    while not app.broker.log_read(EVENTS_STREAM) and time.monotonic() < deadline:
        time.sleep(0.01)
    entries = app.broker.log_read(EVENTS_STREAM)
    assert [orjson.loads(body)["id"] for _, body in entries] == ["long"]
    buffer.emit({"type": ev.SUCCEEDED, "id": "long", "ts": time.time()})
    buffer.close()  # writes what is left at once
    assert len(app.broker.log_read(EVENTS_STREAM)) == 2


def test_failed_write_keeps_the_events_in_order(app: Conveyor, monkeypatch: pytest.MonkeyPatch) -> None:
    buffer = EventBuffer(app, max_count=1000, flush_after_s=60)
    buffer.emit({"type": ev.STARTED, "id": "1", "ts": 1.0})

    def down(*args: Any, **kwargs: Any) -> None:
        raise BrokerError("broker down")

    monkeypatch.setattr(type(app.broker), "log_append", down)
    buffer.flush()
    monkeypatch.undo()
    buffer.emit({"type": ev.STARTED, "id": "2", "ts": 2.0})
    buffer.flush()
    assert [orjson.loads(b)["id"] for _, b in app.broker.log_read(EVENTS_STREAM)] == ["1", "2"]


def test_trim_events_by_age(app: Conveyor) -> None:
    app.broker.log_append(EVENTS_STREAM, [b'{"type":"task-started","id":"old"}'], maxlen=100)
    app.conf.events_max_age = None
    assert trim_events(app) == 0
    time.sleep(0.05)
    app.conf.events_max_age = 0.01
    assert trim_events(app) == 1
    assert app.broker.log_read(EVENTS_STREAM) == []


def test_decode_event_rejects_what_is_not_an_event() -> None:
    assert decode_event(b"not json") is None
    assert decode_event(b"[1, 2]") is None
    assert decode_event(b'{"id": "x"}') is None
    assert decode_event(b'{"type": "task-started", "id": "x"}') == {"type": "task-started", "id": "x"}
