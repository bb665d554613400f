"""The chord counter: every result store counts each member once and answers
"complete" exactly once per chord, whoever counts and however often."""

from __future__ import annotations

import multiprocessing
import threading
from typing import Any

import pytest

from conveyor.backends.base import ResultBackend, backend_from_url
from conveyor.brokers.base import AdminBroker
from conveyor.message import new_id

from .conftest import BackendCase, BrokerCase


def count(backend: ResultBackend, chord_id: str, task_id: str, size: int) -> bool:
    return backend.count_chord_member(chord_id, task_id, size=size).get()


def test_each_member_counts_once_and_only_the_last_completes(backend: ResultBackend) -> None:
    chord_id, other = new_id(), new_id()
    answers = [count(backend, chord_id, member, 3) for member in ("a", "b", "a", "b", "c", "c", "a")]
    assert answers == [False, False, False, False, True, False, False]
    # Chords are counted apart, even with the same member ids.
    assert [count(backend, other, member, 2) for member in ("c", "a")] == [False, True]


def test_a_one_member_chord_completes_once(backend: ResultBackend) -> None:
    chord_id = new_id()
    assert [count(backend, chord_id, "only", 1) for _ in range(3)] == [True, False, False]


def _count_in_child(url: str, chord_id: str, members: list[str], size: int, start: Any, out: Any) -> None:
    backend = backend_from_url(url, result_expires_s=3600.0)
    start.wait(60)  # every child made, imported and ready: then they race
    out.put(sum(count(backend, chord_id, member, size) for member in members))
    backend.close()


def test_concurrent_counting_completes_exactly_once(
    backend_case: BackendCase, backend: ResultBackend
) -> None:
    chord_id, size = new_id(), 60
    members = [f"m{i}" for i in range(size)]
    # Four counters race over every member, each in its own order, so each member is
    # counted by several of them at once: the repeats must not count.
    orders = [members[i * 15 :] + members[: i * 15] for i in range(4)]
    if backend_case.name == "memory":  # one process's memory: race threads instead
        totals: list[int] = []
        threads = [
            threading.Thread(
                target=lambda o=order: totals.append(sum(count(backend, chord_id, m, size) for m in o))
            )
            for order in orders
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
    else:
        # Spawned, not forked: each child starts from nothing, as a worker on
        # another machine (or a fresh prefork child) would.
        ctx = multiprocessing.get_context("spawn")
        out, start = ctx.Queue(), ctx.Barrier(len(orders))
        children = [
            ctx.Process(target=_count_in_child, args=(backend_case.url, chord_id, order, size, start, out))
            for order in orders
        ]
        for child in children:
            child.start()
        totals = [out.get(timeout=60) for _ in children]
        for child in children:
            child.join(10)
    assert sum(totals) == 1, totals
    assert not count(backend, chord_id, members[0], size)  # a late repeat after completion


def test_counting_joins_the_brokers_batch(broker_case: BrokerCase, broker: AdminBroker) -> None:
    backend = broker.result_backend(result_expires_s=3600.0)
    chord_id = new_id()
    with broker.batch():
        first = backend.count_chord_member(chord_id, "a", size=2)
        second = backend.count_chord_member(chord_id, "b", size=2)
    assert (first.get(), second.get()) == (False, True)
    if broker_case.name == "memory":
        return  # the memory store writes at once: it has no batch to undo
    # A batch that fails midway counts nothing, so a member whose result and ack
    # were not written is counted when it runs again.
    again = new_id()
    with pytest.raises(RuntimeError), broker.batch():
        backend.count_chord_member(again, "a", size=1)
        raise RuntimeError("settle failed")
    assert count(backend, again, "a", 1)
