"""The records a TaskIndex keeps and returns, and the helpers that keep them small.

A record holds what the task list shows and filters on, every text cut to a
``PREVIEW_CHARS`` preview, and the log ids ("refs") of the task's events rather than
the events themselves: the detail page reads those back from the log.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any

import orjson

from conveyor import states

PREVIEW_CHARS = 100
KEEP_FIRST = 3
KEEP_LAST = 20

Ref = int | str  # a log entry id: int when numeric (SQLite, memory), else the broker's text


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
    exception: str | None = None  # the current error (FAILURE, RETRY); None once it succeeded
    progress: tuple[float, float] | None = None  # (current, total) from update_state's meta

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
            "exception": self.exception,
            "progress": list(self.progress) if self.progress else None,
        }


@dataclass(frozen=True)
class TaskDetail(TaskSummary):
    result: str | None = None
    traceback: str | None = None
    reason: str | None = None
    eta: float | None = None
    parent_id: str | None = None
    root_id: str | None = None
    children: list[str] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    omitted_events: int = 0  # events between the first and the last ones kept

    def as_dict(self) -> dict[str, Any]:
        data = super().as_dict()
        data.update(
            result=self.result,
            traceback=self.traceback,
            reason=self.reason,
            eta=self.eta,
            parent_id=self.parent_id,
            root_id=self.root_id,
            children=list(self.children),
            events=[dict(e) for e in self.events],
            omitted_events=self.omitted_events,
        )
        return data


class TaskRecord:
    """The mutable record behind a TaskSummary: previews and log ids, in slots."""

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
        "exception",
        "refs",
        "count",
        "progress",
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
        self.exception: str | None = None
        # Log ids of the kept events (a tuple: smaller than a list); an event fed in
        # without one (add_event) is kept whole. The detail page reads them back.
        self.refs: tuple[Ref | dict[str, Any], ...] = ()
        self.count = 0  # events seen, kept or not
        self.progress: tuple[float, float] | None = None

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
            self.exception,
            self.progress,
        )

    @property
    def last_ts(self) -> float:
        """When the task was last heard of (the state's event, or a later one)."""
        return max(self.state_ts, self.received_at or 0.0, self.started_at or 0.0, self.finished_at or 0.0)

    def newestref(self) -> Ref | None:
        ref = self.refs[-1] if self.refs else None
        return None if isinstance(ref, dict) else ref


def as_float(value: Any) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return None


def shared(text: str) -> str:
    """Names, queues and workers repeat across tasks: one string object each."""
    return sys.intern(text) if isinstance(text, str) else str(text)


def text(value: Any, default: str) -> str:
    if value is None:
        return default
    return value if isinstance(value, str) else orjson.dumps(value, default=str).decode()


def preview(value: Any) -> str | None:
    """Display text cut to ``PREVIEW_CHARS``: the index keeps this, the log the rest."""
    if value is None:
        return None
    shown = text(value, "")
    if len(shown) > PREVIEW_CHARS:
        return shown[: PREVIEW_CHARS - 3] + "..."  # ASCII: "…" would double the string's size
    return sys.intern(shown) if len(shown) <= 8 else shown  # "{}", "None", "[]" repeat everywhere


def ref_of(entry_id: str) -> Ref:
    return int(entry_id) if entry_id.isdigit() else entry_id


LogKey = tuple[float, float, float]


def sort_key(ref: Ref) -> LogKey:
    """Log order: "12" (SQLite, memory), "1700000000000-3" (a Redis stream entry), or
    "1700000000000-3.2" (an event of a Redis entry holding several, with 2 more
    after it in the entry: its last one is the plain entry id)."""
    if isinstance(ref, int):
        return (ref, 0, 0)
    entry, _, later = ref.partition(".")
    ms, _, seq = entry.partition("-")
    return (int(ms), int(seq or 0), -int(later or 0))


def before(ref: Ref) -> str:
    """The id just before ``ref``, so a read after it starts at ``ref``."""
    if isinstance(ref, int):
        return str(ref - 1)
    if "-" in ref:
        # Within a Redis entry: after "<entry>.<n>" come its last n events, and a
        # plain entry id is that entry's last event (n = 0).
        entry, _, later = ref.partition(".")
        return f"{entry}.{int(later or 0) + 1}"
    return str(int(ref) - 1)


def first_key(task: TaskRecord) -> LogKey:
    for ref in task.refs:
        if not isinstance(ref, dict):
            return sort_key(ref)
    return (float("inf"), 0, 0)  # only fed events: never trimmed from the log


def newest_key(task: TaskRecord) -> LogKey:
    ref = task.newestref()
    return (float("inf"), 0, 0) if ref is None else sort_key(ref)


def progress_of(meta: Any) -> tuple[float, float] | None:
    """``(current, total)`` when update_state's meta carries both as numbers (Celery's custom)."""
    if not isinstance(meta, dict):
        return None
    current, total = as_float(meta.get("current")), as_float(meta.get("total"))
    if current is None or not total or total <= 0:
        return None
    return (current, total)
