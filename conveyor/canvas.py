"""Signatures and the three ways to combine them: chain, group, chord.

Data plus the send logic only. The links travel in message headers, so no process
has to stay alive to drive a workflow:

- ``chain``: each message carries the rest of the chain (``headers["chain"]``); the
  worker that finishes one step sends the next with the result prepended to its
  arguments.
- ``group``: every member is sent in one ``publish_many``.
- ``chord``: each header member carries the chord (``headers["chord"]``). Each
  finished member is counted once in the result store, in the same write as its
  result; the one count that reaches the chord's size sends the body, so the body
  is sent once however many workers finish members together.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from conveyor.message import Message, new_id

if TYPE_CHECKING:
    from conveyor.app import Conveyor
    from conveyor.backends.base import Reply
    from conveyor.result import AsyncResult, GroupResult


class Signature:
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

    def set(self, **options: Any) -> Signature:
        self.options.update(options)
        return self

    def to_dict(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "args": self.args,
            "kwargs": self.kwargs,
            "options": self.options,
            "immutable": self.immutable,
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
        opts = {**self.options, **options}
        if task is not None:
            return task.build_message(full_args, full_kwargs, **opts)
        return app.build_message(self.task, full_args, full_kwargs, **opts)

    def apply_async(
        self, args: Sequence[Any] = (), kwargs: Mapping[str, Any] | None = None, **options: Any
    ) -> AsyncResult[Any]:
        if self.app.conf.task_always_eager:
            task = self.app.get_task(self.task)
            msg = self.message(args, kwargs, **options)
            return task.apply(msg.args, msg.kwargs, task_id=msg.id)
        msg = self.message(args, kwargs, **options)
        self.app.publish(msg)
        return self.app.AsyncResult(msg.id, task_name=self.task)

    def delay(self, *args: Any, **kwargs: Any) -> AsyncResult[Any]:
        return self.apply_async(args, kwargs)

    def __call__(self, *args: Any, **kwargs: Any) -> AsyncResult[Any]:
        return self.apply_async(args, kwargs)

    def __repr__(self) -> str:
        return f"{self.task}.s(*{self.args!r}, **{self.kwargs!r})"


class chain:  # noqa: N801 - Celery's public name
    """Run signatures one after the other, each receiving the previous result first."""

    def __init__(self, *tasks: Signature | Iterable[Signature]) -> None:
        flat: list[Signature] = []
        for item in tasks:
            flat.extend([item] if isinstance(item, Signature) else list(item))
        if not flat:
            raise ValueError("chain() needs at least one signature")
        self.tasks = flat

    def apply_async(
        self, args: Sequence[Any] = (), kwargs: Mapping[str, Any] | None = None
    ) -> AsyncResult[Any]:
        """Send the first step; returns the result of the *last* step (ids are fixed up front)."""
        ids = [sig.options.get("task_id") or new_id() for sig in self.tasks]
        rest = [
            {**sig.to_dict(), "options": {**sig.options, "task_id": tid}}
            for sig, tid in zip(self.tasks[1:], ids[1:], strict=True)
        ]
        first = self.tasks[0]
        headers = {"chain": rest} if rest else {}
        first.app.publish(first.message(args, kwargs, task_id=ids[0], headers=headers))
        return first.app.AsyncResult(ids[-1], task_name=self.tasks[-1].task)

    def __call__(self, *args: Any, **kwargs: Any) -> AsyncResult[Any]:
        return self.apply_async(args, kwargs)

    delay = __call__


class group:  # noqa: N801 - Celery's public name
    """Run signatures in parallel; the result is a GroupResult of all of them."""

    def __init__(self, *tasks: Signature | Iterable[Signature]) -> None:
        flat: list[Signature] = []
        for item in tasks:
            flat.extend([item] if isinstance(item, Signature) else list(item))
        self.tasks = flat

    def messages(self, args: Sequence[Any] = (), headers: Mapping[str, Any] | None = None) -> list[Message]:
        return [
            sig.message(args, headers={**sig.options.get("headers", {}), **(headers or {})})
            for sig in self.tasks
        ]

    def apply_async(self, args: Sequence[Any] = ()) -> GroupResult:
        from conveyor.result import GroupResult

        if not self.tasks:
            return GroupResult(new_id(), [])
        app = self.tasks[0].app
        if app.conf.task_always_eager:
            return GroupResult(new_id(), [sig.apply_async(args) for sig in self.tasks])
        messages = self.messages(args)
        app.publish_many(messages)
        return GroupResult(new_id(), [app.AsyncResult(m.id, task_name=m.task) for m in messages], app=app)

    def __call__(self, *args: Any) -> GroupResult:
        return self.apply_async(args)

    delay = __call__


class chord:  # noqa: N801 - Celery's public name
    """Run a group, then one callback with the list of the group's results."""

    def __init__(self, header: group | Iterable[Signature], body: Signature | None = None) -> None:
        self.header = header if isinstance(header, group) else group(header)
        self.body = body

    def __call__(self, body: Signature | None = None) -> AsyncResult[Any]:
        callback = body or self.body
        if callback is None:
            raise ValueError("chord() needs a body: chord(header, body)() or chord(header)(body)")
        if not self.header.tasks:
            return callback.apply_async(([],))
        app = callback.app
        body_id = callback.options.get("task_id") or new_id()
        if app.conf.task_always_eager:
            results = self.header.apply_async().get()
            return callback.apply_async((results,), task_id=body_id)
        member_ids = [new_id() for _ in self.header.tasks]
        spec = {
            "id": new_id(),
            "members": member_ids,
            "body": {**callback.to_dict(), "options": {**callback.options, "task_id": body_id}},
        }
        messages = [
            sig.message(task_id=tid, headers={"chord": spec})
            for sig, tid in zip(self.header.tasks, member_ids, strict=True)
        ]
        app.publish_many(messages)
        return app.AsyncResult(body_id, task_name=callback.task)


def next_in_chain(app: Conveyor, message: Message, result: Any) -> Message | None:
    """The message for the step after ``message`` in its chain, or None at the end."""
    rest = message.headers.get("chain")
    if not rest:
        return None
    step = Signature.from_dict(rest[0], app=app)
    headers = {"chain": rest[1:]} if len(rest) > 1 else {}
    return step.message((result,), headers=headers)


def count_chord_member(app: Conveyor, spec: Mapping[str, Any], task_id: str) -> Reply[bool]:
    """Count a finished member; True for the one call that counted the last member."""
    return app.backend.count_chord_member(str(spec["id"]), task_id, size=len(spec.get("members") or []))


def complete_chord(app: Conveyor, spec: Mapping[str, Any]) -> None:
    """Send the body of a chord whose last member was just counted, with the
    members' results in header order: called once per chord, by whoever counted
    the last member (``count_chord_member``), so the members are read only here.

    A member that did not succeed fails the body instead, without running it.
    """
    from conveyor import states
    from conveyor.backends.base import ResultRecord
    from conveyor.result import stored_value
    from conveyor.serialization import exception_to_dict

    members = list(spec.get("members") or [])
    records = app.backend.get_many(members)
    body = Signature.from_dict(spec["body"], app=app)
    failed = next((m for m in members if m not in records or records[m].state != states.SUCCESS), None)
    if failed is not None:
        from conveyor.exceptions import TaskError

        found = records.get(failed)
        what = f"[{failed}] has no result" if found is None else f"{found.task}[{failed}] ended {found.state}"
        error = TaskError(f"chord member {what}")
        body_id = body.options.get("task_id") or new_id()
        app.backend.store(
            [ResultRecord(body_id, states.FAILURE, task=body.task, exception=exception_to_dict(error))]
        )
        return
    app.publish(body.message(([stored_value(records[m].result, app) for m in members],)))
