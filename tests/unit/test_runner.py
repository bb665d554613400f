"""run_one() decides every outcome; these pin the decision for each kind of message."""

from __future__ import annotations

import time

import pytest

from conveyor import Conveyor, Reject, SoftTimeLimitExceeded, states
from conveyor.message import Message, decode
from conveyor.worker.runner import ACK, DEAD, REQUEUE, RETRY, run_one


class Down(Exception):
    pass


@pytest.fixture
def app() -> Conveyor:
    app = Conveyor("runner", broker="memory://runner")

    @app.task(name="t.add")
    def add(x: int, y: int) -> int:
        return x + y

    @app.task(name="t.boom")
    def boom() -> None:
        raise KeyError("missing")

    @app.task(name="t.retry", bind=True, max_retries=2)
    def retry(self) -> None:  # type: ignore[no-untyped-def]
        raise self.retry(exc=Down("smtp"), countdown=60)

    @app.task(
        name="t.auto",
        autoretry_for=(Down,),
        retry_backoff=True,
        retry_jitter=False,
        retry_kwargs={"max_retries": 3},
    )
    def auto() -> None:
        raise Down("again")

    @app.task(name="t.reject")
    def reject(requeue: bool) -> None:
        raise Reject("bad input", requeue=requeue)

    @app.task(name="t.slow", soft_time_limit=0.1)
    def slow() -> str:
        try:
            time.sleep(2)
        except SoftTimeLimitExceeded:
            return "cleaned up"
        return "finished"

    @app.task(name="t.unjson")
    def unjson() -> object:
        return object()

    return app


def body(task: str, *args: object, retries: int = 0, expires: float | None = None) -> bytes:
    return Message(id="id-1", task=task, args=list(args), retries=retries, expires=expires).encode()


def test_success(app: Conveyor) -> None:
    out = run_one(app, body("t.add", 2, 3), attempt=1, hostname="h")
    assert (out.action, out.state, out.result) == (ACK, states.SUCCESS, 5)
    assert "succeeded in" in out.log and out.log.endswith(": 5")
    assert out.started_at is not None and out.finished_at is not None and out.finished_at >= out.started_at


def test_failure_keeps_type_message_and_traceback(app: Conveyor) -> None:
    out = run_one(app, body("t.boom"), attempt=1, hostname="h")
    assert (out.action, out.state) == (ACK, states.FAILURE)
    assert out.exception is not None and out.exception["type"] == "KeyError"
    assert out.traceback is not None and "raise KeyError" in out.traceback


def test_retry_builds_next_message(app: Conveyor) -> None:
    before = time.time()
    out = run_one(app, body("t.retry"), attempt=1, hostname="h")
    assert (out.action, out.state) == (RETRY, states.RETRY)
    assert out.retry_body is not None and out.retry_at is not None
    again = decode(out.retry_body)
    assert again.retries == 1 and again.id == "id-1"
    assert before + 59 <= (again.eta or 0) <= time.time() + 61
    assert "retry in 60s" in out.log or "retry in 59s" in out.log


def test_exhausted_retries_fail_and_dead_letter(app: Conveyor) -> None:
    out = run_one(app, body("t.retry", retries=2), attempt=1, hostname="h")
    assert (out.action, out.state) == (DEAD, states.FAILURE)
    assert out.exception is not None and out.exception["type"] == "Down"
    assert out.reason is not None and "max retries exceeded (2)" in out.reason


def test_autoretry_uses_backoff(app: Conveyor) -> None:
    out = run_one(app, body("t.auto", retries=3 - 1), attempt=1, hostname="h")
    assert out.action == RETRY
    assert out.retry_at is not None and out.retry_at - time.time() == pytest.approx(4, abs=0.5)
    assert run_one(app, body("t.auto", retries=3), attempt=1, hostname="h").action == DEAD


def test_reject(app: Conveyor) -> None:
    dead = run_one(app, body("t.reject", False), attempt=1, hostname="h")
    assert dead.action == DEAD and dead.reason == "rejected: bad input"
    assert run_one(app, body("t.reject", True), attempt=1, hostname="h").action == REQUEUE


def test_unknown_task_and_garbage_are_dead_lettered(app: Conveyor) -> None:
    unknown = run_one(app, body("t.nope"), attempt=1, hostname="h")
    assert unknown.action == DEAD and "unknown task 't.nope'" in (unknown.reason or "")
    assert unknown.state == states.FAILURE
    garbage = run_one(app, b"\x00\xffnot json", attempt=1, hostname="h")
    assert garbage.action == DEAD and (garbage.reason or "").startswith("undecodable message")


def test_expired_is_revoked_not_run(app: Conveyor) -> None:
    out = run_one(app, body("t.boom", expires=time.time() - 1), attempt=1, hostname="h")
    assert (out.action, out.state) == (ACK, states.REVOKED)


def test_soft_time_limit_raises_inside_the_task(app: Conveyor) -> None:
    started = time.monotonic()
    out = run_one(app, body("t.slow"), attempt=1, hostname="h")
    assert out.result == "cleaned up"
    assert time.monotonic() - started < 1


def test_return_value_that_is_not_json_fails_clearly(app: Conveyor) -> None:
    out = run_one(app, body("t.unjson"), attempt=1, hostname="h")
    assert out.state == states.FAILURE
    assert "cannot be stored as JSON" in (out.exception or {}).get("message", "")
