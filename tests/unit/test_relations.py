"""AsyncResult.children from the result backend: a handle made anywhere (not the one
the canvas returned) finds a task's children, for canvases and for tasks sent from
inside a running task."""

from __future__ import annotations

from typing import Any

import pytest

from conveyor import Conveyor, chain, chord, group
from conveyor.backends import memory as memory_results
from conveyor.brokers import memory
from conveyor.relations import stored
from conveyor.testing import run_until_empty


@pytest.fixture
def app() -> Conveyor:
    memory.reset()
    memory_results.reset()
    app = Conveyor("rel", broker="memory://relations")

    @app.task(name="rel.add")
    def add(x: int, y: int) -> int:
        return x + y

    @app.task(name="rel.total")
    def total(values: list[int]) -> int:
        return sum(values)

    @app.task(name="rel.spawn")
    def spawn(n: int) -> int:
        for i in range(n):
            add.delay(i, i)
        add.map([(1, 1), (2, 2)])
        chain(add.s(5, 5), add.s(1))()
        return n

    return app


def _ids(results: list[Any]) -> list[str]:
    return [r.id for r in results]


def test_a_chain_stores_each_steps_next_step_as_its_child_when_sent(app: Conveyor) -> None:
    add = app.tasks["rel.add"]
    last = (add.s(1, 1) | add.s(10) | add.s(100))()
    middle, first = last.parent, last.parent.parent
    fresh = app.AsyncResult(first.id)  # as another process would make it: nothing in memory
    assert _ids(fresh.children) == [middle.id]  # stored before any worker ran
    assert _ids(app.AsyncResult(middle.id).children) == [last.id]
    assert stored(app, middle.id) == (first.id, [last.id])
    run_until_empty(app)
    assert [value for _, value in app.AsyncResult(first.id).collect(timeout=1)] == [2, 12, 112]


def test_a_task_followed_by_a_group_has_the_members_as_children_not_the_body(app: Conveyor) -> None:
    add, total = app.tasks["rel.add"], app.tasks["rel.total"]
    body = chain(add.s(1, 1), group(add.s(1), add.s(2)), total.s())()
    first = body.parent.parent
    members = _ids(body.parent.results)
    assert _ids(app.AsyncResult(first.id).children) == members
    assert app.AsyncResult(members[0]).children == []
    lone = chord([add.s(1, 1), add.s(2, 2)], total.s())()
    assert all(app.AsyncResult(m.id).children == [] for m in lone.parent.results)


def test_tasks_sent_while_a_task_runs_are_stored_as_its_children(app: Conveyor) -> None:
    add, spawn = app.tasks["rel.add"], app.tasks["rel.spawn"]
    step = (add.s(0, 3) | spawn.s() | add.s(7))()  # spawn(3) sends 3 + 2 + a chain's first task
    spawned = step.parent
    run_until_empty(app)
    children = app.AsyncResult(spawned.id).children
    assert children[0].id == step.id  # its next step, stored with the chain, kept
    assert len(children) == 1 + 3 + 2 + 1
    parent, _ = stored(app, children[-1].id)
    assert parent == spawned.id
    assert stored(app, spawned.id)[0] == spawned.parent.id


def test_tasks_sent_outside_any_task_store_nothing(app: Conveyor) -> None:
    result = app.tasks["rel.add"].delay(1, 2)
    group(app.tasks["rel.add"].s(i, i) for i in range(3))()
    assert app.AsyncResult(result.id).children == []
    assert memory_results._store_for("memory://relations").records.keys() == set()


def test_with_results_disabled_a_chain_is_sent_and_has_no_stored_children() -> None:
    memory.reset()
    app = Conveyor("off", broker="memory://relations-off", backend=False)
    add = app.task(name="off.add")(lambda x, y: x + y)
    last = (add.s(1, 1) | add.s(2))()
    assert app.AsyncResult(last.parent.id).children == []
    assert app.broker.queue_stats(["default"])[0].ready == 1


def test_a_task_sending_many_tasks_writes_bounded_records_and_keeps_every_child(app: Conveyor) -> None:
    from conveyor.relations import CHUNK, RELATIONS

    add = app.tasks["rel.add"]

    @app.task(name="rel.fan_out")
    def fan_out(n: int) -> list[str]:
        return [add.delay(i, i).id for i in range(n)]

    writes: list[list[Any]] = []
    real_store = app.backend.store

    def store(records: Any) -> None:
        writes.append([r for r in records if r.task_id.startswith(RELATIONS)])
        real_store(records)

    app.backend.store = store  # type: ignore[method-assign]
    sent = fan_out.delay(2 * CHUNK + 50)
    run_until_empty(app, ["default"], max_tasks=1)
    relation_writes = [w for w in writes if w]
    assert len(relation_writes) == 2 * CHUNK + 50  # one store per send
    assert max(len(w) for w in relation_writes) <= 3  # the child, its chunk, the main record
    assert max(len(r.result.get("children") or []) for w in relation_writes for r in w) <= CHUNK
    assert [c.id for c in app.AsyncResult(sent.id).children] == sent.get(timeout=1)


def test_each_attempt_of_a_retried_task_keeps_its_children(app: Conveyor) -> None:
    add = app.tasks["rel.add"]

    @app.task(name="rel.twice", bind=True, max_retries=1)
    def twice(self: Any) -> str:
        child = add.delay(self.request.retries, 0).id
        if self.request.retries == 0:
            raise self.retry(countdown=0)
        return child

    first = (add.s(1, 1) | twice.si())()
    run_until_empty(app)
    children = [c.id for c in app.AsyncResult(first.id).children]
    assert len(children) == 2 and children[1] == first.get(timeout=1)
    assert stored(app, first.id)[0] == first.parent.id  # its parent, from the chain, kept


def test_result_relations_off_stores_none(app: Conveyor) -> None:
    app.conf.result_relations = False
    last = (app.tasks["rel.add"].s(1, 1) | app.tasks["rel.spawn"].s())()
    run_until_empty(app)
    assert app.AsyncResult(last.parent.id).children == []
    assert app.AsyncResult(last.id).children == []
    assert not [
        k for k in memory_results._store_for("memory://relations").records if k.startswith("relations:")
    ]
