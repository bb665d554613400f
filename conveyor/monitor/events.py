"""Task events: what happened to each task, kept in the broker's log "events".

Workers emit them; the dashboard's ``TaskIndex`` reads them back. One JSON object
per event (orjson), with at least ``type``, ``id``, ``name``, ``worker`` and ``ts``.

The hot path pays one small dict and one ``orjson.dumps`` per event and no round
trip: events wait in the process's ``EventBuffer`` and ride along with a later
settle batch (worker/settle.py), in the same ``broker.batch()`` as results and acks.
Not with every batch: on SQLite the first log row of a transaction costs about as
much as five more (the log's pages join the commit), and a prefork child settles
every few tasks, so the buffer is written once ``BATCH_EVENTS`` have gathered or
the oldest waited ``BATCH_AFTER_S`` (measured: events on cost ~70 µs per task when
written with every settle, see docs/monitoring.md). Events of a task that runs
for long, or of an idle moment, are written by a small flusher thread once the
oldest waited ``FLUSH_AFTER_S``; it sleeps on an Event while nothing is pending,
so an idle worker spends no CPU on it.

Retention: ``events_max_count`` bounds the log on every append (trimming lags a
little); ``events_max_age`` is applied by each worker's heartbeat thread
(``trim_events``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import orjson

from conveyor import states
from conveyor.exceptions import BrokerError
from conveyor.monitor import EVENTS_STREAM

if TYPE_CHECKING:
    from conveyor.app import Conveyor
    from conveyor.message import Message
    from conveyor.worker.runner import Outcome

log = logging.getLogger("conveyor.events")

RECEIVED = "task-received"
STARTED = "task-started"
SUCCEEDED = "task-succeeded"
FAILED = "task-failed"
RETRIED = "task-retried"
REVOKED = "task-revoked"
DEAD_LETTERED = "task-dead-lettered"
PROGRESS = "task-progress"  # Task.update_state(): a custom state and its meta
TYPES = (RECEIVED, STARTED, SUCCEEDED, FAILED, RETRIED, REVOKED, DEAD_LETTERED, PROGRESS)

# The state a task is in after each event (dead-lettering keeps FAILURE: it says
# where the message went, not how the task ended).
STATE_OF = {
    RECEIVED: states.RECEIVED,
    STARTED: states.STARTED,
    SUCCEEDED: states.SUCCESS,
    FAILED: states.FAILURE,
    RETRIED: states.RETRY,
    REVOKED: states.REVOKED,
    DEAD_LETTERED: states.FAILURE,
}

BATCH_EVENTS = 256
# On Redis an append costs the server time in proportion to its entries, with no
# commit to share, and the server serves no other client meanwhile: a large batch is
# a pause every client waits out (a round trip's tail). Small batches cost the same
# in all and pause nobody for long (docs/benchmarks.md, 2026-12-07 second session).
REDIS_BATCH_EVENTS = 32
BATCH_AFTER_S = 0.25
FLUSH_AFTER_S = 0.5
REPR_LIMIT = 1024
TRACEBACK_LIMIT = 16_384


def short_repr(value: Any, limit: int = REPR_LIMIT) -> str:
    """repr() for display: bounded, because an event log entry must stay small
    whatever the task was given (a 10 MB argument must not become a 10 MB event)."""
    try:
        text = repr(value)
    except Exception as exc:  # noqa: BLE001 - a broken __repr__ must not break the worker
        text = f"<unrepresentable {type(value).__name__}: {exc}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def json_text(value: Any, limit: int = REPR_LIMIT) -> str:
    """JSON for display, bounded like ``short_repr``: what the dashboard shows as a
    task's arguments and result. Past ``limit`` characters it is cut and ends with
    "…" (then it is no longer JSON, and readers show it as text); the cut is between
    characters, never inside one."""
    try:
        text = orjson.dumps(value, default=_json_default, option=orjson.OPT_NON_STR_KEYS).decode()
    except (TypeError, ValueError):  # e.g. an int beyond 64 bits
        text = short_repr(value, limit)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _json_default(value: Any) -> Any:
    if isinstance(value, (tuple, set, frozenset)):
        return list(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return short_repr(value)


def exception_text(exception: dict[str, Any] | None) -> str:
    if not exception:
        return ""
    name = str(exception.get("type") or "Exception")
    message = str(exception.get("message") or "")
    return f"{name}: {message}" if message else name


def received_event(message: Message, worker: str, now: float) -> dict[str, Any]:
    event = {
        "type": RECEIVED,
        "id": message.id,
        "name": message.task,
        "queue": message.queue,
        "worker": worker,
        "ts": now,
        "args": json_text(message.args),
        "kwargs": json_text(message.kwargs),
        "retries": message.retries,
    }
    # Optional fields only when set: smaller rows are cheaper rows.
    if message.eta is not None:
        event["eta"] = message.eta
    if message.parent_id:
        event["parent_id"] = message.parent_id
    if message.root_id:
        event["root_id"] = message.root_id
    return event


def started_event(task_id: str, name: str, queue: str, worker: str, now: float) -> dict[str, Any]:
    return {"type": STARTED, "id": task_id, "name": name, "queue": queue, "worker": worker, "ts": now}


def outcome_events(outcome: Outcome, worker: str, queue: str | None = None) -> list[dict[str, Any]]:
    """The events one settled outcome stands for (none for a requeue: the task did not end)."""
    from conveyor.worker.runner import DEAD

    task_id = outcome.task_id
    if not task_id:
        return []  # an undecodable message: no task to attach it to (the DLQ keeps it)
    base: dict[str, Any] = {
        "id": task_id,
        "name": outcome.task_name,
        "queue": outcome.queue or queue,
        "worker": worker,
        "ts": outcome.finished_at or time.time(),
        "retries": outcome.retries,
    }
    if outcome.started_at is not None and outcome.finished_at is not None:
        base["runtime"] = outcome.finished_at - outcome.started_at
    state = outcome.state
    events: list[dict[str, Any]] = []
    if state == states.SUCCESS or (state is None and outcome.action == "ack"):
        events.append({"type": SUCCEEDED, **base, "result": json_text(outcome.result)})
    elif state == states.FAILURE:
        events.append(
            {
                "type": FAILED,
                **base,
                "exception": exception_text(outcome.exception),
                "traceback": (outcome.traceback or "")[-TRACEBACK_LIMIT:],
            }
        )
    elif state == states.RETRY:
        events.append(
            {
                "type": RETRIED,
                **base,
                "exception": exception_text(outcome.exception),
                "traceback": (outcome.traceback or "")[-TRACEBACK_LIMIT:],
                "eta": outcome.retry_at,
            }
        )
    elif state == states.REVOKED:
        events.append(
            {"type": REVOKED, **base, "reason": outcome.reason or exception_text(outcome.exception)}
        )
    if outcome.action == DEAD:
        events.append({"type": DEAD_LETTERED, **base, "reason": outcome.reason or ""})
    return events


class EventBuffer:
    """One process's pending events, written with the next settle batch or by the flusher."""

    def __init__(
        self,
        app: Conveyor,
        *,
        max_count: int,
        flush_after_s: float = FLUSH_AFTER_S,
        batch_events: int | None = None,
    ) -> None:
        self.app = app
        self.max_count = max(1, int(max_count))
        self.batch_events = batch_events
        self.flush_after_s = flush_after_s
        self._lock = threading.Lock()
        self._pending: list[bytes] = []
        self._since = 0.0  # monotonic time the oldest pending event was queued
        self._dirty = threading.Event()
        self._closed = False
        self._thread: threading.Thread | None = None

    @classmethod
    def for_app(cls, app: Conveyor) -> EventBuffer | None:
        """The buffer a worker process uses, or None when task events are switched off."""
        if not app.conf.worker_send_task_events:
            return None
        on_redis = urlsplit(str(app.conf.broker_url)).scheme.startswith("redis")
        return cls(
            app,
            max_count=int(app.conf.events_max_count),
            batch_events=REDIS_BATCH_EVENTS if on_redis else None,
        )

    @staticmethod
    def encode(events: Sequence[dict[str, Any]]) -> list[bytes]:
        return [orjson.dumps(event, default=str) for event in events]

    def emit(self, event: dict[str, Any]) -> None:
        self.emit_many((event,))

    def emit_many(self, events: Sequence[dict[str, Any]]) -> None:
        """Queue events for the next settle batch (or the flusher); no I/O here."""
        encoded = self.encode(events)
        with self._lock:
            first = not self._pending
            if first:
                self._since = time.monotonic()
            self._pending.extend(encoded)
        if first and encoded:
            if self._thread is None:
                self._start_flusher()
            self._dirty.set()

    def take(self) -> list[bytes]:
        with self._lock:
            pending, self._pending = self._pending, []
        return pending

    def take_due(self) -> list[bytes]:
        """What a settle batch should write now: everything once enough has gathered
        or the oldest has waited long enough, else nothing (it waits for a later batch)."""
        with self._lock:
            pending = self._pending
            if not pending or (
                len(pending) < (self.batch_events or BATCH_EVENTS)
                and time.monotonic() - self._since < BATCH_AFTER_S
            ):
                return []
            self._pending = []
        return pending

    def put_back(self, entries: list[bytes]) -> None:
        """A write failed: keep the entries, ahead of newer ones, for the next write."""
        if not entries:
            return
        with self._lock:
            if not self._pending:
                self._since = time.monotonic()
            self._pending[:0] = entries
        self._dirty.set()

    def append(self, entries: Sequence[bytes]) -> None:
        """Write entries to the log (inside the caller's ``broker.batch()`` when it has one)."""
        if entries:
            self.app.broker.log_append(EVENTS_STREAM, entries, maxlen=self.max_count)

    def flush(self) -> None:
        entries = self.take()
        if not entries:
            return
        try:
            self.append(entries)
        except BrokerError as exc:
            log.warning("Could not write %d task event(s): %s; will retry", len(entries), exc)
            self.put_back(entries)

    def _start_flusher(self) -> None:
        with self._lock:
            if self._thread is not None:
                return
            self._thread = threading.Thread(target=self._flush_loop, name="event-flusher", daemon=True)
        self._thread.start()

    def _flush_loop(self) -> None:
        while not self._closed:
            self._dirty.wait()
            if self._closed:
                return
            # Most events leave with a settle batch before this; the flusher only
            # writes those held back by a long-running task or an idle moment.
            with self._lock:
                since = self._since if self._pending else None
            if since is None:
                self._dirty.clear()
                with self._lock:
                    if self._pending:  # emitted between the check and the clear
                        self._dirty.set()
                continue
            wait = since + self.flush_after_s - time.monotonic()
            if wait > 0:
                time.sleep(wait)
                continue
            self.flush()

    def close(self) -> None:
        """Write what is left; called at worker shutdown."""
        self._closed = True
        self._dirty.set()
        self.flush()


def progress_event(task_id: str, name: str, state: str, meta: Any, worker: str | None) -> dict[str, Any]:
    return {
        "type": PROGRESS,
        "id": task_id,
        "name": name,
        "state": state,
        "meta": meta,
        "worker": worker,
        "ts": time.time(),
    }


def write_now(app: Conveyor, event: dict[str, Any]) -> None:
    """Write one event at once (update_state from task code: no buffer of the worker's at hand)."""
    app.broker.log_append(EVENTS_STREAM, EventBuffer.encode((event,)), maxlen=int(app.conf.events_max_count))


def trim_events(app: Conveyor) -> int:
    """Drop events older than ``events_max_age``; returns how many went."""
    max_age = app.conf.events_max_age
    if not max_age:
        return 0
    return app.broker.log_trim(EVENTS_STREAM, older_than_s=float(max_age))


def decode_event(body: bytes) -> dict[str, Any] | None:
    """One log entry as an event, or None for an entry that is not one (never raises)."""
    try:
        event = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(event, dict) or not isinstance(event.get("type"), str):
        return None
    return event
