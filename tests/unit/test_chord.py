"""Chord completion through the worker's real settling path."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from conveyor import Conveyor, chord, states
from conveyor.backends.base import ResultRecord
from conveyor.brokers import memory
from conveyor.brokers.base import Delivery
from conveyor.exceptions import BrokerError, ChordError
from conveyor.testing import run_until_empty
from conveyor.worker.pools import Completion, Job
from conveyor.worker.runner import run_one
from conveyor.worker.settle import Settler


@pytest.fixture
def runs() -> list[int]:
    return []  # the body's runs, counted


@pytest.fixture
def app(runs: list[int]) -> Conveyor:
    memory.reset()
    app = Conveyor("t", broker="memory://chords")

    @app.task(name="t.add")
    def add(x: int, y: int) -> int:
        return x + y

    @app.task(name="t.tally")
    def tally(values: list[int]) -> int:
        runs.append(sum(values))
        return sum(values)

    @app.task(name="t.boom")
    def boom() -> None:
        raise ValueError("boom")

    return app


def test_members_settled_in_one_batch_send_the_body_once(app: Conveyor, runs: list[int]) -> None:
    result = chord([app.tasks["t.add"].s(i, i) for i in range(8)], app.tasks["t.tally"].s())()
    deliveries = app.broker.fetch(["default"], limit=8, lease_s=30, timeout_s=0)
    completions = [
        Completion(
            Job(d, task_id=d.message_id, task_name="t.add", acks_late=False),
            run_one(app, d.body, attempt=d.attempt, hostname="w@host"),
        )
        for d in deliveries
    ]
    # Two children of one prefork worker share its hostname, and the consumer
    # settles their outcomes together.
    Settler(app, hostname="w@host").settle(completions)
    assert run_until_empty(app) == 1  # one body message, nothing else
    assert runs == [56]
    assert result.get(timeout=1) == 56


def test_completion_reads_the_members_once(
    app: Conveyor, runs: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    reads: list[int] = []
    get_many = app.backend.get_many

    def counting(task_ids: Sequence[str]) -> dict[str, ResultRecord]:
        reads.append(len(task_ids))
        return get_many(task_ids)

    monkeypatch.setattr(app.backend, "get_many", counting)
    result = chord([app.tasks["t.add"].s(i, 1) for i in range(50)], app.tasks["t.tally"].s())()
    run_until_empty(app)
    assert result.get(timeout=1) == sum(range(50)) + 50
    assert reads == [50]  # once, when the last member is counted: not once per member
    assert runs == [sum(range(50)) + 50]


def test_a_failed_member_fails_the_body_without_running_it(app: Conveyor, runs: list[int]) -> None:
    header: list[Any] = [app.tasks["t.add"].s(1, 1), app.tasks["t.boom"].s(), app.tasks["t.add"].s(2, 2)]
    result = chord(header, app.tasks["t.tally"].s())()
    member = result.parent[1]
    run_until_empty(app)
    assert result.state == states.FAILURE
    assert isinstance(result.result, ChordError)  # Celery's: naming the member and its error
    assert str(result.result) == f"Dependency t.boom[{member.id}] raised ValueError('boom')"
    assert runs == []


def test_a_retried_batch_still_sends_the_body_when_results_live_elsewhere(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Results in another file: the count commits there, apart from the broker's
    # transaction, which fails once and is written again.
    app = Conveyor(
        "t",
        broker=f"sqlite:///{tmp_path / 'broker.sqlite3'}",
        backend=f"sqlite:///{tmp_path / 'results.sqlite3'}",
    )

    @app.task(name="t.add")
    def add(x: int, y: int) -> int:
        return x + y

    @app.task(name="t.total")
    def total(values: list[int]) -> int:
        return sum(values)

    result = chord([add.s(1, 1), add.s(2, 2)], total.s())()
    deliveries = app.broker.fetch(["default"], limit=2, lease_s=30, timeout_s=0)
    completions = [
        Completion(
            Job(d, task_id=d.message_id, task_name="t.add", acks_late=True),
            run_one(app, d.body, attempt=d.attempt, hostname="w@host"),
        )
        for d in deliveries
    ]
    ack = app.broker.ack
    failures = [BrokerError("database is locked")]

    def flaky_ack(done: Sequence[Delivery]) -> None:
        if failures:
            raise failures.pop()
        ack(done)

    monkeypatch.setattr(app.broker, "ack", flaky_ack)
    Settler(app, hostname="w@host").settle(completions)
    assert not failures  # the first write failed and was retried
    assert run_until_empty(app) == 1  # the body, once
    assert result.get(timeout=1) == 6
    app.close()
