"""Unique tasks, eager canvases and result sets, on the in-memory stores."""

from __future__ import annotations

import time
from typing import Any

import pytest

from conveyor import Conveyor, GroupResult, chain, chord, group, states
from conveyor.brokers import memory
from conveyor.result import ResultSet
from conveyor.testing import run_until_empty, wait_for


@pytest.fixture
def app() -> Conveyor:
    memory.reset()
    app = Conveyor("u", broker="memory://unique")

    @app.task(name="u.add", unique_for=True)
    def add(x: int, y: int) -> int:
        return x + y

    @app.task(name="u.window", unique_for=60)
    def window(x: int) -> int:
        return x

    @app.task(name="u.plain", bind=True, max_retries=1)
    def plain(self: Any, fail: bool) -> str:
        if fail and self.request.retries == 0:
            raise self.retry(countdown=0.2)
        return "done"

    @app.task(name="u.total")
    def total(values: list[int]) -> int:
        return sum(values)

    return app


def _ready(app: Conveyor) -> int:
    return app.broker.queue_stats(["default"])[0].ready


def test_unique_for_true_returns_the_queued_task_until_it_finishes(app: Conveyor) -> None:
    add = app.tasks["u.add"]
    first = add.delay(1, 2)
    assert add.delay(1, 2).id == first.id
    other = add.delay(2, 2)  # other arguments: another key
    assert other.id != first.id and _ready(app) == 2
    run_until_empty(app)
    assert first.get(timeout=1) == 3
    assert add.delay(1, 2).id != first.id  # finished: the key is free


def test_unique_for_seconds_holds_the_key_after_the_task_finished(app: Conveyor) -> None:
    window = app.tasks["u.window"]
    first = window.delay(5)
    run_until_empty(app)
    assert window.delay(5).id == first.id and _ready(app) == 0


def test_an_idempotency_key_is_held_across_retries_and_freed_by_expiry(app: Conveyor) -> None:
    plain = app.tasks["u.plain"]
    first = plain.apply_async((True,), idempotency_key="order-42")
    run_until_empty(app)  # runs once, asks for a retry
    assert first.state == states.RETRY
    assert plain.apply_async((True,), idempotency_key="order-42").id == first.id
    wait_for(lambda: run_until_empty(app) and first.ready(), timeout=10)
    assert first.get(timeout=1) == "done"
    late = plain.apply_async((False,), idempotency_key="order-43", expires=0.01)
    time.sleep(0.02)
    run_until_empty(app)
    assert late.state == states.REVOKED
    assert plain.apply_async((False,), idempotency_key="order-43").id != late.id


def test_eager_nested_canvas(app: Conveyor) -> None:
    app.conf.task_always_eager = True
    add, total = app.tasks["u.add"], app.tasks["u.total"]
    assert (add.s(1, 2) | add.s(10))().get() == 13
    assert chain(group(add.s(1, 1), add.s(2, 2)), total.s(), add.s(10))().get() == 16
    assert chord([add.s(1, 1) | add.s(1), add.s(3, 3)], total.s())().get() == 9


def test_result_sets_and_saved_groups(app: Conveyor) -> None:
    result = group(app.tasks["u.add"].s(i, i) for i in range(3))()
    assert isinstance(result, GroupResult) and result.save() is result
    run_until_empty(app)
    restored = GroupResult.restore(result.id, app=app)
    assert restored is not None and restored.get(timeout=1) == [0, 2, 4]
    assert GroupResult.restore("nope", app=app) is None
    rs = ResultSet(list(restored), app=app)
    assert rs.ready() and rs.completed_count() == 3 and rs.join(timeout=1) == [0, 2, 4]


def test_collect_walks_a_chain_from_its_first_step(app: Conveyor) -> None:
    add = app.tasks["u.add"]
    last = (add.s(1, 1) | add.s(10) | add.s(100))()
    run_until_empty(app)
    first = last.parent.parent
    assert [value for _, value in first.collect(timeout=1)] == [2, 12, 112]
    assert first.children == [last.parent]


def test_a_task_the_worker_ended_frees_its_key(app: Conveyor) -> None:
    from conveyor.exceptions import TimeLimitExceeded
    from conveyor.worker.pools import Completion, Job, failed_job
    from conveyor.worker.settle import Settler

    add = app.tasks["u.add"]
    first = add.delay(1, 2)
    (delivery,) = app.broker.fetch(["default"], limit=1, lease_s=30, timeout_s=0)
    job = Job(delivery, task_id=first.id, task_name="u.add", acks_late=False)
    # A hard time limit (or a process lost without acks_late): the worker, not the task, ends it.
    outcome = failed_job(job, TimeLimitExceeded("killed"), "killed")
    Settler(app, hostname="w@host").settle([Completion(job, outcome)])
    assert first.state == states.FAILURE
    assert add.delay(1, 2).id != first.id
