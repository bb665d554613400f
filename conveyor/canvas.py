"""Signatures and the ways to combine them: chain, group, chord (nested at will),
plus Celery's chunks/xmap/xstarmap, and callbacks (link, link_error).

A canvas travels as plain JSON (``to_dict``), so no process has to stay alive to
drive a workflow:

- Before sending, every task in the canvas gets its id (``freeze``), so the caller
  gets result handles at once and a redelivered step keeps its id.
- ``chain``: each message carries the rest of the chain (``headers["chain"]``); the
  worker that finishes one step sends the next (whatever it is: a task, a group, a
  chord) with the result prepended to its arguments. A group followed by a step is
  upgraded to a chord, as in Celery.
- ``group``: every member is sent in one ``publish_many``.
- ``chord``: the last task of each header member carries the chord
  (``headers["chord"]``). Each finished member is counted once in the result store,
  in the same write as its result; the one count that reaches the chord's size sends
  the body, so the body is sent once however many workers finish members together.
- ``link``/``link_error`` ride in the message's headers; the worker sends them with
  the settle of the task they follow, so a crash cannot store a result and lose them.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from conveyor.message import Message

if TYPE_CHECKING:
    from conveyor.app import Conveyor
    from conveyor.result import AsyncResult, GroupResult

Node = dict[str, Any]  # a canvas as data: what to_dict() returns


class Canvas:
    """What every canvas piece shares: piping, sending, its data form."""

    def to_dict(self) -> Node:
        raise NotImplementedError

    @property
    def app(self) -> Conveyor:
        raise NotImplementedError

    def __or__(self, other: Canvas) -> Canvas:
        if isinstance(self, group) and not isinstance(other, group):
            return chord(self, other)  # Celery's upgrade: group | task is a chord
        return chain(self, other)

    def apply_async(
        self, args: Sequence[Any] = (), kwargs: Mapping[str, Any] | None = None, **options: Any
    ) -> Any:
        """Send the whole canvas; returns the handle of its final result."""
        app = self.app
        node = self.to_dict()
        if options:
            node = _with_options(node, options)
        freeze(node)
        if app.conf.task_always_eager:
            return run_eagerly(app, node, tuple(args), dict(kwargs or {}))
        messages = messages_for(app, node, args, kwargs)
        relations = canvas_records(app, node)
        if not relations:
            app.publish_many(messages)
            return result_of(app, node)
        backend = app.backend  # made outside the batch: making it may create tables
        # One batch: where the results share the broker's store (the default), the
        # relations commit with the messages, in the same round trip.
        with app.broker.batch():
            app.publish_many(messages)
            backend.store(relations)
        return result_of(app, node)

    def delay(self, *args: Any, **kwargs: Any) -> Any:
        return self.apply_async(args, kwargs)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.apply_async(args, kwargs)


class Signature(Canvas):
    """A task call packaged as data: ``add.s(2, 2)``."""

    def __init__(
        self,
        task: str,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        *,
        options: Mapping[str, Any] | None = None,
        immutable: bool = False,
        app: Conveyor | None = None,
    ) -> None:
        self.task = task
        self.args = list(args)
        self.kwargs = dict(kwargs or {})
        self.options = dict(options or {})
        self.immutable = immutable
        self._app = app

    @property
    def app(self) -> Conveyor:
        if self._app is not None:
            return self._app
        from conveyor.app import get_current_app

        return get_current_app()

    @property
    def id(self) -> str | None:
        return self.options.get("task_id")

    def set(self, **options: Any) -> Signature:
        """Options for this step only (``queue``, ``countdown``, ``priority``...)."""
        self.options.update(options)
        return self

    def link(self, callback: Canvas) -> Canvas:
        """Send ``callback`` with this task's return value first when it succeeds."""
        self.options["link"] = [*self.options.get("link", []), callback.to_dict()]
        return callback

    def link_error(self, errback: Canvas) -> Canvas:
        """Send ``errback`` as ``errback(request, exc, traceback)`` when this task fails for good."""
        self.options["link_error"] = [*self.options.get("link_error", []), errback.to_dict()]
        return errback

    def on_error(self, errback: Canvas) -> Signature:
        self.link_error(errback)
        return self

    def to_dict(self) -> Node:
        return {
            "task": self.task,
            "args": list(self.args),
            "kwargs": dict(self.kwargs),
            "options": dict(self.options),
            "immutable": self.immutable,
            "subtask_type": None,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], app: Conveyor | None = None) -> Signature:
        return cls(
            data["task"],
            data.get("args") or (),
            data.get("kwargs") or {},
            options=data.get("options") or {},
            immutable=bool(data.get("immutable")),
            app=app,
        )

    def message(
        self, args: Sequence[Any] = (), kwargs: Mapping[str, Any] | None = None, **options: Any
    ) -> Message:
        """Build the message; partial ``args`` go before the signature's own (Celery's rule)."""
        full_args = self.args if self.immutable else [*args, *self.args]
        full_kwargs = self.kwargs if self.immutable else {**self.kwargs, **(kwargs or {})}
        app = self.app
        task = app.tasks.get(self.task)
        headers = {**self.options.get("headers", {}), **options.get("headers", {})}
        opts = {**self.options, **options, "headers": headers}
        if task is not None:
            return task.build_message(full_args, full_kwargs, **opts)
        return app.build_message(self.task, full_args, full_kwargs, **opts)

    def apply_async(
        self, args: Sequence[Any] = (), kwargs: Mapping[str, Any] | None = None, **options: Any
    ) -> AsyncResult[Any]:
        app = self.app
        msg = self.message(args, kwargs, **options)
        if app.conf.task_always_eager:
            return app.get_task(self.task).apply(msg.args, msg.kwargs, task_id=msg.id)
        return app.AsyncResult(app.send(msg), task_name=self.task)

    def __repr__(self) -> str:
        return f"{self.task}.s(*{self.args!r}, **{self.kwargs!r})"


def _flatten(items: Iterable[Canvas | Iterable[Canvas]]) -> list[Canvas]:
    flat: list[Canvas] = []
    for item in items:
        flat.extend([item] if isinstance(item, Canvas) else list(item))
    return flat


class chain(Canvas):  # noqa: N801 - Celery's public name
    """Run steps one after the other, each receiving the previous result first."""

    def __init__(self, *tasks: Canvas | Iterable[Canvas]) -> None:
        flat: list[Canvas] = []
        for item in _flatten(tasks):
            flat.extend(item.tasks if isinstance(item, chain) else [item])
        if not flat:
            raise ValueError("chain() needs at least one signature")
        self.tasks: list[Canvas] = flat

    @property
    def app(self) -> Conveyor:
        return self.tasks[0].app

    def __or__(self, other: Canvas) -> Canvas:
        return chain(*self.tasks, other)

    def to_dict(self) -> Node:
        return {"subtask_type": "chain", "tasks": [t.to_dict() for t in self.tasks], "options": {}}


class group(Canvas):  # noqa: N801 - Celery's public name
    """Run signatures in parallel; the result is a GroupResult of all of them."""

    def __init__(self, *tasks: Canvas | Iterable[Canvas], app: Conveyor | None = None) -> None:
        self.tasks = _flatten(tasks)
        self._app = app

    @property
    def app(self) -> Conveyor:
        if self.tasks:
            return self.tasks[0].app
        from conveyor.app import get_current_app

        return self._app or get_current_app()

    def to_dict(self) -> Node:
        return {"subtask_type": "group", "tasks": [t.to_dict() for t in self.tasks], "options": {}}

    def apply_async(
        self, args: Sequence[Any] = (), kwargs: Mapping[str, Any] | None = None, **options: Any
    ) -> GroupResult:
        result: GroupResult = super().apply_async(args, kwargs, **options)
        return result


class chord(Canvas):  # noqa: N801 - Celery's public name
    """Run a group, then one callback with the list of the group's results."""

    def __init__(self, header: group | Iterable[Canvas], body: Canvas | None = None) -> None:
        self.header = header if isinstance(header, group) else group(header)
        self.body = body

    @property
    def app(self) -> Conveyor:
        return self.body.app if self.body is not None else self.header.app

    def to_dict(self) -> Node:
        if self.body is None:
            raise ValueError("chord() needs a body: chord(header, body)() or chord(header)(body)")
        return {
            "subtask_type": "chord",
            "header": [t.to_dict() for t in self.header.tasks],
            "body": self.body.to_dict(),
            "options": {},
        }

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if len(args) == 1 and isinstance(args[0], Canvas) and not kwargs:
            return chord(self.header, args[0]).apply_async()  # Celery's chord(header)(body)
        return self.apply_async(args, kwargs)


class chunks(group):  # noqa: N801 - Celery's public name
    """``task.chunks(items, n)``: the items split in groups of ``n``, each run as one task
    that returns the list of its calls' results (``task(*item)`` per item)."""

    def __init__(self, task: Signature, it: Iterable[Sequence[Any]], n: int) -> None:
        if n < 1:
            raise ValueError(f"chunks: n must be 1 or more, got {n}")
        items = iter(it)
        parts = iter(lambda: list(itertools.islice(items, n)), [])
        super().__init__([xstarmap(task, part) for part in parts])

    def group(self) -> group:
        return group(self.tasks)


def xmap(task: Signature, it: Iterable[Any]) -> Signature:
    """One task that calls ``task(item)`` for each item and returns the list (Celery's ``task.map``)."""
    return _mapped(task, "each", [*it])


def xstarmap(task: Signature, it: Iterable[Sequence[Any]]) -> Signature:
    """One task that calls ``task(*item)`` for each item and returns the list (``task.starmap``)."""
    return _mapped(task, "star", [list(item) for item in it])


def _mapped(task: Signature, how: str, items: list[Any]) -> Signature:
    # The task itself carries the items: the worker runs it once per item, in one
    # message, so the task's own queue, limits and result apply.
    options = {**task.options, "headers": {**task.options.get("headers", {}), "map": how}}
    return Signature(task.task, [items], options=options, immutable=True, app=task._app)


def maybe_signature(value: Any, app: Conveyor | None = None) -> Canvas:
    """A canvas object from a canvas or its dict form."""
    if isinstance(value, Canvas):
        return value
    kind = value.get("subtask_type")
    if kind == "chain":
        return chain([maybe_signature(t, app) for t in value["tasks"]])
    if kind == "group":
        return group([maybe_signature(t, app) for t in value["tasks"]])
    if kind == "chord":
        return chord([maybe_signature(t, app) for t in value["header"]], maybe_signature(value["body"], app))
    return Signature.from_dict(value, app=app)


def signature(
    varies: Any, args: Sequence[Any] = (), kwargs: Mapping[str, Any] | None = None, **options: Any
) -> Canvas:
    """Celery's ``signature()``: from a task name (with arguments and options) or a canvas's dict."""
    if isinstance(varies, str):
        return Signature(varies, args, kwargs, options=options)
    return maybe_signature(varies)


def callback_nodes(value: Any) -> list[Node]:
    """``link=``/``link_error=`` as given (a canvas, its dict, or a list of them) as data."""
    if value is None:
        return []
    items = value if isinstance(value, (list, tuple)) else [value]
    return [item.to_dict() if isinstance(item, Canvas) else dict(item) for item in items]


from conveyor.relations import canvas_records  # noqa: E402
from conveyor.workflow import (  # noqa: E402 - the runtime half works on the data forms above
    complete_chord,
    count_chord_member,
    follow_ups_on_failure,
    follow_ups_on_success,
    freeze,
    messages_for,
    next_in_chain,
    result_of,
    run_eagerly,
)

__all__ = [
    "Canvas",
    "Signature",
    "chain",
    "chord",
    "chunks",
    "complete_chord",
    "count_chord_member",
    "follow_ups_on_failure",
    "follow_ups_on_success",
    "group",
    "maybe_signature",
    "messages_for",
    "next_in_chain",
    "signature",
    "xmap",
    "xstarmap",
]


def _with_options(node: Node, options: Mapping[str, Any]) -> Node:
    """Options given to a whole canvas at send time: on its first step(s)."""
    kind = node.get("subtask_type")
    if kind is None:
        return {**node, "options": {**node["options"], **options}}
    if kind == "chain":
        return {**node, "tasks": [_with_options(node["tasks"][0], options), *node["tasks"][1:]]}
    if kind == "group":
        return {**node, "tasks": [_with_options(t, options) for t in node["tasks"]]}
    return {**node, "header": [_with_options(t, options) for t in node["header"]]}
