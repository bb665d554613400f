"""Parents and children of tasks, kept in the result backend: ``AsyncResult.children``
read from any process, and the dashboard's task page linking both ways.

Records live in the result store beside the results, expire with them, and use the
state ``RELATIONS_STATE`` (never a ready one: no waiter is woken). Nothing lists the
result store, so they are seen only through ``stored()``:

- ``RELATIONS + id``: ``{"parent": id or None, "children": [ids], "runs": {attempt: n}}``;
  ``children`` are the ones known when a canvas was sent, ``runs`` counts the chunks
  below written by each attempt (``Request.retries``) of the task;
- ``RELATIONS + id + "#<attempt>.<k>"``: the k-th chunk of up to ``CHUNK`` ids of the
  tasks that attempt sent while it ran.

Who writes, and when (the worker's settle is not involved):

- sending a canvas (``Canvas.apply_async``): every task id is fixed then, so one
  store saves the whole tree: each chain step's next step (or group) is its child, as
  ``workflow.result_of`` links the handles in-process. It joins the publish's batch:
  with the results in the broker's store (the default) the relations commit with
  the messages, in the same round trip.
- sending from inside a running task (``delay()``, ``adelay()``, ``map()``, a
  canvas; ``Conveyor.build_message`` makes the running task the ``parent_id``): one
  store per send writes the child's record (its parent) and rewrites the current
  chunk of the running task's children, plus its main record when a chunk begins.
  The first send of a run reads the main record once. A task that sends thousands
  of tasks writes each id a bounded number of times, never a growing list per send.
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
CHUNK = 100

Relations = dict[str, dict[str, Any]]  # record id (without RELATIONS) -> value


# -- reading ------------------------------------------------------------------------------
def stored(app: Conveyor, task_id: str) -> tuple[str | None, list[str]]:
    """The parent and children stored for ``task_id`` (None and [] when none are, and
    with results disabled, where none are kept)."""
    from conveyor.backends.base import DisabledBackend

    backend = app.backend
    if isinstance(backend, DisabledBackend):
        return None, []
    main = _value(backend.get(RELATIONS + task_id))
    keys = _chunk_keys(task_id, main)
    chunks = backend.get_many([RELATIONS + key for key in keys]) if keys else {}
    return _assemble(main, keys, {k[len(RELATIONS) :]: _value(r) for k, r in chunks.items()})


def _value(record: ResultRecord | None) -> dict[str, Any]:
    return dict(record.result) if record is not None and isinstance(record.result, Mapping) else {}


def _chunk_keys(task_id: str, main: Mapping[str, Any]) -> list[str]:
    runs = main.get("runs") or {}
    return [
        f"{task_id}#{attempt}.{k}" for attempt in sorted(runs, key=int) for k in range(int(runs[attempt]))
    ]


def _assemble(
    main: Mapping[str, Any], keys: list[str], chunks: Mapping[str, Mapping[str, Any]]
) -> tuple[str | None, list[str]]:
    children = list(main.get("children") or [])
    for key in keys:
        children += [c for c in (chunks.get(key) or {}).get("children") or [] if c not in children]
    return main.get("parent"), children


# -- a canvas -----------------------------------------------------------------------------
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


def canvas_records(app: Conveyor, node: Mapping[str, Any]) -> list[ResultRecord]:
    """The records to store with a canvas being sent; from a running task, its first
    tasks are that task's children too."""
    if not app.conf.result_relations:
        return []
    request = _sending_task()
    relations = canvas_relations(node, request.id if request is not None else None)
    if request is not None and request.id in relations:
        first = relations.pop(request.id)["children"]
        if request.stored_relations is None:
            request.stored_relations = _value(app.backend.get(RELATIONS + request.id))
        for key, value in _sent(request, first).items():
            relations.setdefault(key, value)  # the tree's own records of those tasks win
    return _records(relations)


# -- sends from a running task --------------------------------------------------------------
def record_sent(app: Conveyor, messages: Sequence[Message]) -> None:
    """Messages sent from inside a running task become its children."""
    request = _sending_task() if app.conf.result_relations else None
    children = _children_of(request, messages)
    if request is None or not children:
        return
    if request.stored_relations is None:
        request.stored_relations = _value(app.backend.get(RELATIONS + request.id))
    app.backend.store(_records(_sent(request, children)))


async def arecord_sent(app: Conveyor, messages: Sequence[Message]) -> None:
    """``record_sent`` for ``adelay()``, on the event loop's own result-store client."""
    request = _sending_task() if app.conf.result_relations else None
    children = _children_of(request, messages)
    if request is None or not children:
        return
    from conveyor.aio.client import backend

    store = await backend(app)
    if request.stored_relations is None:
        request.stored_relations = _value(await store.get(RELATIONS + request.id))
    await store.store(_records(_sent(request, children)))


def _sending_task() -> Request | None:
    request = current_request()
    return None if request is None or request.is_eager else request


def _children_of(request: Request | None, messages: Sequence[Message]) -> list[str]:
    return [] if request is None else [m.id for m in messages if m.parent_id == request.id]


def _sent(request: Request, children: list[str]) -> Relations:
    """The records a send from ``request`` writes: each child's parent, the chunks of
    this attempt's children that changed, and the main record when a chunk began."""
    main = request.stored_relations
    assert main is not None  # read by the caller, which knows how to read
    before = len(request.children)
    request.children.extend(children)
    relations: Relations = {child: {"parent": request.id, "children": []} for child in children}
    attempt = str(request.retries)
    for k in range(before // CHUNK, (len(request.children) - 1) // CHUNK + 1):
        chunk = request.children[k * CHUNK : (k + 1) * CHUNK]
        relations[f"{request.id}#{attempt}.{k}"] = {"children": chunk}
    runs = dict(main.get("runs") or {})
    count = (len(request.children) - 1) // CHUNK + 1
    if runs.get(attempt) != count:
        runs[attempt] = count
        main = request.stored_relations = {
            **main,
            "parent": main.get("parent") or request.parent_id,
            "runs": runs,
        }
        relations[request.id] = {"children": [], **main}
    return relations


def _records(relations: Relations) -> list[ResultRecord]:
    from conveyor.backends.base import ResultRecord

    return [ResultRecord(RELATIONS + key, RELATIONS_STATE, result=value) for key, value in relations.items()]
