"""TaskIndex: the event log folded into one record per task, in memory, for the dashboard.

The log is the source of truth and survives restarts; the index is a cache of it
that a dashboard process builds once (the first ``refresh()`` reads the retained
history) and then keeps up to date by reading only entries after the last id it
saw. Queries scan a list of task records newest first, with the filters as plain
attribute comparisons: 100,000 tasks scan in tens of milliseconds, with no
database round trip, which is what lets the tasks page answer in well under 200 ms.

Events may arrive out of order (a flusher thread and a settle batch write
independently), so the state follows the newest event by timestamp, and fields
are filled in from whichever event carries them.
"""

from __future__ import annotations

import bisect
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from conveyor import states
from conveyor.monitor import EVENTS_STREAM
from conveyor.monitor.events import DEAD_LETTERED, RECEIVED, STARTED, STATE_OF, decode_event

if TYPE_CHECKING:
    from conveyor.app import Conveyor

READ_CHUNK = 10_000
RUNTIME_SAMPLE = 1000
_FINISHED = frozenset({states.SUCCESS, states.FAILURE, states.REVOKED})


@dataclass(frozen=True)
class TaskSummary:
    id: str
    name: str | None
    state: str
    queue: str | None
    worker: str | None
    received_at: float | None
    started_at: float | None
    finished_at: float | None
    runtime: float | None
    retries: int
    args: str
    kwargs: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "state": self.state,
            "queue": self.queue,
            "worker": self.worker,
            "received_at": self.received_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "runtime": self.runtime,
            "retries": self.retries,
            "args": self.args,
            "kwargs": self.kwargs,
        }


@dataclass(frozen=True)
class TaskDetail(TaskSummary):
    result: str | None = None
    exception: str | None = None
    traceback: str | None = None
    reason: str | None = None
    eta: float | None = None
    parent_id: str | None = None
    root_id: str | None = None
    children: list[str] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        data = super().as_dict()
        data.update(
            result=self.result,
            exception=self.exception,
            traceback=self.traceback,
            reason=self.reason,
            eta=self.eta,
            parent_id=self.parent_id,
            root_id=self.root_id,
            children=list(self.children),
            events=[dict(e) for e in self.events],
        )
        return data


class _Task:
    """The mutable record behind a TaskSummary; slots keep 100,000 of them small."""

    __slots__ = (
        "id",
        "name",
        "state",
        "state_ts",
        "queue",
        "worker",
        "received_at",
        "started_at",
        "finished_at",
        "runtime",
        "retries",
        "args",
        "kwargs",
        "result",
        "exception",
        "traceback",
        "reason",
        "eta",
        "parent_id",
        "root_id",
        "events",
        "haystack",
    )

    def __init__(self, task_id: str) -> None:
        self.id = task_id
        self.name: str | None = None
        self.state = states.PENDING
        self.state_ts = float("-inf")
        self.queue: str | None = None
        self.worker: str | None = None
        self.received_at: float | None = None
        self.started_at: float | None = None
        self.finished_at: float | None = None
        self.runtime: float | None = None
        self.retries = 0
        self.args = ""
        self.kwargs = ""
        self.result: str | None = None
        self.exception: str | None = None
        self.traceback: str | None = None
        self.reason: str | None = None
        self.eta: float | None = None
        self.parent_id: str | None = None
        self.root_id: str | None = None
        self.events: list[dict[str, Any]] = []
        self.haystack = task_id.lower()

    def summary(self) -> TaskSummary:
        return TaskSummary(
            self.id,
            self.name,
            self.state,
            self.queue,
            self.worker,
            self.received_at,
            self.started_at,
            self.finished_at,
            self.runtime,
            self.retries,
            self.args,
            self.kwargs,
        )


class TaskIndex:
    """An in-memory index of the "events" log. Thread-safe: one lock around each call.

    Example::

        index = TaskIndex(app)
        index.refresh()
        total, page = index.query(state="FAILURE", limit=50)
    """

    def __init__(self, app: Conveyor, *, max_tasks: int | None = None) -> None:
        self.app = app
        self.max_tasks = int(max_tasks if max_tasks is not None else app.conf.events_max_count)
        self._lock = threading.RLock()
        self._after = "0"
        self._tasks: dict[str, _Task] = {}
        self._order: list[_Task] = []  # first seen order; query() walks it backwards
        self._children: dict[str, list[str]] = {}
        self._finished: list[tuple[float, str, float | None]] = []  # (ts, state, runtime), sorted
        self._names: set[str] = set()
        self._queues: set[str] = set()
        self._workers: set[str] = set()

    # -- loading -------------------------------------------------------------------
    def refresh(self, *, max_entries: int | None = None) -> int:
        """Read new log entries into the index; returns how many were read."""
        read = 0
        with self._lock:
            while max_entries is None or read < max_entries:
                chunk = READ_CHUNK if max_entries is None else min(READ_CHUNK, max_entries - read)
                entries = self.app.broker.log_read(EVENTS_STREAM, after=self._after, limit=chunk)
                if not entries:
                    break
                for _entry_id, body in entries:
                    event = decode_event(body)
                    if event is not None:
                        self.add_event(event)
                self._after = entries[-1][0]
                read += len(entries)
                if len(entries) < chunk:
                    break
            self._cap()
        return read

    def add_event(self, event: dict[str, Any]) -> None:
        """Fold one event into its task's record (public for tests and in-process feeds)."""
        task_id = event.get("id")
        if not isinstance(task_id, str) or not task_id:
            return
        with self._lock:
            task = self._tasks.get(task_id)
            if task is None:
                task = self._tasks[task_id] = _Task(task_id)
                self._order.append(task)
            self._apply(task, event)

    def _apply(self, task: _Task, event: dict[str, Any]) -> None:
        kind = event["type"]
        ts = _float(event.get("ts")) or time.time()
        task.events.append(event)
        self._apply_common(task, event)
        new_state = STATE_OF.get(kind)
        if kind == RECEIVED:
            self._apply_received(task, event, ts)
        elif kind == STARTED:
            task.started_at = ts
        elif kind == DEAD_LETTERED:
            task.reason = event.get("reason") or task.reason
            new_state = None if task.state in _FINISHED else new_state
        else:
            self._apply_outcome(task, event, ts, new_state)
        if new_state is not None and ts >= task.state_ts:
            task.state = new_state
            task.state_ts = ts

    def _apply_common(self, task: _Task, event: dict[str, Any]) -> None:
        name = event.get("name")
        if name and task.name != name:
            task.name = name
            self._names.add(name)
            task.haystack = f"{task.id} {name} {task.args} {task.kwargs}".lower()
        queue = event.get("queue")
        if queue:
            task.queue = queue
            self._queues.add(queue)
        worker = event.get("worker")
        if worker:
            task.worker = worker
            self._workers.add(worker)
        retries = event.get("retries")
        if isinstance(retries, int) and retries > task.retries:
            task.retries = retries

    def _apply_received(self, task: _Task, event: dict[str, Any], ts: float) -> None:
        if task.received_at is None:
            task.received_at = ts
        args, kwargs = event.get("args"), event.get("kwargs")
        if isinstance(args, str):
            task.args = args
        if isinstance(kwargs, str):
            task.kwargs = kwargs
        task.haystack = f"{task.id} {task.name or ''} {task.args} {task.kwargs}".lower()
        task.eta = _float(event.get("eta"))
        task.parent_id = event.get("parent_id") or task.parent_id
        task.root_id = event.get("root_id") or task.root_id
        if task.parent_id:
            siblings = self._children.setdefault(task.parent_id, [])
            if task.id not in siblings:
                siblings.append(task.id)

    def _apply_outcome(self, task: _Task, event: dict[str, Any], ts: float, new_state: str | None) -> None:
        if "runtime" in event:
            task.runtime = _float(event.get("runtime"))
        if "result" in event:
            task.result = event.get("result")
        if event.get("exception"):
            task.exception = event.get("exception")
            task.traceback = event.get("traceback") or task.traceback
        if event.get("reason"):
            task.reason = event.get("reason")
        if new_state in _FINISHED:
            task.finished_at = ts
            bisect.insort(self._finished, (ts, new_state, task.runtime))

    def _cap(self) -> None:
        """Forget the oldest tasks beyond ``max_tasks``: the log itself is bounded the same way."""
        excess = len(self._order) - self.max_tasks
        if excess <= 0:
            return
        for task in self._order[:excess]:
            self._tasks.pop(task.id, None)
            self._children.pop(task.id, None)
        del self._order[:excess]
        if len(self._finished) > self.max_tasks:
            del self._finished[: len(self._finished) - self.max_tasks]

    # -- queries -------------------------------------------------------------------
    def query(
        self,
        state: str | None = None,
        name: str | None = None,
        queue: str | None = None,
        worker: str | None = None,
        search: str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> tuple[int, list[TaskSummary]]:
        """(total matching, one page of them), newest first.

        ``state`` may be one state or several separated by commas; ``search`` is a
        case-insensitive substring of the id, the name or the argument text.
        """
        limit = max(0, int(limit))
        offset = max(0, int(offset))
        with self._lock:
            order = self._order
            if not (state or name or queue or worker or search):
                total = len(order)
                end = total - offset
                start = max(0, end - limit)
                first = [t.summary() for t in reversed(order[start:end])] if end > 0 else []
                return total, first
            wanted = {s.strip().upper() for s in state.split(",") if s.strip()} if state else None
            needle = search.strip().lower() if search else None
            total = 0
            page: list[TaskSummary] = []
            for task in reversed(order):
                if wanted is not None and task.state not in wanted:
                    continue
                if name is not None and task.name != name:
                    continue
                if queue is not None and task.queue != queue:
                    continue
                if worker is not None and task.worker != worker:
                    continue
                if needle and needle not in task.haystack:
                    continue
                if offset <= total < offset + limit:
                    page.append(task.summary())
                total += 1
            return total, page

    def get(self, task_id: str) -> TaskDetail | None:
        with self._lock:
            task = self._tasks.get(task_id)
            if task is None:
                return None
            events = sorted(task.events, key=lambda e: _float(e.get("ts")) or 0.0)
            return TaskDetail(
                task.id,
                task.name,
                task.state,
                task.queue,
                task.worker,
                task.received_at,
                task.started_at,
                task.finished_at,
                task.runtime,
                task.retries,
                task.args,
                task.kwargs,
                result=task.result,
                exception=task.exception,
                traceback=task.traceback,
                reason=task.reason,
                eta=task.eta,
                parent_id=task.parent_id,
                root_id=task.root_id,
                children=list(self._children.get(task.id, ())),
                events=events,
            )

    def series(
        self, window_s: float = 3600.0, bucket_s: float = 60.0, *, now: float | None = None
    ) -> list[dict[str, Any]]:
        """Succeeded and failed counts per bucket over the last ``window_s``, oldest first.

        Buckets are aligned to multiples of ``bucket_s`` so consecutive calls line up.
        """
        bucket_s = max(1.0, float(bucket_s))
        now = time.time() if now is None else now
        last = int(now // bucket_s)
        count = max(1, int(window_s // bucket_s))
        first = last - count + 1
        buckets = [
            {"ts": (first + i) * bucket_s, "succeeded": 0, "failed": 0, "revoked": 0} for i in range(count)
        ]
        with self._lock:
            start = bisect.bisect_left(self._finished, (first * bucket_s,))
            for ts, state, _runtime in self._finished[start:]:
                i = int(ts // bucket_s) - first
                if 0 <= i < count:
                    key = (
                        "succeeded"
                        if state == states.SUCCESS
                        else "failed"
                        if state == states.FAILURE
                        else "revoked"
                    )
                    buckets[i][key] += 1
        return buckets

    def runtime_stats(self, sample: int = RUNTIME_SAMPLE) -> dict[str, float | int | None]:
        """Mean and p95 runtime of the most recent finished tasks that have one."""
        with self._lock:
            runtimes: list[float] = []
            for _ts, _state, runtime in reversed(self._finished):
                if runtime is not None:
                    runtimes.append(runtime)
                    if len(runtimes) >= sample:
                        break
        if not runtimes:
            return {"count": 0, "mean": None, "p95": None}
        runtimes.sort()
        p95 = runtimes[min(len(runtimes) - 1, max(0, int(round(0.95 * len(runtimes))) - 1))]
        return {"count": len(runtimes), "mean": sum(runtimes) / len(runtimes), "p95": p95}

    def counts(self) -> dict[str, int]:
        """Tasks per state (for metrics and the overview)."""
        result: dict[str, int] = {}
        with self._lock:
            for task in self._order:
                result[task.state] = result.get(task.state, 0) + 1
        return result

    def names(self) -> list[str]:
        with self._lock:
            return sorted(self._names)

    def queues(self) -> list[str]:
        with self._lock:
            return sorted(self._queues)

    def workers(self) -> list[str]:
        with self._lock:
            return sorted(self._workers)

    def __len__(self) -> int:
        return len(self._order)


def _float(value: Any) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return None
