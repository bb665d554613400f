"""conveyor.signals: Celery's connect/send semantics, and task hooks and signals in eager mode."""

from __future__ import annotations

import gc
import logging
from collections.abc import Iterator
from typing import Any

import pytest

import conveyor
from conveyor import Conveyor, signals
from conveyor.signals import Signal
from conveyor.utils.log import get_task_logger


@pytest.fixture
def app() -> Iterator[Conveyor]:
    made = Conveyor("sig", broker="memory://", backend="memory://", set_as_current=False)
    made.conf.task_always_eager = True
    yield made
    made.close()


def test_connect_as_decorator_and_call_with_sender_filter() -> None:
    sig = Signal("demo")
    seen: list[tuple[str, Any, dict[str, Any]]] = []

    @sig.connect
    def everyone(sender: Any = None, **kwargs: Any) -> str:
        seen.append(("everyone", sender, kwargs))
        return "a"

    @sig.connect(sender="proj.add")
    def only_add(sender: Any = None, **kwargs: Any) -> str:
        seen.append(("only_add", sender, kwargs))
        return "b"

    class FakeTask:
        name = "proj.add"

    task = FakeTask()
    replies = sig.send(sender=task, x=1)
    assert [r for _, r in replies] == ["a", "b"]  # a string sender matches a task's name
    assert sig.send(sender="other", x=2) == [(everyone, "a")]
    assert seen[0][2] == {"signal": sig, "x": 1}


def test_weak_receivers_go_away_and_strong_ones_stay() -> None:
    sig = Signal("demo")

    def make() -> Any:
        def receiver(**kwargs: Any) -> int:
            return 1

        return receiver

    sig.connect(make())  # weak by default: nothing else holds it
    sig.connect(make(), weak=False)
    gc.collect()
    assert len(sig.send(sender=None)) == 1


def test_dispatch_uid_connects_once_and_disconnects() -> None:
    sig = Signal("demo")
    calls: list[int] = []

    def receiver(**kwargs: Any) -> None:
        calls.append(1)

    for _ in range(3):  # a module imported several times
        sig.connect(receiver, dispatch_uid="only-once")
    sig.send(sender=None)
    assert calls == [1]
    assert sig.disconnect(dispatch_uid="only-once")
    sig.send(sender=None)
    assert calls == [1]


def test_a_receiver_that_raises_is_logged_and_others_still_run(caplog: pytest.LogCaptureFixture) -> None:
    sig = Signal("demo")
    ran: list[str] = []

    @sig.connect
    def broken(**kwargs: Any) -> None:
        raise RuntimeError("receiver bug")

    @sig.connect
    def fine(**kwargs: Any) -> None:
        ran.append("fine")

    with caplog.at_level(logging.ERROR, logger="conveyor.signals"):
        replies = sig.send(sender=None)
    assert ran == ["fine"]
    assert isinstance(replies[0][1], RuntimeError)
    assert "receiver bug" in caplog.text


class Tracked(conveyor.Task):
    autoretry_for = (ConnectionError,)
    max_retries = 2
    default_retry_delay = 0
    calls: list[tuple[Any, ...]] = []

    def before_start(self, task_id: str, args: Any, kwargs: Any) -> None:
        self.calls.append(("before_start", args))

    def on_success(self, retval: Any, task_id: str, args: Any, kwargs: Any) -> None:
        self.calls.append(("on_success", retval))

    def on_retry(self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        self.calls.append(("on_retry", type(exc).__name__, "Traceback" in einfo.traceback))

    def on_failure(self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        self.calls.append(("on_failure", str(exc), einfo.type.__name__))

    def after_return(
        self, status: str, retval: Any, task_id: str, args: Any, kwargs: Any, einfo: Any
    ) -> None:
        self.calls.append(("after_return", status))


def test_base_class_attributes_are_defaults_and_hooks_run(app: Conveyor) -> None:
    Tracked.calls = []
    attempts: list[int] = []

    @app.task(base=Tracked, name="sig.flaky")
    def flaky(n: int) -> int:
        attempts.append(n)
        if len(attempts) < 2:
            raise ConnectionError("down")
        return n * 2

    assert isinstance(flaky, Tracked) and flaky.max_retries == 2 and flaky.autoretry_for == (ConnectionError,)
    assert flaky.delay(21).get() == 42
    assert Tracked.calls == [
        ("before_start", [21]),
        ("on_retry", "ConnectionError", True),
        ("after_return", "RETRY"),
        ("before_start", [21]),
        ("on_success", 42),
        ("after_return", "SUCCESS"),
    ]


def test_a_decorator_option_wins_over_the_class_attribute(app: Conveyor) -> None:
    @app.task(base=Tracked, name="sig.once", max_retries=0, acks_late=True)
    def once() -> None:
        raise ConnectionError("down")

    assert once.max_retries == 0 and once.acks_late is True
    Tracked.calls = []
    app.conf.task_eager_propagates = False
    assert once.delay().state == "FAILURE"
    assert ("on_failure", "down", "ConnectionError") in Tracked.calls


def test_a_hook_that_raises_never_changes_the_outcome(
    app: Conveyor, caplog: pytest.LogCaptureFixture
) -> None:
    class Broken(conveyor.Task):
        def on_success(self, retval: Any, task_id: str, args: Any, kwargs: Any) -> None:
            raise RuntimeError("hook bug")

    @app.task(base=Broken, name="sig.fine")
    def fine() -> str:
        return "ok"

    with caplog.at_level(logging.ERROR):
        assert fine.delay().get() == "ok"
    assert "on_success raised" in caplog.text and "hook bug" in caplog.text


def test_app_task_and_task_cls(app: Conveyor) -> None:
    class Custom(app.Task):  # type: ignore[misc,name-defined]
        queue = "custom"

    other = Conveyor("cls", broker="memory://", task_cls=Custom, set_as_current=False)

    @other.task
    def job() -> None: ...

    assert isinstance(job, Custom) and job.queue == "custom"
    with pytest.raises(TypeError, match="subclass of conveyor.Task"):
        app.task(base=dict)(lambda: None)
    other.close()


def test_task_signals_fire_in_eager_mode_with_celerys_arguments(app: Conveyor) -> None:
    seen: list[tuple[str, dict[str, Any]]] = []

    def record(name: str) -> Any:
        def receiver(sender: Any = None, **kwargs: Any) -> None:
            seen.append((name, {k: v for k, v in kwargs.items() if k != "signal"}))

        return receiver

    receivers = {name: record(name) for name in ("task_prerun", "task_postrun", "task_success")}
    for name, receiver in receivers.items():
        getattr(signals, name).connect(receiver)
    try:

        @app.task(name="sig.add")
        def add(x: int, y: int) -> int:
            return x + y

        add.delay(1, 2)
    finally:
        for name, receiver in receivers.items():
            getattr(signals, name).disconnect(receiver)
    kinds = [k for k, _ in seen]
    assert kinds == ["task_prerun", "task_success", "task_postrun"]
    assert seen[0][1]["args"] == [1, 2] and seen[0][1]["task"] is add
    assert seen[1][1] == {"result": 3}
    assert seen[2][1]["retval"] == 3 and seen[2][1]["state"] == "SUCCESS"


def test_get_task_logger_records_carry_the_task(app: Conveyor, caplog: pytest.LogCaptureFixture) -> None:
    logger = get_task_logger("proj.tasks")

    @app.task(name="sig.logs")
    def logs() -> None:
        logger.info("working")

    with caplog.at_level(logging.INFO, logger="conveyor.task"):
        result = logs.delay()
    (record,) = [r for r in caplog.records if r.getMessage() == "working"]
    assert record.name == "conveyor.task.proj.tasks"
    assert record.task_name == "sig.logs" and record.task_id == result.id  # type: ignore[attr-defined]


def test_a_setup_logging_receiver_takes_logging_over() -> None:
    from conveyor.worker.main import setup_logging

    calls: list[dict[str, Any]] = []

    def own_logging(**kwargs: Any) -> None:
        calls.append(kwargs)

    root = logging.getLogger()
    before = list(root.handlers)
    signals.setup_logging.connect(own_logging)
    try:
        setup_logging("info", logfile="/nonexistent/dir/never-opened.log")
    finally:
        signals.setup_logging.disconnect(own_logging)
    assert root.handlers == before, "Conveyor configured logging although a receiver took it over"
    assert calls[0]["loglevel"] == logging.INFO and calls[0]["logfile"] == "/nonexistent/dir/never-opened.log"


def test_before_task_publish_can_add_headers(app: Conveyor) -> None:
    app.conf.task_always_eager = False

    @app.task(name="sig.traced")
    def traced() -> None: ...

    def add_trace(headers: dict[str, Any], **kwargs: Any) -> None:
        assert headers["task"] == "sig.traced"
        headers["trace_id"] = "abc"

    signals.before_task_publish.connect(add_trace)
    try:
        traced.delay()
    finally:
        signals.before_task_publish.disconnect(add_trace)
    (delivery,) = app.broker.fetch(["default"], limit=1, lease_s=30, timeout_s=1)
    from conveyor.message import decode

    assert decode(delivery.body).headers == {"trace_id": "abc"}
