"""TaskIndex: the event log folded into task records, and the queries the dashboard makes."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from conveyor import Conveyor, states
from conveyor.monitor import EVENTS_STREAM
from conveyor.monitor.index import TaskIndex


@pytest.fixture(autouse=True)
def _no_age_limit(app: Conveyor) -> None:
    app.conf.events_max_age = None  # these events are dated in 1970


def _append(app: Conveyor, *events: dict[str, Any]) -> None:
    app.broker.log_append(EVENTS_STREAM, [orjson.dumps(e) for e in events], maxlen=10_000)


def _task(
    task_id: str, ts: float, *, name: str = "mon.add", outcome: str = "task-succeeded", **extra: Any
) -> list[dict[str, Any]]:
    base = {
        "id": task_id,
        "name": name,
        "queue": extra.pop("queue", "default"),
        "worker": extra.pop("worker", "w1"),
    }
    return [
        {
            "type": "task-received",
            **base,
            "ts": ts,
            "args": extra.pop("args", "[1, 2]"),
            "kwargs": "{}",
            **extra,
        },
        {"type": "task-started", **base, "ts": ts + 0.1},
        {
            "type": outcome,
            **base,
            "ts": ts + 0.6,
            "runtime": 0.5,
            "result": "3",
            "exception": "ValueError: no" if outcome == "task-failed" else None,
        },
    ]


def test_refresh_builds_records_and_reads_only_new_entries(app: Conveyor) -> None:
    _append(app, *_task("a", 100.0), *_task("b", 101.0, outcome="task-failed"))
    index = TaskIndex(app)
    assert index.refresh() == 6
    assert index.refresh() == 0
    _append(app, *_task("c", 102.0))
    assert index.refresh() == 3
    total, page = index.query()
    assert total == 3 and [t.id for t in page] == ["c", "b", "a"]  # newest first
    a = index.get("a")
    assert a is not None
    assert (a.state, a.received_at, a.started_at, a.finished_at, a.runtime) == (
        states.SUCCESS,
        100.0,
        100.1,
        100.6,
        0.5,
    )
    assert (a.args, a.result, a.worker, a.queue) == ("[1, 2]", "3", "w1", "default")
    assert [e["type"] for e in a.events] == ["task-received", "task-started", "task-succeeded"]
    b = index.get("b")
    assert b is not None and b.state == states.FAILURE and b.exception == "ValueError: no"
    assert index.get("nope") is None


def test_state_follows_the_newest_event_even_when_written_late(app: Conveyor) -> None:
    received, started, succeeded = _task("a", 100.0)
    _append(app, succeeded, received, started)  # a flusher wrote the early ones after the settle
    index = TaskIndex(app)
    index.refresh()
    detail = index.get("a")
    assert detail is not None and detail.state == states.SUCCESS and detail.started_at == 100.1
    assert [e["type"] for e in detail.events] == ["task-received", "task-started", "task-succeeded"]


def test_retry_then_success_and_dead_letter_reason(app: Conveyor) -> None:
    base = {"id": "r", "name": "mon.add", "queue": "default", "worker": "w1"}
    _append(
        app,
        {"type": "task-received", **base, "ts": 1.0, "retries": 0},
        {"type": "task-retried", **base, "ts": 1.5, "exception": "ConnectionError: down", "retries": 0},
        {"type": "task-received", **base, "ts": 2.0, "retries": 1},
        {"type": "task-started", **base, "ts": 2.1, "retries": 1},
        {"type": "task-succeeded", **base, "ts": 2.2, "runtime": 0.1, "retries": 1},
        {"type": "task-failed", "id": "d", "name": "mon.add", "ts": 3.0, "exception": "KeyError: x"},
        {
            "type": "task-dead-lettered",
            "id": "d",
            "name": "mon.add",
            "ts": 3.0,
            "reason": "max retries exceeded",
        },
    )
    index = TaskIndex(app)
    index.refresh()
    r = index.get("r")
    assert r is not None and r.state == states.SUCCESS and r.retries == 1 and r.received_at == 1.0
    d = index.get("d")
    assert d is not None and d.state == states.FAILURE and d.reason == "max retries exceeded"


def test_query_filters_search_and_pages(app: Conveyor) -> None:
    events = []
    for i in range(30):
        events += _task(
            f"t{i:02d}",
            100.0 + i,
            name="mon.a" if i % 2 else "mon.b",
            queue="email" if i % 3 == 0 else "default",
            worker=f"w{i % 2}",
            outcome="task-failed" if i % 5 == 0 else "task-succeeded",
            args=f"['user{i}@example.com']",
        )
    _append(app, *events)
    index = TaskIndex(app)
    index.refresh()
    total, page = index.query(limit=10, offset=25)
    assert total == 30 and [t.id for t in page] == ["t04", "t03", "t02", "t01", "t00"]
    total, page = index.query(state="FAILURE")
    assert total == 6 and {t.id for t in page} == {f"t{i:02d}" for i in range(0, 30, 5)}
    total, _ = index.query(state="failure,success")
    assert total == 30
    total, page = index.query(name="mon.a", queue="email")
    assert total == 5 and all(t.name == "mon.a" and t.queue == "email" for t in page)
    total, page = index.query(worker="w0", state="FAILURE", limit=2)
    assert total == 3 and [t.id for t in page] == ["t20", "t10"]
    assert index.query(search="USER17@")[0] == 1
    assert index.query(search="t17")[1][0].id == "t17"
    assert index.query(search="mon.b")[0] == 15
    assert index.query(search="nothing")[0] == 0
    assert index.query(offset=100) == (30, [])
    assert index.names() == ["mon.a", "mon.b"] and index.queues() == ["default", "email"]
    assert index.workers() == ["w0", "w1"]
    assert index.counts() == {states.SUCCESS: 24, states.FAILURE: 6}


def test_children_series_and_runtime_stats(app: Conveyor) -> None:
    _append(
        app,
        *_task("parent", 1000.0),
        *_task("kid1", 1001.0, parent_id="parent", root_id="parent"),
        *_task("kid2", 1065.0, parent_id="parent", root_id="parent", outcome="task-failed"),
    )
    index = TaskIndex(app)
    index.refresh()
    parent = index.get("parent")
    assert parent is not None and parent.children == ["kid1", "kid2"]
    kid = index.get("kid1")
    assert kid is not None and (kid.parent_id, kid.root_id) == ("parent", "parent")
    series = index.series(window_s=180, bucket_s=60, now=1100.0)
    assert [b["ts"] for b in series] == [960.0, 1020.0, 1080.0]
    assert [(b["succeeded"], b["failed"]) for b in series] == [(2, 0), (0, 1), (0, 0)]
    stats = index.runtime_stats()
    assert stats["count"] == 3 and stats["mean"] == 0.5 and stats["p95"] == 0.5


def test_bad_entries_are_skipped_and_the_index_is_bounded(app: Conveyor) -> None:
    app.broker.log_append(EVENTS_STREAM, [b"garbage", b"[]", b'{"type": "task-started"}'], maxlen=100)
    for i in range(5):
        _append(app, *_task(f"t{i}", float(i)))
    index = TaskIndex(app, max_tasks=3)
    index.refresh()
    assert len(index) == 3
    assert [t.id for t in index.query()[1]] == ["t4", "t3", "t2"]
    assert index.get("t0") is None
