"""TaskIndex bounds: memory per task, events kept per task, retention, views that agree
(Hardening issue, items 8 and 9; first-hour issue, item 10)."""

from __future__ import annotations

import time
import tracemalloc
from typing import Any

import orjson

from conveyor import Conveyor, states
from conveyor.monitor import EVENTS_STREAM
from conveyor.monitor.index import TaskIndex


def _append(app: Conveyor, *events: dict[str, Any], maxlen: int = 1_000_000) -> None:
    app.broker.log_append(EVENTS_STREAM, [orjson.dumps(e) for e in events], maxlen=maxlen)


def _task(task_id: str, ts: float, *, args: str = "[1, 2]", failed: bool = False) -> list[dict[str, Any]]:
    base = {"id": task_id, "name": "mon.add", "queue": "default", "worker": "w1@host"}
    end: dict[str, Any] = {**base, "ts": ts + 0.5, "runtime": 0.4}
    if failed:
        end.update(type="task-failed", exception="ValueError: no", traceback="Traceback\n" + "  line\n" * 200)
    else:
        end.update(type="task-succeeded", result="3")
    return [
        {**base, "type": "task-received", "ts": ts, "args": args, "kwargs": "{}", "retries": 0},
        {**base, "type": "task-started", "ts": ts + 0.1},
        end,
    ]


def test_memory_per_task_is_bounded_whatever_the_arguments(app: Conveyor) -> None:
    big = "'" + "x" * 1020 + "'"
    now = time.time()
    for chunk in range(3):
        events = []
        for i in range(1000):
            n = chunk * 1000 + i
            events += _task(f"{n:08d}-task", now + n * 0.001, args=big, failed=n % 10 == 0)
        _append(app, *events)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        index = TaskIndex(app)
        index.refresh()
        per_task = (tracemalloc.get_traced_memory()[0] - before) / len(index)
    finally:
        tracemalloc.stop()
    assert len(index) == 3000
    assert per_task < 1000, f"{per_task:.0f} bytes per task"
    # The list shows a bounded preview; the detail page reads the whole text back from the log.
    summary = index.query(limit=1)[1][0]
    assert 0 < len(summary.args) <= 200
    detail = index.get("00000010-task")
    assert detail is not None and detail.args == big
    assert detail.traceback is not None and detail.traceback.count("line") == 200


def test_a_task_retrying_forever_keeps_its_first_and_last_events(app: Conveyor) -> None:
    base = {"id": "loop", "name": "mon.add", "queue": "default", "worker": "w1@host"}
    events: list[dict[str, Any]] = []
    start = time.time() - 3000
    for n in range(2000):
        ts = start + n
        events += [
            {**base, "type": "task-received", "ts": ts, "args": "[1]", "kwargs": "{}", "retries": n},
            {**base, "type": "task-started", "ts": ts + 0.1, "retries": n},
            {**base, "type": "task-retried", "ts": ts + 0.2, "retries": n, "exception": f"E: attempt {n}"},
        ]
    _append(app, *events)
    index = TaskIndex(app, max_events=1_000_000)
    index.refresh()
    detail = index.get("loop")
    assert detail is not None and detail.state == states.RETRY and detail.retries == 1999
    assert len(detail.events) <= 30
    assert detail.omitted_events == 6000 - len(detail.events)
    assert detail.events[0]["type"] == "task-received" and detail.events[0]["ts"] == start
    assert detail.events[-1]["exception"] == "E: attempt 1999"


def test_two_indexes_on_one_store_agree_after_the_log_is_trimmed(app: Conveyor) -> None:
    now = time.time()
    early = TaskIndex(app)
    for n in range(40):
        _append(app, *_task(f"t{n:03d}", now + n, failed=n % 4 == 0), maxlen=60)
        early.refresh()
    late = TaskIndex(app)
    late.refresh()
    early.refresh()
    assert len(early) == len(late) <= 20
    assert early.query() == late.query()
    assert early.counts() == late.counts()
    assert early.series(now=now + 60) == late.series(now=now + 60)


def test_expired_events_are_ignored_and_their_tasks_dropped(app: Conveyor) -> None:
    app.conf.events_max_age = 100.0
    now = time.time()
    _append(app, *_task("gone", now - 500), *_task("old", now - 60), *_task("new", now - 1))
    index = TaskIndex(app)
    index.refresh()
    assert [t.id for t in index.query()[1]] == ["new", "old"]
    index.expire(now=now + 50)  # "old" is now 110 s old
    assert [t.id for t in index.query()[1]] == ["new"]
    assert index.get("old") is None
    assert index.counts() == {states.SUCCESS: 1}
    assert sum(b["succeeded"] for b in index.series(window_s=7200, now=now + 50)) == 1


def test_the_reader_trims_expired_events_from_the_log(app: Conveyor) -> None:
    app.conf.events_max_age = 0.2
    _append(app, *_task("a", time.time()))
    index = TaskIndex(app)
    index.refresh()
    assert len(index) == 1

    def emptied() -> bool:
        index.refresh()
        return len(index) == 0 and app.broker.log_read(EVENTS_STREAM) == []

    from conveyor.testing import wait_for

    wait_for(emptied, timeout=10, interval=0.05, message="expired events stayed in the log")


def test_a_task_that_succeeded_after_retries_has_no_current_error(app: Conveyor) -> None:
    base = {"id": "r", "name": "mon.add", "queue": "default", "worker": "w1"}
    t = time.time()
    _append(
        app,
        {"type": "task-received", **base, "ts": t, "retries": 0, "args": "[1]", "kwargs": "{}"},
        {
            "type": "task-retried",
            **base,
            "ts": t + 0.5,
            "exception": "ConnectionError: down",
            "traceback": "TB",
        },
        {"type": "task-received", **base, "ts": t + 1, "retries": 1},
        {"type": "task-succeeded", **base, "ts": t + 1.2, "runtime": 0.1, "retries": 1, "result": "7"},
    )
    index = TaskIndex(app)
    index.refresh()
    detail = index.get("r")
    assert detail is not None and detail.state == states.SUCCESS
    assert detail.exception is None and detail.traceback is None
    assert index.query()[1][0].exception is None
    assert [e.get("exception") for e in detail.events if e["type"] == "task-retried"] == [
        "ConnectionError: down"
    ]


def test_tasks_go_when_the_log_is_emptied(app: Conveyor) -> None:
    _append(app, *_task("a", time.time()))
    index = TaskIndex(app)
    index.refresh()
    assert len(index) == 1
    app.broker.log_trim(EVENTS_STREAM, older_than_s=-60)  # every entry, as a purge would
    index.refresh()
    assert len(index) == 0 and index.query() == (0, [])


def test_on_redis_events_are_read_back_by_stream_id_and_trimmed_tasks_go() -> None:
    """Redis stream ids ("<ms>-<seq>") are read back one by one and ordered like SQLite's."""
    from tests.redis_server import fresh_url, redis_server_or_skip

    app = Conveyor("mon", broker=fresh_url(redis_server_or_skip()), set_as_current=False)
    try:
        now = time.time()
        _append(app, *_task("first", now, args="'" + "y" * 500 + "'", failed=True))
        index = TaskIndex(app)
        index.refresh()
        detail = index.get("first")
        assert detail is not None and [e["type"] for e in detail.events] == [
            "task-received",
            "task-started",
            "task-failed",
        ]
        assert detail.args == "'" + "y" * 500 + "'" and detail.traceback and "line" in detail.traceback
        for n in range(30):  # XADD MAXLEN ~ trims whole nodes: write well past it
            _append(app, *[e for i in range(40) for e in _task(f"t{n}-{i}", now + n)], maxlen=100)
        index.refresh()
        assert index.get("first") is None
        late = TaskIndex(app)
        late.refresh()
        assert len(index) == len(late) and index.query() == late.query()
    finally:
        app.close()
