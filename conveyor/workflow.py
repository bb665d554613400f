"""The runtime half of the canvas: ids, messages and results from a canvas's data form.

Everything here works on the JSON form (``Canvas.to_dict()``), the same one that
travels in message headers, so the producer and the worker that sends a workflow's
next step run the same code.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from conveyor import states
from conveyor.message import Message, new_id

if TYPE_CHECKING:
    from conveyor.app import Conveyor
    from conveyor.backends.base import Reply

Node = dict[str, Any]


def _kind(node: Mapping[str, Any]) -> str:
    return str(node.get("subtask_type") or "signature")


def _normalized(tasks: Sequence[Node]) -> list[Node]:
    """Nested chains flattened; a group followed by a step becomes a chord (Celery's rule)."""
    flat: list[Node] = []
    for task in tasks:
        flat.extend(_normalized(task["tasks"]) if _kind(task) == "chain" else [task])
    out: list[Node] = []
    i = 0
    while i < len(flat):
        if _kind(flat[i]) == "group" and i + 1 < len(flat):
            out.append(_chord(flat[i]["tasks"], flat[i + 1]))
            i += 2
        else:
            out.append(flat[i])
            i += 1
    return out


def _chord(header: Sequence[Node], body: Node) -> Node:
    return {"subtask_type": "chord", "header": list(header), "body": body, "options": {}}


def _chain(tasks: Sequence[Node]) -> Node:
    return {"subtask_type": "chain", "tasks": _normalized(tasks), "options": {}}


def _header(header: Sequence[Node]) -> list[Node]:
    """A chord's members, with nested groups' members taken in (Celery flattens them)."""
    out: list[Node] = []
    for member in header:
        out.extend(_header(member["tasks"]) if _kind(member) == "group" else [member])
    return out


def freeze(node: Node) -> Node:
    """Give every task in the canvas its id, in place (kept when already set)."""
    kind = _kind(node)
    options = node.setdefault("options", {})
    if kind == "signature":
        options.setdefault("task_id", new_id())
    elif kind == "chain":
        node["tasks"] = _normalized(node["tasks"])
        for task in node["tasks"]:
            freeze(task)
    elif kind == "group":
        options.setdefault("group_id", new_id())
        for task in node["tasks"]:
            freeze(task)
    else:
        node["header"] = _header(node["header"])
        options.setdefault("chord_id", new_id())
        for task in node["header"]:
            freeze(task)
        freeze(node["body"])
    return node


def tail_id(node: Mapping[str, Any]) -> str:
    """The id of the task whose result is this canvas's result."""
    kind = _kind(node)
    if kind == "signature":
        return str(node["options"]["task_id"])
    if kind == "chain":
        return tail_id(node["tasks"][-1])
    if kind == "chord":
        return tail_id(node["body"])
    raise ValueError("a chord member cannot end in a group: make it a chord (group | task)")


def task_ids(node: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
    """(task id, task name) of every task in the canvas."""
    kind = _kind(node)
    if kind == "signature":
        yield str(node["options"]["task_id"]), str(node["task"])
    for key in ("tasks", "header"):
        for child in node.get(key) or ():
            yield from task_ids(child)
    if kind == "chord":
        yield from task_ids(node["body"])


def _with_tail_header(node: Node, key: str, value: Any) -> Node:
    kind = _kind(node)
    if kind == "signature":
        options = dict(node.get("options") or {})
        options["headers"] = {**options.get("headers", {}), key: value}
        return {**node, "options": options}
    if kind == "chain":
        return {**node, "tasks": [*node["tasks"][:-1], _with_tail_header(node["tasks"][-1], key, value)]}
    if kind == "chord":
        return {**node, "body": _with_tail_header(node["body"], key, value)}
    raise ValueError("a chord member cannot end in a group: make it a chord (group | task)")


def messages_for(
    app: Conveyor,
    node: Node,
    args: Sequence[Any] = (),
    kwargs: Mapping[str, Any] | None = None,
    continuation: Sequence[Node] = (),
) -> list[Message]:
    """The messages that start ``node`` now, ``args`` prepended to its first tasks'.

    ``continuation``: the steps that follow ``node`` in a chain; they travel with the
    task whose result is ``node``'s result.
    """
    freeze(node)
    return _build(app, node, args, kwargs, list(continuation))


def _build(
    app: Conveyor, node: Node, args: Sequence[Any], kwargs: Mapping[str, Any] | None, rest: list[Node]
) -> list[Message]:
    from conveyor.canvas import Signature

    kind = _kind(node)
    if kind == "signature":
        return [
            Signature.from_dict(node, app=app).message(args, kwargs, headers={"chain": rest} if rest else {})
        ]
    if kind == "chain":
        tasks = node["tasks"]
        return _build(app, tasks[0], args, kwargs, [*tasks[1:], *rest])
    if kind == "group":
        if rest:  # a group followed by steps: they wait for all of it
            return messages_for(app, _chord(node["tasks"], _chain(rest)), args, kwargs)
        return [m for task in node["tasks"] for m in _build(app, task, args, kwargs, [])]
    body = freeze(_chain([node["body"], *rest])) if rest else node["body"]
    header = node["header"]
    if not header:
        return _build(app, body, ([],), None, [])
    spec = {"id": node["options"]["chord_id"], "members": [tail_id(m) for m in header], "body": body}
    return [
        m
        for member in header
        for m in _build(app, _with_tail_header(member, "chord", spec), args, kwargs, [])
    ]


def result_of(app: Conveyor, node: Mapping[str, Any], parent: Any = None) -> Any:
    """The result handle of a frozen canvas: what its final task(s) will store."""
    from conveyor.result import GroupResult

    kind = _kind(node)
    if kind == "signature":
        result = app.AsyncResult(str(node["options"]["task_id"]), task_name=str(node["task"]))
        result.parent = parent
        if parent is not None and hasattr(parent, "_children"):
            parent._children.append(result)
        return result
    if kind == "chain":
        for task in node["tasks"]:
            parent = result_of(app, task, parent)
        return parent
    if kind == "group":
        members = [result_of(app, t, parent) for t in node["tasks"]]
        return GroupResult(str(node["options"]["group_id"]), members, app=app, parent=parent)
    header = GroupResult(
        str(node["options"]["chord_id"]), [result_of(app, t, parent) for t in node["header"]], app=app
    )
    header.parent = parent
    return result_of(app, node["body"], header)


def run_eagerly(app: Conveyor, node: Node, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """``task_always_eager``: the canvas run inline, step by step."""
    from conveyor.canvas import Signature
    from conveyor.result import GroupResult

    kind = _kind(node)
    if kind == "signature":
        return Signature.from_dict(node, app=app).apply_async(args, kwargs)
    if kind == "chain":
        result = None
        for task in node["tasks"]:
            result = run_eagerly(app, task, args if result is None else (result.get(),), {})
        return result
    if kind == "group":
        members = [run_eagerly(app, t, args, kwargs) for t in node["tasks"]]
        return GroupResult(str(node["options"]["group_id"]), members)
    values = [run_eagerly(app, t, args, kwargs).get() for t in node["header"]]
    return run_eagerly(app, node["body"], (values,), {})


# -- in the worker: what a finished task sends with its settle --------------------


def next_in_chain(app: Conveyor, message: Message, result: Any) -> list[Message]:
    """The messages of the step after ``message`` in its chain (none at the end)."""
    rest = message.headers.get("chain")
    if not rest:
        return []
    return messages_for(app, rest[0], (result,), None, rest[1:])


def follow_ups_on_success(app: Conveyor, message: Message, result: Any) -> list[Message]:
    """The chain's next step and the ``link`` callbacks, each with the result first."""
    out = next_in_chain(app, message, result)
    for node in message.headers.get("link") or ():
        out.extend(messages_for(app, node, (result,)))
    return out


def error_request(message: Message, hostname: str | None) -> dict[str, Any]:
    """What an error callback gets as ``request``: the failed task's, as JSON."""
    return {
        "id": message.id,
        "task": message.task,
        "args": message.args,
        "kwargs": message.kwargs,
        "retries": message.retries,
        "queue": message.queue,
        "priority": message.priority,
        "eta": message.eta,
        "expires": message.expires,
        "parent_id": message.parent_id,
        "root_id": message.root_id,
        "hostname": hostname,
    }


def errback_messages(
    app: Conveyor, nodes: Sequence[Node], request: dict[str, Any], exception: dict[str, Any], traceback: str
) -> list[Message]:
    """Error callbacks, called as ``errback(request, exc, traceback)``; the worker that
    runs one rebuilds ``request`` and ``exc`` from their JSON (``headers["errback"]``)."""
    out = []
    for node in nodes:
        for msg in messages_for(app, node, (request, exception, traceback)):
            mutable = msg.args[:1] == [request]
            out.append(msg.with_changes(headers={**msg.headers, "errback": True}) if mutable else msg)
    return out


def follow_ups_on_failure(
    app: Conveyor, message: Message, exc: BaseException, hostname: str | None
) -> list[Message]:
    nodes = message.headers.get("link_error")
    if not nodes:
        return []
    from conveyor.serialization import exception_to_dict, format_traceback

    request = error_request(message, hostname)
    return errback_messages(app, nodes, request, exception_to_dict(exc), format_traceback(exc))


def count_chord_member(app: Conveyor, spec: Mapping[str, Any], task_id: str) -> Reply[bool]:
    """Count a finished member; True for the one call that counted the last member."""
    return app.backend.count_chord_member(str(spec["id"]), task_id, size=len(spec.get("members") or []))


def complete_chord(app: Conveyor, spec: Mapping[str, Any]) -> None:
    """Send the body of a chord whose last member was just counted, with the
    members' results in header order: called once per chord, by whoever counted
    the last member (``count_chord_member``), so the members are read only here.

    A member that did not succeed fails the body instead, without running it:
    every task of the body stores FAILURE with a ChordError naming the member
    (Celery's behaviour), and the body's ``link_error`` callbacks are sent.
    """
    members = list(spec.get("members") or [])
    records = app.backend.get_many(members)
    body: Node = dict(spec["body"])
    failed = next((m for m in members if m not in records or records[m].state != states.SUCCESS), None)
    if failed is None:
        from conveyor.result import stored_value

        results = [stored_value(records[m].result, app) for m in members]
        app.publish_many(messages_for(app, body, (results,)))
        return
    from conveyor.backends.base import ResultRecord
    from conveyor.exceptions import ChordError
    from conveyor.serialization import exception_from_dict, exception_to_dict

    found = records.get(failed)
    if found is None:
        error = ChordError(f"Dependency [{failed}] has no result")
    elif found.exception:
        error = ChordError(
            f"Dependency {found.task}[{failed}] raised {exception_from_dict(found.exception)!r}"
        )
    else:
        error = ChordError(f"Dependency {found.task}[{failed}] ended {found.state}")
    as_dict = exception_to_dict(error)
    freeze(body)
    app.backend.store(
        [ResultRecord(tid, states.FAILURE, task=name, exception=as_dict) for tid, name in task_ids(body)]
    )
    if _kind(body) == "signature" and body["options"].get("link_error"):
        request = {"id": body["options"]["task_id"], "task": body["task"], "args": body.get("args") or []}
        app.publish_many(errback_messages(app, body["options"]["link_error"], request, as_dict, ""))
