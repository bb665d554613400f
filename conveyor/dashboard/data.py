"""What the pages show, gathered from the broker, the task-event index, the worker
registry and the scheduler, as plain JSON-ready dicts.

Every page and its ``/api/`` twin render the same dict, so the HTML and the JSON
can never disagree. The monitoring and scheduler modules are imported lazily:
a broker without events still shows its queues and dead letters.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import orjson

from conveyor import states
from conveyor.exceptions import BrokerError, SerializationError
from conveyor.message import readable
from conveyor.monitor.records import TaskSummary

if TYPE_CHECKING:
    from conveyor.app import Conveyor

log = logging.getLogger("conveyor.dashboard")
TASK_STATES = (
    states.RECEIVED,
    states.STARTED,
    states.RETRY,
    states.SUCCESS,
    states.FAILURE,
    states.REVOKED,
)
PAGE_SIZE = 50
MAX_PAGE_SIZE = 500
# A restarted worker comes back under a new name (its pid is in it) and the old
# record stays for an hour: past this, offline ones are folded away on the page.
FOLD_OFFLINE_AFTER_S = 300.0


def field(obj: Any, name: str, default: Any = None) -> Any:
    """Read ``name`` from a dataclass, object or mapping alike."""
    if obj is None:
        return default
    if isinstance(obj, Mapping):
        return obj.get(name, default)
    return getattr(obj, name, default)


def jsonable(value: Any) -> Any:
    """Dataclasses, tuples and mappings down to JSON types (repr for the rest)."""
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [jsonable(v) for v in value]
    if hasattr(value, "__dataclass_fields__"):
        return {k: jsonable(getattr(value, k)) for k in value.__dataclass_fields__}
    return repr(value)


class DashboardData:
    """One per dashboard process: the app, the task index it keeps warm, and locks.

    The task index is refreshed at most every ``refresh_interval`` seconds, however
    many pages and API calls arrive, so a busy wall of browsers costs one read of
    the event log per interval.
    """

    def __init__(self, app: Conveyor, *, refresh_interval: float = 0.5) -> None:
        self.app = app
        self.refresh_interval = refresh_interval
        self._lock = threading.Lock()
        self._index: Any = None
        self._index_error: str | None = None
        self._refreshed_at = 0.0
        self._listeners: list[Any] = []

    def add_listener(self, listener: Any) -> None:
        """Have ``listener(event)`` called with every task event the index reads, so
        another view (``/metrics``) counts them without reading the log a second time."""
        with self._lock:
            self._listeners.append(listener)
            if self._index is not None:
                self._index.listeners.append(listener)

    # -- task events ------------------------------------------------------------------
    def index(self, *, fresh: bool = False) -> Any:
        """The monitor's TaskIndex, refreshed (now when ``fresh``, else at most every
        ``refresh_interval``); None when task events are unavailable."""
        with self._lock:
            if self._index is None and self._index_error is None:
                try:
                    from conveyor.monitor.index import TaskIndex
                except ImportError as exc:
                    self._index_error = f"task events are not available: {exc}"
                    return None
                self._index = TaskIndex(self.app, listeners=self._listeners)
            if self._index is None:
                return None
            now = time.monotonic()
            if fresh or now - self._refreshed_at >= self.refresh_interval:
                self._index.refresh()
                self._refreshed_at = time.monotonic()
            return self._index

    def warm_up(self) -> None:
        """Build the task index now (at start-up) instead of on the first page view."""
        try:
            self.index()
        except BrokerError as exc:  # down at start-up: the pages say so, and retry
            log.warning("dashboard: could not load task events at start-up: %s", exc)
        except Exception:
            log.warning("dashboard: could not load task events at start-up", exc_info=True)

    @property
    def events_note(self) -> str | None:
        return self._index_error

    def tasks(
        self,
        *,
        state: str | None = None,
        name: str | None = None,
        queue: str | None = None,
        worker: str | None = None,
        search: str | None = None,
        page: int = 1,
        per_page: int = PAGE_SIZE,
    ) -> dict[str, Any]:
        per_page = max(1, min(per_page, MAX_PAGE_SIZE))
        page = max(1, page)
        filters = {"state": state, "name": name, "queue": queue, "worker": worker, "search": search}
        result: dict[str, Any] = {
            "filters": filters,
            "page": page,
            "per_page": per_page,
            "total": 0,
            "pages": 1,
            "tasks": [],
            "choices": {"state": list(TASK_STATES), "name": [], "queue": [], "worker": []},
            "note": None,
        }
        index = self.index()
        if index is None:
            result["note"] = self.events_note
            return result
        total, rows = index.query(
            state=state or None,
            name=name or None,
            queue=queue or None,
            worker=worker or None,
            search=search or None,
            limit=per_page,
            offset=(page - 1) * per_page,
        )
        result["total"] = total
        result["pages"] = max(1, -(-total // per_page))
        result["tasks"] = [summary_dict(r) for r in rows]
        result["choices"].update(
            name=sorted(index.names()), queue=sorted(index.queues()), worker=sorted(index.workers())
        )
        return result

    def task(self, task_id: str) -> dict[str, Any] | None:
        """One task: the index's detail merged with the stored result (real values)."""
        detail: Any = None
        index = self.index()
        if index is not None:
            detail = index.get(task_id)
        record = self._result_record(task_id)
        if detail is None and record is None:
            return None
        out: dict[str, Any] = summary_dict(detail)
        out["id"] = task_id
        out["events"] = timeline(field(detail, "events") or [], out.get("state"))
        out["omitted_events"] = field(detail, "omitted_events", 0) or 0
        for key in ("exception", "traceback", "result", "parent_id", "root_id", "eta"):
            out[key] = jsonable(field(detail, key))
        out["result"] = from_json_text(out["result"])
        out["children"] = list(field(detail, "children") or [])
        self._add_relations(task_id, out)
        out["stored_result"] = None
        if record is not None:
            out["stored_result"] = {
                "state": record.state,
                "result": jsonable(record.result),
                "exception": jsonable(record.exception),
                "traceback": record.traceback,
                "args": jsonable(record.args),
                "kwargs": jsonable(record.kwargs),
                "retries": record.retries,
                "worker": record.worker,
                "finished_at": record.finished_at,
            }
            out["name"] = out.get("name") or record.task
            out["queue"] = out.get("queue") or record.queue
            out["worker"] = out.get("worker") or record.worker
            if not out.get("state"):
                out["state"] = record.state
            if out.get("traceback") is None:
                out["traceback"] = record.traceback
            if out.get("args") is None:
                out["args"] = jsonable(record.args)
                out["kwargs"] = jsonable(record.kwargs)
        out["retriable"] = self._retry_source(task_id, out) is not None
        return out

    def unknown_task(self, task_id: str) -> dict[str, Any]:
        """The detail page's view of a task nothing is known about (yet)."""
        out = summary_dict(None)
        out.update(
            id=task_id,
            state=states.PENDING,
            events=[],
            omitted_events=0,
            children=[],
            stored_result=None,
            retriable=False,
            unknown=True,
        )
        for key in ("exception", "traceback", "result", "parent_id", "root_id", "eta"):
            out[key] = None
        return out

    def _add_relations(self, task_id: str, out: dict[str, Any]) -> None:
        """Parent and children kept in the result backend (conveyor/relations.py): known
        with task events off too, and for tasks whose events were trimmed."""
        from conveyor.relations import stored

        try:
            parent, children = stored(self.app, task_id)
        except Exception:  # the result store is unreachable: the page shows what the index knows
            return
        out["parent_id"] = out.get("parent_id") or parent
        out["children"] += [child for child in children if child not in out["children"]]

    def _result_record(self, task_id: str) -> Any:
        try:
            return self.app.backend.get(task_id)
        except Exception:  # a disabled backend refuses reads; the index may still know the task
            return None

    def _retry_source(self, task_id: str, detail: Mapping[str, Any] | None = None) -> dict[str, Any] | None:
        """Name, real args and kwargs and queue to send a task again, from its stored result.

        The event log holds the arguments only as JSON text, shortened to fit an
        event, so the stored result record, which keeps them as sent, is the source.
        """
        record = self._result_record(task_id)
        if record is None or not record.task:
            return None
        queue = record.queue or (detail or {}).get("queue")
        return {"name": record.task, "args": list(record.args), "kwargs": dict(record.kwargs), "queue": queue}

    def retry_task(self, task_id: str) -> str:
        """Send the task again with the same arguments; returns the new task id."""
        source = self._retry_source(task_id)
        if source is None:
            raise LookupError(
                f"cannot retry {task_id}: its arguments are not stored (no result record; results disabled or expired)"
            )
        options: dict[str, Any] = {}
        if source["queue"]:
            options["queue"] = source["queue"]
        sent = self.app.send_task(source["name"], source["args"], source["kwargs"], **options)
        return str(sent.id)

    def revoke(self, task_id: str, *, terminate: bool) -> None:
        control = getattr(self.app, "control", None)
        if control is None:
            raise LookupError("revoking needs the monitoring module (app.control), which is not installed")
        control.revoke(task_id, terminate=terminate)

    # -- overview ---------------------------------------------------------------------
    def overview(self, *, window_s: int = 3600, bucket_s: int = 60) -> dict[str, Any]:
        workers = self.workers()["workers"]
        queues = self.queues()["queues"]
        out: dict[str, Any] = {
            "workers_online": sum(1 for w in workers if w["online"]),
            "workers_total": sum(1 for w in workers if not w["folded"]),
            "workers_hidden": sum(1 for w in workers if w["folded"]),
            "queues": queues,
            "backlog": sum(q["ready"] + q["delayed"] for q in queues),
            "in_flight": sum(q["in_flight"] for q in queues),
            "dead": sum(q["dead"] for q in queues),
            "series": [],
            "window_s": window_s,
            "bucket_s": bucket_s,
            "runtime": {"mean": None, "p95": None, "count": 0},
            "totals": {"succeeded": 0, "failed": 0},
            "note": None,
        }
        index = self.index()
        if index is None:
            out["note"] = self.events_note
            return out
        series = [_bucket(b) for b in index.series(window_s=window_s, bucket_s=bucket_s)]
        out["series"] = series
        out["totals"] = {
            "succeeded": sum(b["succeeded"] for b in series),
            "failed": sum(b["failed"] for b in series),
        }
        stats = index.runtime_stats()
        out["runtime"] = {
            "mean": field(stats, "mean"),
            "p95": field(stats, "p95"),
            "count": field(stats, "count", 0),
        }
        return out

    # -- workers ----------------------------------------------------------------------
    def workers(self) -> dict[str, Any]:
        try:
            from conveyor.monitor.workers import list_workers
        except ImportError as exc:
            return {
                "workers": [],
                "note": f"worker heartbeats are not available: {exc}",
                "fold_after_s": FOLD_OFFLINE_AFTER_S,
            }
        now = time.time()
        rows = []
        for info in list_workers(self.app):
            row = info.as_dict() if hasattr(info, "as_dict") else jsonable(info)
            if not isinstance(row, dict):
                row = {"name": str(info)}
            row["online"] = bool(field(info, "online", False))
            started = field(info, "started_at")
            row["uptime"] = (now - float(started)) if started else None
            row.setdefault("name", field(info, "name") or field(info, "hostname"))
            sent_at = float(field(info, "sent_at", 0.0) or 0.0)
            row["folded"] = not row["online"] and now - sent_at > FOLD_OFFLINE_AFTER_S
            rows.append(row)
        rows.sort(key=lambda r: (not r["online"], str(r.get("name"))))
        return {"workers": rows, "note": None, "fold_after_s": FOLD_OFFLINE_AFTER_S}

    def forget_worker(self, name: str) -> None:
        """Delete an offline worker's heartbeat record, so the page stops listing it."""
        from conveyor.monitor import WORKERS_NAMESPACE
        from conveyor.monitor.workers import parse_heartbeat

        body = self.app.broker.kv_get(WORKERS_NAMESPACE, name)
        info = parse_heartbeat(name, body) if body is not None else None
        if body is None:
            raise LookupError(f"no worker named {name!r}")
        if info is not None and info.online:
            raise ValueError(f"{name} is online: stop it first (its next heartbeat would list it again)")
        self.app.broker.kv_delete(WORKERS_NAMESPACE, name)

    # -- queues and dead letters ------------------------------------------------------
    def queues(self) -> dict[str, Any]:
        stats = self.app.broker.queue_stats()
        return {
            "queues": [
                {
                    "name": s.name,
                    "ready": s.ready,
                    "in_flight": s.in_flight,
                    "delayed": s.delayed,
                    "dead": s.dead,
                }
                for s in stats
            ]
        }

    def purge(self, queue: str | None) -> int:
        return self.app.broker.purge(queue)

    def dead_letters(
        self, *, queue: str | None = None, page: int = 1, per_page: int = PAGE_SIZE
    ) -> dict[str, Any]:
        per_page = max(1, min(per_page, MAX_PAGE_SIZE))
        page = max(1, page)
        broker = self.app.broker
        # One extra row tells whether a next page exists without counting them all.
        entries = broker.dead_letters(queue or None, limit=per_page + 1, offset=(page - 1) * per_page)
        total = sum(s.dead for s in broker.queue_stats([queue] if queue else None))
        return {
            "queue": queue,
            "page": page,
            "per_page": per_page,
            "total": total,
            "has_next": len(entries) > per_page,
            "entries": [dead_letter_dict(e) for e in entries[:per_page]],
        }

    def replay(self, ids: Sequence[str] | None) -> int:
        return self.app.broker.replay_dead_letters(list(ids) if ids is not None else None)

    def delete_dead_letters(self, ids: Sequence[str] | None) -> int:
        return self.app.broker.purge_dead_letters(list(ids) if ids is not None else None)

    # -- periodic tasks ---------------------------------------------------------------
    def periodic_api(self) -> Any:
        try:
            return self.app.periodic
        except (AttributeError, ImportError):
            return None

    def periodic(self) -> dict[str, Any]:
        api = self.periodic_api()
        if api is None:
            return {"entries": [], "note": "periodic tasks need the scheduler module (app.periodic)"}
        rows = []
        for entry in api.list():
            rows.append(
                {
                    "name": field(entry, "name"),
                    "task": field(entry, "task"),
                    "schedule": field(entry, "schedule_text") or str(field(entry, "schedule")),
                    "args": jsonable(field(entry, "args")),
                    "kwargs": jsonable(field(entry, "kwargs")),
                    "options": jsonable(field(entry, "options")),
                    "enabled": bool(field(entry, "enabled", True)),
                    "source": field(entry, "source", "runtime"),
                    "last_run_at": field(entry, "last_run_at"),
                    "next_run_at": field(entry, "next_run_at"),
                    "total_run_count": field(entry, "total_run_count", 0),
                }
            )
        rows.sort(key=lambda r: str(r["name"]))
        return {"entries": rows, "note": None}


def _bucket(raw: Any) -> dict[str, Any]:
    if isinstance(raw, (tuple, list)):
        ts, ok, failed = (list(raw) + [0, 0, 0])[:3]
        return {"ts": ts, "succeeded": int(ok or 0), "failed": int(failed or 0)}
    return {
        "ts": field(raw, "ts", field(raw, "start")),
        "succeeded": int(field(raw, "succeeded", 0) or 0),
        "failed": int(field(raw, "failed", 0) or 0),
    }


_ERROR_EVENTS = ("task-failed", "task-retried")


def timeline(events: Sequence[Any], state: str | None) -> list[dict[str, Any]]:
    """The events as dicts, each failure marked ``past`` unless it is the task's current
    error: a retry that was followed by a success is an earlier attempt, not the outcome."""
    out = [jsonable(e) for e in events]
    for event in out:
        if isinstance(event, dict):
            # The current error's traceback is the task's own field; one per attempt
            # would make a long-retrying task's page megabytes.
            event.pop("traceback", None)
    errors = [e for e in out if isinstance(e, dict) and e.get("type") in _ERROR_EVENTS]
    current = errors[-1] if errors and state in (states.FAILURE, states.RETRY) else None
    for event in errors:
        event["past"] = event is not current
    return out


# The list row's fields: TaskSummary's own, so a field added there reaches the API too.
SUMMARY_FIELDS = tuple(f.name for f in dataclasses.fields(TaskSummary))


def summary_dict(summary: Any) -> dict[str, Any]:
    out = {key: jsonable(field(summary, key)) for key in SUMMARY_FIELDS}
    out["args"] = from_json_text(out["args"])
    out["kwargs"] = from_json_text(out["kwargs"])
    return out


def from_json_text(text: Any) -> Any:
    """The value of an event's JSON text; text that is not JSON (shortened to fit an
    event, or an older worker's repr) stays the string it is."""
    if not isinstance(text, str):
        return text
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return text


def dead_letter_dict(entry: Any) -> dict[str, Any]:
    try:
        body: Any = readable(entry.body)
    except SerializationError:
        body = entry.body.decode("utf-8", errors="replace")
    args = kwargs = None
    if isinstance(body, Mapping):
        args, kwargs = body.get("args"), body.get("kwargs")
    return {
        "id": entry.id,
        "queue": entry.queue,
        "task": entry.task_name,
        "task_id": entry.task_id,
        "reason": entry.reason,
        "failed_at": entry.failed_at,
        "args": jsonable(args),
        "kwargs": jsonable(kwargs),
        "body": jsonable(body),
    }
