"""Parents and children of tasks, kept in the result backend: ``AsyncResult.children``
read from any process, and the dashboard's task page linking both ways.

A task's relations are one record in the result store, beside its result, under the
id ``RELATIONS + task id`` with the state ``RELATIONS_STATE`` (never a ready state,
so no waiter is woken by it) and ``{"parent": id or None, "children": [ids]}`` as
its value; it expires with the results. Nothing lists the result store, so the
record is seen only by ``stored()``.

Who writes it, and when (the worker's settle is not involved):

- sending a canvas (``Canvas.apply_async``): the whole tree is known then, every task
  id being fixed at send time, so one store saves each chain step's next step (or
  group) as its children, as ``result_of`` links the handles in-process;
- sending from inside a running task (``delay()``, ``map()``, a canvas): the message
  gets the running task as ``parent_id`` (``Conveyor.build_message``), and the
  running task's record gets the new child. ``Request.children`` accumulates them
  (seeded once from the stored record, which a canvas may have written), so each
  send is one write, no read after the first.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from conveyor.task import current_request

if TYPE_CHECKING:
    from conveyor.app import Conveyor
    from conveyor.backends.base import ResultRecord
    from conveyor.message import Message
    from conveyor.task import Request

RELATIONS = "relations:"
RELATIONS_STATE = "RELATIONS"

Relations = dict[str, dict[str, Any]]  # task id -> {"parent": id | None, "children": [ids]}


def stored(app: Conveyor, task_id: str) -> tuple[str | None, list[str]]:
    """The parent and children stored for ``task_id`` (None and [] when none are, and
    with results disabled, where none are kept)."""
    from conveyor.backends.base import DisabledBackend

    backend = app.backend
    if isinstance(backend, DisabledBackend):
        return None, []
    return _read(backend.get(RELATIONS + task_id))


async def astored(app: Conveyor, task_id: str) -> tuple[str | None, list[str]]:
    """``stored()`` on the event loop's own result-store client (conveyor/aio)."""
    from conveyor.aio.client import get

    return _read(await get(app, RELATIONS + task_id))


def _read(record: ResultRecord | None) -> tuple[str | None, list[str]]:
    if record is None or not isinstance(record.result, Mapping):
        return None, []
    value = record.result
    return value.get("parent"), list(value.get("children") or [])


def canvas_relations(node: Mapping[str, Any], parent: str | None) -> Relations:
    """Parent and children of each task of a frozen canvas, as ``workflow.result_of``
    links the handles: a step's parent is the task before it; a task after a group
    (a chord's body) has none, its parent being the group."""
    found: Relations = {}

    def link(task_id: str, parent: str | None) -> None:
        entry = found.setdefault(task_id, {"parent": None, "children": []})
        if parent is not None:
            entry["parent"] = parent
            found.setdefault(parent, {"parent": None, "children": []})["children"].append(task_id)

    def walk(node: Mapping[str, Any], parent: str | None) -> str | None:
        kind = node.get("subtask_type") or "signature"
        if kind == "signature":
            task_id = str(node["options"]["task_id"])
            link(task_id, parent)
            return task_id
        if kind == "chain":
            for step in node["tasks"]:
                parent = walk(step, parent)
            return parent
        if kind == "group":
            for member in node["tasks"]:
                walk(member, parent)
            return None
        for member in node["header"]:
            walk(member, parent)
        return walk(node["body"], None)

    walk(node, parent)
    return {task_id: entry for task_id, entry in found.items() if entry["parent"] or entry["children"]}


def record_canvas(app: Conveyor, node: Mapping[str, Any]) -> None:
    """Store the relations of a canvas just sent (from a running task, its first tasks
    are that task's children too)."""
    request = current_request()
    relations = canvas_relations(node, request.id if request is not None else None)
    if request is not None and request.id in relations:
        if not request.relations_read:
            _seed(request, stored(app, request.id))
        _add_children(request, relations.pop(request.id)["children"], relations)
    _store(app, relations)


def record_sent(app: Conveyor, messages: Sequence[Message]) -> None:
    """Messages sent from inside a running task become its children."""
    request, children = _sent_from_task(messages)
    if request is None:
        return
    if not request.relations_read:
        _seed(request, stored(app, request.id))
    relations: Relations = {}
    _add_children(request, children, relations)
    _store(app, relations)


async def arecord_sent(app: Conveyor, messages: Sequence[Message]) -> None:
    """``record_sent`` for ``adelay()`` from a running (async) task, on the loop's clients."""
    request, children = _sent_from_task(messages)
    if request is None:
        return
    if not request.relations_read:
        _seed(request, await astored(app, request.id))
    relations: Relations = {}
    _add_children(request, children, relations)
    from conveyor.aio.client import backend

    await (await backend(app)).store(_records(relations))


def _sent_from_task(messages: Sequence[Message]) -> tuple[Request | None, list[str]]:
    request = current_request()
    if request is None or request.is_eager:
        return None, []
    children = [m.id for m in messages if m.parent_id == request.id]
    return (request, children) if children else (None, [])


def _seed(request: Request, found: tuple[str | None, list[str]]) -> None:
    """Children stored before this run (a canvas's next step, an earlier attempt's sends)."""
    request.relations_read = True
    request.children[:0] = [c for c in found[1] if c not in request.children]


def _add_children(request: Request, children: list[str], relations: Relations) -> None:
    request.children.extend(c for c in children if c not in request.children)
    relations[request.id] = {"parent": request.parent_id, "children": list(request.children)}
    for child in children:
        relations.setdefault(child, {"parent": request.id, "children": []})


def _records(relations: Relations) -> list[ResultRecord]:
    from conveyor.backends.base import ResultRecord

    return [
        ResultRecord(RELATIONS + task_id, RELATIONS_STATE, result=entry)
        for task_id, entry in relations.items()
    ]


def _store(app: Conveyor, relations: Relations) -> None:
    if relations:
        app.backend.store(_records(relations))
