"""TaskIndex: the event log folded into one small record per task, in memory, for the dashboard.

The log is the source of truth and survives restarts; the index is a cache of it
that a dashboard process builds once (the first ``refresh()`` reads the retained
history) and then keeps up to date by reading only entries after the last id it
saw. Queries scan a list of task records newest first, with the filters as plain
attribute comparisons: 100,000 tasks scan in tens of milliseconds, with no
database round trip, which is what lets the tasks page answer in well under 200 ms.

Bounded by the log, in memory and in kind:

- a record keeps what the list shows and filters on, with every text cut to a
  ``PREVIEW_CHARS`` preview, and the log ids of the task's events rather than the
  events: the detail page reads those entries back (whole arguments, result,
  traceback, timeline), so a task's cost does not grow with its arguments;
- a task keeps the ids of its first ``KEEP_FIRST`` and last ``KEEP_LAST`` events and
  counts the others, so a task retrying forever stays one small record;
- tasks whose events are all gone from the log (trimmed to ``events_max_count``, or
  older than ``events_max_age``) are dropped, so every dashboard on one store,
  whenever it started, shows the same tasks and the same totals: those of the log.

Events may arrive out of order (a flusher thread and a settle batch write
independently), so the state follows the newest event by timestamp, and fields
are filled in from whichever event carries them.
"""

from __future__ import annotations

import bisect
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from conveyor import states
from conveyor.exceptions import BrokerConnectionError, BrokerError
from conveyor.monitor import EVENTS_STREAM
from conveyor.monitor.events import (
    DEAD_LETTERED,
    FAILED,
    PROGRESS,
    RECEIVED,
    RETRIED,
    STARTED,
    STATE_OF,
    decode_event,
)
from conveyor.monitor.records import (
    KEEP_FIRST,
    KEEP_LAST,
    LogKey,
    Ref,
    TaskDetail,
    TaskRecord,
    TaskSummary,
    as_float,
    before,
    first_key,
    newest_key,
    preview,
    progress_of,
    ref_of,
    shared,
    sort_key,
    text,
)

if TYPE_CHECKING:
    from conveyor.app import Conveyor

log = logging.getLogger("conveyor.monitor")

READ_CHUNK = 10_000
RUNTIME_SAMPLE = 1000
TRIM_EVERY_S = 60.0
_FINISHED = frozenset({states.SUCCESS, states.FAILURE, states.REVOKED})
# The event kinds whose error is the task's current one only while they set its state.
_ERRORS = frozenset({FAILED, RETRIED})

Listener = Callable[[dict[str, Any]], None]


class TaskIndex:
    """An in-memory index of the "events" log. Thread-safe: one lock around each call.

    Example::

        index = TaskIndex(app)
        index.refresh()
        total, page = index.query(state="FAILURE", limit=50)

    Args:
        max_tasks: tasks kept at most (default ``events_max_count``).
        max_events: events the kept tasks may stand for (default ``events_max_count``,
            the log's own bound): the oldest tasks go first.
        listeners: called with every event read (under the index's lock), so
            another view (``/metrics``) counts the same events without a second read.
    """

    def __init__(
        self,
        app: Conveyor,
        *,
        max_tasks: int | None = None,
        max_events: int | None = None,
        listeners: Iterable[Listener] = (),
    ) -> None:
        self.app = app
        default = int(app.conf.events_max_count)
        self.max_tasks = int(max_tasks if max_tasks is not None else default)
        self.max_events = int(max_events if max_events is not None else default)
        self.listeners = list(listeners)
        self._lock = threading.RLock()
        self._after = "0"
        self._tasks: dict[str, TaskRecord] = {}
        self._order: list[TaskRecord] = []  # first seen order; query() walks it backwards
        self._children: dict[str, list[str]] = {}
        self._finished: list[tuple[float, str, float | None]] = []  # (ts, state, runtime), sorted
        self._events = 0  # events the kept tasks stand for
        self._oldest: Ref | None = None  # the log's oldest entry when last looked
        self._trimmed_at = float("-inf")  # monotonic time this reader last trimmed the log by age
        self._names: set[str] = set()
        self._queues: set[str] = set()
        self._workers: set[str] = set()

    # -- loading -------------------------------------------------------------------
    def refresh(self, *, max_entries: int | None = None) -> int:
        """Read new log entries into the index and apply retention; returns how many were read."""
        read = 0
        with self._lock:
            self._trim_log()
            cutoff = self._cutoff(time.time())
            while max_entries is None or read < max_entries:
                chunk = READ_CHUNK if max_entries is None else min(READ_CHUNK, max_entries - read)
                entries = self.app.broker.log_read(EVENTS_STREAM, after=self._after, limit=chunk)
                if not entries:
                    break
                for entry_id, body in entries:
                    event = decode_event(body)
                    if event is not None and (as_float(event.get("ts")) or cutoff) >= cutoff:
                        self._add(event, ref_of(entry_id))
                self._after = entries[-1][0]
                read += len(entries)
                if len(entries) < chunk:
                    break
            self._forget_trimmed()
            self.expire()
            self._cap()
        return read

    def add_event(self, event: dict[str, Any]) -> None:
        """Fold one event into its task's record (public for tests and in-process feeds)."""
        with self._lock:
            self._add(event, None)

    def _add(self, event: dict[str, Any], ref: Ref | None) -> None:
        task_id = event.get("id")
        if not isinstance(task_id, str) or not task_id:
            return
        task = self._tasks.get(task_id)
        if task is None:
            task = self._tasks[task_id] = TaskRecord(task_id)
            self._order.append(task)
        self._keep(task, event if ref is None else ref)
        self._events += 1
        self._apply(task, event)
        for listener in self.listeners:
            listener(event)

    @staticmethod
    def _keep(task: TaskRecord, ref: Ref | dict[str, Any]) -> None:
        task.count += 1
        refs = task.refs
        if len(refs) >= KEEP_FIRST + KEEP_LAST:
            refs = refs[:KEEP_FIRST] + refs[KEEP_FIRST + 1 :]  # the first ones stay
        task.refs = (*refs, ref)

    def _apply(self, task: TaskRecord, event: dict[str, Any]) -> None:
        kind = event["type"]
        ts = as_float(event.get("ts")) or time.time()
        self._apply_common(task, event)
        new_state = STATE_OF.get(kind)
        if kind == RECEIVED:
            self._apply_received(task, event, ts)
        elif kind == STARTED:
            task.started_at = ts
        elif kind == DEAD_LETTERED:
            new_state = None if task.state in _FINISHED else new_state
        elif kind == PROGRESS:
            # A custom state (update_state) while the task runs; the outcome's event replaces it.
            new_state = None if task.state in _FINISHED else str(event.get("state") or "PROGRESS")
            task.progress = progress_of(event.get("meta"))
        else:
            self._apply_outcome(task, event, ts, new_state)
            if new_state in _FINISHED:
                task.progress = None
        if new_state is not None and ts >= task.state_ts:
            task.state = new_state
            task.state_ts = ts
            # The error shown is the current one: a retry's exception is a past attempt
            # once the task moved on (it stays in the timeline).
            task.exception = preview(event.get("exception")) if kind in _ERRORS else None

    def _apply_common(self, task: TaskRecord, event: dict[str, Any]) -> None:
        name = event.get("name")
        if name and task.name != name:
            task.name = shared(name)
            self._names.add(task.name)
        queue = event.get("queue")
        if queue and task.queue != queue:
            task.queue = shared(queue)
            self._queues.add(task.queue)
        worker = event.get("worker")
        if worker and task.worker != worker:
            task.worker = shared(worker)
            self._workers.add(task.worker)
        retries = event.get("retries")
        if isinstance(retries, int) and retries > task.retries:
            task.retries = retries

    def _apply_received(self, task: TaskRecord, event: dict[str, Any], ts: float) -> None:
        if task.received_at is None:
            task.received_at = ts
        if "args" in event:
            task.args = preview(event["args"]) or ""
        if "kwargs" in event:
            task.kwargs = preview(event["kwargs"]) or ""
        parent_id = event.get("parent_id")
        if isinstance(parent_id, str) and parent_id:
            siblings = self._children.setdefault(parent_id, [])
            if task.id not in siblings:
                siblings.append(task.id)

    def _apply_outcome(
        self, task: TaskRecord, event: dict[str, Any], ts: float, new_state: str | None
    ) -> None:
        if "runtime" in event:
            task.runtime = as_float(event.get("runtime"))
        if new_state in _FINISHED:
            task.finished_at = ts
            bisect.insort(self._finished, (ts, new_state, task.runtime))

    # -- retention -----------------------------------------------------------------
    def _cutoff(self, now: float) -> float:
        max_age = self.app.conf.events_max_age
        return now - float(max_age) if max_age else float("-inf")

    def _trim_log(self) -> None:
        """Apply ``events_max_age`` to the log itself, at most once a minute: a store
        with no worker running (the heartbeat thread trims too) must not keep expired
        events forever."""
        max_age = self.app.conf.events_max_age
        now = time.monotonic()
        if not max_age or now - self._trimmed_at < min(TRIM_EVERY_S, float(max_age)):
            return
        self._trimmed_at = now
        try:
            self.app.broker.log_trim(EVENTS_STREAM, older_than_s=float(max_age))
        except BrokerConnectionError as exc:  # unreachable: the reader reports that once, not here
            log.debug("could not trim expired task events: %s", exc)
        except BrokerError as exc:  # a read-only store: the index still ignores expired events
            log.warning("could not trim expired task events: %s", exc)

    def _forget_trimmed(self) -> None:
        """Drop the tasks whose every kept event is older than the log's oldest entry."""
        head = self.app.broker.log_read(EVENTS_STREAM, after="0", limit=1)
        oldest = ref_of(head[0][0]) if head else None
        if oldest is not None and oldest == self._oldest:
            return
        self._oldest = oldest
        # An empty log (purged, or all expired) keeps none of the events read so far.
        floor: LogKey = sort_key(oldest) if oldest is not None else (float("inf"), 0, 0)
        # Tasks are in first-seen order, which is log order: only the head can be trimmed.
        self._drop_head(lambda t: first_key(t) < floor, lambda t: newest_key(t) < floor)

    def expire(self, *, now: float | None = None) -> None:
        """Drop tasks whose newest event is older than ``events_max_age``."""
        cutoff = self._cutoff(time.time() if now is None else now)
        if cutoff == float("-inf"):
            return
        with self._lock:
            self._drop_head(
                lambda t: (t.received_at if t.received_at is not None else t.last_ts) < cutoff,
                lambda t: t.last_ts < cutoff,
            )
            start = bisect.bisect_left(self._finished, (cutoff,))
            del self._finished[:start]

    def _drop_head(self, in_head: Callable[[TaskRecord], bool], gone: Callable[[TaskRecord], bool]) -> None:
        """Drop the ``gone`` tasks among the leading ones ``in_head`` says may be."""
        order = self._order
        end = 0
        while end < len(order) and in_head(order[end]):
            end += 1
        if not end:
            return
        kept = [t for t in order[:end] if not gone(t)]
        if len(kept) < end:
            dropped = [t for t in order[:end] if gone(t)]
            self._order = kept + order[end:]
            self._forget(dropped)

    def _cap(self) -> None:
        """Forget the oldest tasks beyond ``max_tasks`` or ``max_events``."""
        order = self._order
        excess = 0
        events = self._events
        while excess < len(order) and (len(order) - excess > self.max_tasks or events > self.max_events):
            events -= order[excess].count
            excess += 1
        if excess:
            dropped = order[:excess]
            del order[:excess]
            self._forget(dropped)

    def _forget(self, dropped: Sequence[TaskRecord]) -> None:
        finished: Counter[tuple[float, str, float | None]] = Counter()
        for task in dropped:
            self._tasks.pop(task.id, None)
            self._children.pop(task.id, None)
            self._events -= task.count
            if task.finished_at is not None:
                finished[(task.finished_at, task.state, task.runtime)] += 1
        if finished:
            # One pass, not one list deletion per task: trims drop thousands at a time.
            kept: list[tuple[float, str, float | None]] = []
            for item in self._finished:
                if finished[item] > 0:
                    finished[item] -= 1
                else:
                    kept.append(item)
            self._finished = kept

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
        case-insensitive substring of the id, the name or the argument preview.
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
            named = {n for n in self._names if needle in n.lower()} if needle else set()
            # Records keep no lower-cased copy (memory); a needle without letters
            # matches the same either way, so ids and numbers skip the lower().
            fold: Callable[[str], str] = str.lower if needle and needle != needle.upper() else str
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
                if needle and not (
                    task.name in named
                    or needle in fold(task.id)
                    or needle in fold(task.args)
                    or needle in fold(task.kwargs)
                ):
                    continue
                if offset <= total < offset + limit:
                    page.append(task.summary())
                total += 1
            return total, page

    def get(self, task_id: str) -> TaskDetail | None:
        """One task, with its kept events, whole arguments and traceback read back from the log."""
        with self._lock:
            task = self._tasks.get(task_id)
            if task is None:
                return None
            refs = list(task.refs)
            children = list(self._children.get(task.id, ()))
            summary = task.summary()
            count = task.count
        events = self._read_events(refs)
        events.sort(key=lambda e: as_float(e.get("ts")) or 0.0)
        found = _from_events(events, summary)
        return TaskDetail(
            summary.id,
            summary.name,
            summary.state,
            summary.queue,
            summary.worker,
            summary.received_at,
            summary.started_at,
            summary.finished_at,
            summary.runtime,
            summary.retries,
            found.pop("args"),
            found.pop("kwargs"),
            summary.exception,
            summary.progress,
            **found,
            children=children,
            events=events,
            omitted_events=count - len(refs),
        )

    def _read_events(self, refs: Sequence[Ref | dict[str, Any]]) -> list[dict[str, Any]]:
        """The kept events: fed ones as they are, logged ones read back by id (gone if trimmed)."""
        events: list[dict[str, Any]] = []
        broker = self.app.broker
        for ref in refs:
            if isinstance(ref, dict):
                events.append(dict(ref))
                continue
            entries = broker.log_read(EVENTS_STREAM, after=before(ref), limit=1)
            if entries and ref_of(entries[0][0]) == ref:
                event = decode_event(entries[0][1])
                if event is not None:
                    events.append(event)
        return events

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
        keys = {states.SUCCESS: "succeeded", states.FAILURE: "failed"}
        with self._lock:
            start = bisect.bisect_left(self._finished, (first * bucket_s,))
            for ts, state, _runtime in self._finished[start:]:
                i = int(ts // bucket_s) - first
                if 0 <= i < count:
                    buckets[i][keys.get(state, "revoked")] += 1
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

    def counts_by_name(self) -> Counter[tuple[str, str]]:
        """Tasks per (state, name), for the ``conveyor_tasks`` gauge."""
        with self._lock:
            return Counter((task.state, task.name or "") for task in self._order)

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


def _from_events(events: Sequence[dict[str, Any]], summary: TaskSummary) -> dict[str, Any]:
    """What the detail page shows beyond the record, from the task's events read back
    (oldest first, so the newest of each wins)."""
    found: dict[str, Any] = {"args": summary.args, "kwargs": summary.kwargs}
    for event in events:
        kind = event["type"]
        if kind == RECEIVED:
            found["args"] = text(event.get("args"), found["args"])
            found["kwargs"] = text(event.get("kwargs"), found["kwargs"])
            found["eta"] = as_float(event.get("eta"))
            for key in ("parent_id", "root_id"):
                found[key] = event.get(key) or found.get(key)
        if "result" in event:
            found["result"] = text(event.get("result"), "")
        if event.get("reason"):
            found["reason"] = str(event["reason"])
        # Only the current error's traceback: a retry before a success is a past attempt.
        if summary.exception is not None and kind in _ERRORS:
            found["traceback"] = event.get("traceback") or found.get("traceback")
    return found
