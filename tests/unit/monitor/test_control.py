"""app.control and the worker's control listener, over a real broker log; heartbeats."""

from __future__ import annotations

import time
from typing import Any

import orjson
import pytest

from conveyor import Conveyor
from conveyor.monitor import CONTROL_STREAM, REPLIES_STREAM, WORKERS_NAMESPACE
from conveyor.monitor.control import ControlListener, load_revoked
from conveyor.monitor.workers import Heartbeat, list_workers, parse_heartbeat


class FakeWorker:
    """A ControlTarget that records what it was told."""

    def __init__(self) -> None:
        self.revoked: list[tuple[list[str], bool]] = []
        self.rates: dict[str, Any] = {}
        self.stopped = False

    def active(self) -> list[dict[str, Any]]:
        return [{"id": "running-1", "name": "mon.add"}]

    def reserved(self) -> list[dict[str, Any]]:
        return []

    def scheduled(self) -> list[dict[str, Any]]:
        return []

    def stats(self) -> dict[str, Any]:
        return {"pid": 1, "processed": 3}

    def revoke(self, ids: list[str], terminate: bool) -> list[str]:
        self.revoked.append((ids, terminate))
        return ["running-1"] if terminate and "running-1" in ids else []

    def set_rate_limit(self, task_name: str, rate: str | float | None) -> None:
        self.rates[task_name] = rate

    def shutdown(self) -> None:
        self.stopped = True


def _beat(app: Conveyor, name: str) -> Heartbeat:
    beat = Heartbeat(
        app,
        name=name,
        pool="solo",
        concurrency=1,
        queues=["default"],
        snapshot=lambda: {"active": 0},
        interval=0.2,
    )
    beat.beat()
    return beat


@pytest.fixture
def listeners(app: Conveyor) -> Any:
    started: list[ControlListener] = []

    def start(name: str, target: FakeWorker) -> ControlListener:
        listener = ControlListener(app, name, target, read_timeout_s=0.2)
        listener.start()
        _beat(app, name)
        started.append(listener)
        return listener

    yield start
    for listener in started:
        listener.stop()


def test_ping_returns_once_every_online_worker_answered(app: Conveyor, listeners: Any) -> None:
    listeners("w1", FakeWorker())
    listeners("w2", FakeWorker())
    started = time.monotonic()
    assert app.control.ping(timeout=10) == {"w1": "pong", "w2": "pong"}
    assert time.monotonic() - started < 5  # not the 10 s timeout


def test_inspect_commands_and_destination(app: Conveyor, listeners: Any) -> None:
    listeners("w1", FakeWorker())
    listeners("w2", FakeWorker())
    inspect = app.control.inspect(timeout=10, destination="w2")
    assert inspect.active() == {"w2": [{"id": "running-1", "name": "mon.add"}]}
    assert inspect.stats() == {"w2": {"pid": 1, "processed": 3}}
    assert inspect.registered() == {"w2": ["mon.add"]}
    assert inspect.reserved() == {"w2": []} and inspect.scheduled() == {"w2": []}
    assert set(app.control.inspect(timeout=10).ping()) == {"w1", "w2"}


def test_revoke_is_remembered_and_forwarded(app: Conveyor, listeners: Any) -> None:
    target = FakeWorker()
    listeners("w1", target)
    replies = app.control.revoke(["running-1", "queued-2"], terminate=True, reply=True, timeout=10)
    assert replies == {"w1": {"revoked": ["running-1", "queued-2"], "terminated": ["running-1"]}}
    assert target.revoked == [(["running-1", "queued-2"], True)]
    assert load_revoked(app) == {"running-1", "queued-2"}  # a worker started later drops them too
    with pytest.raises(ValueError, match="task ids"):
        app.control.revoke([])


def test_rate_limit_and_errors_come_back_as_replies(app: Conveyor, listeners: Any) -> None:
    target = FakeWorker()
    listeners("w1", target)
    assert app.control.rate_limit("mon.add", "5/s", timeout=10) == {
        "w1": {"task": "mon.add", "rate_limit": "5/s"}
    }
    assert target.rates == {"mon.add": "5/s"}
    reply = app.control.rate_limit("mon.unknown", "5/s", timeout=10)
    assert "unknown task" in reply["w1"]["error"]
    with pytest.raises(ValueError, match="invalid rate limit"):
        app.control.rate_limit("mon.add", "fast")
    with pytest.raises(ValueError, match="unknown control command"):
        app.control.broadcast("reboot")


def test_shutdown_without_reply(app: Conveyor, listeners: Any) -> None:
    target = FakeWorker()
    listeners("w1", target)
    assert app.control.shutdown() == {}
    deadline = time.monotonic() + 10
    while not target.stopped and time.monotonic() < deadline:
        time.sleep(0.01)
    assert target.stopped


def test_no_worker_means_no_replies_after_the_timeout(app: Conveyor) -> None:
    started = time.monotonic()
    assert app.control.ping(timeout=0.3) == {}
    assert 0.25 <= time.monotonic() - started < 5


def test_listener_ignores_stale_foreign_and_garbage_commands(app: Conveyor) -> None:
    now = [1000.0]
    listener = ControlListener(app, "w1", FakeWorker(), clock=lambda: now[0])

    def command(**fields: Any) -> bytes:
        return orjson.dumps({"id": "r1", "command": "ping", "reply": True, "ts": 1000.0, **fields})

    assert listener.process(command()) == {"request": "r1", "worker": "w1", "ok": "pong"}
    assert listener.process(command(destination=["w2"])) is None
    now[0] = 2000.0
    assert listener.process(command()) is None  # sent long ago: whoever asked has given up
    assert listener.process(b"not json") is None
    now[0] = 1000.0
    assert listener.process(command(command="reboot"))["error"] == "unknown command 'reboot'"  # type: ignore[index]
    assert listener.process(command(reply=False)) is None
    replies = [orjson.loads(body) for _, body in app.broker.log_read(REPLIES_STREAM)]
    assert [r.get("ok", r.get("error")) for r in replies] == ["pong", "unknown command 'reboot'"]


def test_listener_starts_after_commands_already_sent(app: Conveyor) -> None:
    app.control.broadcast("shutdown")
    target = FakeWorker()
    listener = ControlListener(app, "w1", target, read_timeout_s=0.1)
    listener.start()
    try:
        time.sleep(0.3)
        assert not target.stopped  # the old command was not for this worker
        assert app.broker.log_read(CONTROL_STREAM)
    finally:
        listener.stop()


def test_listener_blocks_instead_of_polling(app: Conveyor) -> None:
    calls = []
    original = app.broker.log_read

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append(kwargs.get("timeout_s"))
        return original(*args, **kwargs)

    app.broker.log_read = counting  # type: ignore[method-assign]
    listener = ControlListener(app, "w1", FakeWorker(), read_timeout_s=0.5)
    listener.start()
    time.sleep(1.2)
    listener.stop()
    assert 1 <= len(calls) <= 4 and all(t == 0.5 for t in calls)


# --------------------------------------------------------------------------- heartbeats
def test_heartbeat_online_offline_and_final_record(app: Conveyor) -> None:
    counts = {"active": 1, "processed": 7, "failed": 2}
    beat = Heartbeat(
        app,
        name="w1",
        pool="prefork",
        concurrency=2,
        queues=["a", "b"],
        snapshot=lambda: counts,
        interval=0.2,
    )
    beat.start()
    try:
        (info,) = list_workers(app)
        assert (info.name, info.pool, info.concurrency, info.queues) == ("w1", "prefork", 2, ["a", "b"])
        assert (info.active, info.processed, info.failed, info.online) == (1, 7, 2, True)
        counts["processed"] = 8
        deadline = time.monotonic() + 10
        while list_workers(app)[0].processed != 8 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert list_workers(app)[0].processed == 8
    finally:
        beat.stop(offline=True)
    (info,) = list_workers(app)
    assert info.state == "offline" and not info.online


def test_a_silent_worker_is_offline_after_three_intervals(app: Conveyor) -> None:
    record = {"hostname": "h", "pid": 1, "interval": 2.0, "sent_at": time.time() - 5.0}
    app.broker.kv_set(WORKERS_NAMESPACE, "recent", orjson.dumps(record))
    record["sent_at"] = time.time() - 7.0
    app.broker.kv_set(WORKERS_NAMESPACE, "silent", orjson.dumps(record))
    app.broker.kv_set(WORKERS_NAMESPACE, "garbage", b"{")
    workers = list_workers(app)
    assert [(w.name, w.online) for w in workers] == [("recent", True), ("silent", False)]
    assert parse_heartbeat("x", b"[1]") is None


def test_heartbeat_survives_a_broker_outage(app: Conveyor, monkeypatch: pytest.MonkeyPatch) -> None:
    from conveyor.exceptions import BrokerError

    beat = _beat(app, "w1")

    def down(*args: Any, **kwargs: Any) -> None:
        raise BrokerError("down")

    monkeypatch.setattr(type(app.broker), "kv_set", down)
    beat.beat()  # logged, not raised
    monkeypatch.undo()
    beat.beat()
    assert [w.name for w in list_workers(app)] == ["w1"]
