"""Result handles: what ``delay()`` returns, reading from the app's result backend."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from conveyor import states
from conveyor.exceptions import Revoked, TimeoutError
from conveyor.serialization import exception_from_dict
from conveyor.serializers import RESULT_KEY, accepted, unwrap_result

if TYPE_CHECKING:
    from conveyor.app import Conveyor
    from conveyor.backends.base import ResultRecord

R = TypeVar("R")


class AsyncResult(Generic[R]):
    """A task's state and outcome, fetched from the result backend on each access."""

    def __init__(self, id: str, app: Conveyor | None = None, task_name: str | None = None) -> None:
        if app is None:
            from conveyor.app import get_current_app

            app = get_current_app()
        self.id = id
        self.app = app
        self.task_name = task_name
        # Known when this handle came from a canvas sent here (the previous step of a
        # chain, a chord's header): Celery's ``parent``.
        self.parent: Any = None
        self._children: list[Any] = []

    def __repr__(self) -> str:
        return f"<AsyncResult {self.id}>"

    @property
    def children(self) -> list[Any]:
        """Results of the tasks sent after this one: a chain's next step (or group), and
        the tasks it sent while it ran. Built in this process when the handle came from
        a canvas sent here; otherwise read from the result backend (conveyor/relations.py),
        where any process finds them."""
        if self._children:
            return list(self._children)
        from conveyor.relations import stored

        _, children = stored(self.app, self.id)
        return [self.app.AsyncResult(child) for child in children]

    def collect(self, timeout: float | None = None) -> Iterator[tuple[Any, Any]]:
        """``(result, value)`` for this result and its children, depth first (Celery's)."""
        yield self, self.get(timeout=timeout)
        for child in self.children:
            if isinstance(child, AsyncResult):
                yield from child.collect(timeout=timeout)
            else:
                yield child, child.get(timeout=timeout)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, AsyncResult) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    @property
    def task_id(self) -> str:
        return self.id

    def _record(self) -> ResultRecord | None:
        return self.app.backend.get(self.id)

    @property
    def state(self) -> str:
        record = self._record()
        return record.state if record else states.PENDING

    status = state

    @property
    def result(self) -> Any:
        """The return value when SUCCESS, the exception instance when FAILURE/RETRY/REVOKED."""
        record = self._record()
        return _value(record, self.app) if record else None

    info = result

    @property
    def traceback(self) -> str | None:
        record = self._record()
        return record.traceback if record else None

    @property
    def retries(self) -> int:
        record = self._record()
        return record.retries if record else 0

    @property
    def date_done(self) -> float | None:
        record = self._record()
        return record.finished_at if record else None

    @property
    def worker(self) -> str | None:
        record = self._record()
        return record.worker if record else None

    def ready(self) -> bool:
        return self.state in states.READY_STATES

    def successful(self) -> bool:
        return self.state == states.SUCCESS

    def _why_late(self) -> str:
        task = self.app.tasks.get(self.task_name) if self.task_name else None
        if task is not None and task.rate_limit:
            return (
                f"is a worker consuming its queue? {task.name} has rate_limit {task.rate_limit!r}, "
                "shared by every worker: it may be waiting for its turn (the worker logs when it holds one back)"
            )
        return "is a worker consuming its queue?"

    def failed(self) -> bool:
        return self.state == states.FAILURE

    def get(self, timeout: float | None = None, propagate: bool = True, interval: float = 0.1) -> R:
        """Wait for the task to finish and return its value.

        Raises:
            TimeoutError: not finished within ``timeout`` seconds.
            Exception: with ``propagate`` (default), the task's own exception type and
                message when it failed, or ``Revoked`` when it was revoked or expired.
        """
        record = self.app.backend.wait(self.id, timeout_s=timeout, interval_s=interval)
        return self._outcome(record, timeout, propagate)

    async def aget(self, timeout: float | None = None, propagate: bool = True, interval: float = 0.1) -> R:
        """``get()`` from a coroutine: awaits the result on the event loop's own
        connection (conveyor/aio), raising what ``get()`` raises."""
        from conveyor.aio.client import wait

        record = await wait(self.app, self.id, timeout_s=timeout, interval_s=interval)
        return self._outcome(record, timeout, propagate)

    async def astate(self) -> str:
        """``state`` from a coroutine."""
        from conveyor.aio.client import get

        record = await get(self.app, self.id)
        return record.state if record else states.PENDING

    def _outcome(self, record: ResultRecord | None, timeout: float | None, propagate: bool) -> R:
        if record is None or not record.ready:
            state = record.state if record else states.PENDING
            raise TimeoutError(
                f"task {self.id} not ready after {timeout}s (state {state}): {self._why_late()}"
            )
        value = _value(record, self.app)
        if propagate and record.state in states.PROPAGATE_STATES:
            assert isinstance(value, BaseException)
            raise value
        return value  # type: ignore[no-any-return]

    wait = get

    def forget(self) -> None:
        self.app.backend.forget(self.id)

    def revoke(self, terminate: bool = False, *, reply: bool = False, timeout: float = 1.0) -> dict[str, Any]:
        """Never run this task; with ``terminate``, also stop it where it runs now.

        Its result becomes REVOKED when a worker drops or stops it (see
        ``app.control.revoke``); with ``reply``, returns each worker's answer.
        """
        return self.app.control.revoke(self.id, terminate=terminate, reply=reply, timeout=timeout)


def _value(record: ResultRecord, app: Conveyor) -> Any:
    if record.state in states.EXCEPTION_STATES and record.exception:
        return exception_from_dict(record.exception)
    if record.state == states.REVOKED:
        return Revoked(f"task {record.task_id} was revoked")
    return stored_value(record.result, app)


def stored_value(value: Any, app: Conveyor) -> Any:
    """A stored result as the task returned it (results kept with a non-JSON result_serializer)."""
    if isinstance(value, dict) and RESULT_KEY in value:
        conf = app.conf
        accept = accepted(
            conf.result_accept_content if conf.result_accept_content is not None else conf.accept_content
        )
        return unwrap_result(value, accept)
    return value


class EagerResult(AsyncResult[R]):
    """The outcome of a task run inline (``task_always_eager`` or ``Task.apply``)."""

    def __init__(
        self,
        id: str,
        value: Any,
        state: str,
        *,
        traceback: str | None = None,
        retries: int = 0,
        task_name: str | None = None,
    ) -> None:
        self.id = id
        self.task_name = task_name
        self.parent = None
        self._children = []
        self._value = value
        self._state = state
        self._traceback = traceback
        self._retries = retries
        self._finished_at = time.time()

    def __repr__(self) -> str:
        return f"<EagerResult {self.id} {self._state}>"

    @property
    def children(self) -> list[Any]:
        return list(self._children)

    @property
    def state(self) -> str:
        return self._state

    status = state

    @property
    def result(self) -> Any:
        return self._value

    info = result

    @property
    def traceback(self) -> str | None:
        return self._traceback

    @property
    def retries(self) -> int:
        return self._retries

    @property
    def date_done(self) -> float | None:
        return self._finished_at

    @property
    def worker(self) -> str | None:
        return None

    def get(self, timeout: float | None = None, propagate: bool = True, interval: float = 0.1) -> R:
        if propagate and self._state in states.PROPAGATE_STATES and isinstance(self._value, BaseException):
            raise self._value
        return self._value  # type: ignore[no-any-return]

    wait = get

    async def aget(self, timeout: float | None = None, propagate: bool = True, interval: float = 0.1) -> R:
        return self.get(timeout, propagate, interval)

    async def astate(self) -> str:
        return self._state

    def forget(self) -> None:
        return None

    def revoke(self, terminate: bool = False, *, reply: bool = False, timeout: float = 1.0) -> dict[str, Any]:
        return {}  # it already ran, inline


class ResultSet:
    """A set of results handled as one: ``ready()``, ``get()`` of all, in order."""

    def __init__(self, results: list[AsyncResult[Any]], app: Conveyor | None = None, **kwargs: Any) -> None:
        self.results = list(results)
        self.app = app

    def __repr__(self) -> str:
        return f"<ResultSet ({len(self.results)} tasks)>"

    def __iter__(self) -> Iterator[AsyncResult[Any]]:
        return iter(self.results)

    def __len__(self) -> int:
        return len(self.results)

    def __getitem__(self, index: int) -> AsyncResult[Any]:
        return self.results[index]

    def add(self, result: AsyncResult[Any]) -> None:
        if result not in self.results:
            self.results.append(result)

    def remove(self, result: AsyncResult[Any]) -> None:
        self.results.remove(result)

    def discard(self, result: AsyncResult[Any]) -> None:
        if result in self.results:
            self.results.remove(result)

    def clear(self) -> None:
        self.results.clear()

    def _records(self) -> dict[str, ResultRecord]:
        if self.app is None:  # eager results carry their own state
            return {}
        return self.app.backend.get_many([r.id for r in self.results])

    def completed_count(self) -> int:
        if self.app is None:
            return sum(1 for r in self.results if r.successful())
        return sum(1 for rec in self._records().values() if rec.state == states.SUCCESS)

    def ready(self) -> bool:
        if self.app is None:
            return all(r.ready() for r in self.results)
        records = self._records()
        return len(records) == len(self.results) and all(rec.ready for rec in records.values())

    def waiting(self) -> bool:
        return not self.ready()

    def successful(self) -> bool:
        return self.completed_count() == len(self.results)

    def failed(self) -> bool:
        return any(r.failed() for r in self.results)

    def revoke(self, terminate: bool = False) -> None:
        for result in self.results:
            result.revoke(terminate=terminate)

    def get(self, timeout: float | None = None, propagate: bool = True, interval: float = 0.1) -> list[Any]:
        """Wait for every member; one deadline for all of them, not one each."""
        deadline = None if timeout is None else time.monotonic() + timeout
        values = []
        for result in self.results:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            values.append(result.get(timeout=remaining, propagate=propagate, interval=interval))
        return values

    join = get


class GroupResult(ResultSet):
    """The results of a group, in the order the group listed its tasks."""

    def __init__(
        self,
        id: str,
        results: list[AsyncResult[Any]],
        app: Conveyor | None = None,
        parent: Any = None,
    ) -> None:
        super().__init__(results, app=app)
        self.id = id
        self.parent = parent

    def __repr__(self) -> str:
        return f"<GroupResult {self.id} ({len(self.results)} tasks)>"

    @property
    def children(self) -> list[AsyncResult[Any]]:
        return list(self.results)

    def save(self, app: Conveyor | None = None) -> GroupResult:
        """Keep the group's member ids (for result_expires) so another process can
        ``GroupResult.restore(id)``."""
        app = app or self.app or _current()
        from conveyor.serialization import dumps

        ids = [[r.id, r.task_name] for r in self.results]
        app.broker.kv_set(_GROUPS, self.id, dumps(ids), ttl_s=app.conf.result_expires)
        return self

    @classmethod
    def restore(cls, id: str, app: Conveyor | None = None) -> GroupResult | None:
        """A group saved with ``save()``, or None when there is none (or it expired)."""
        app = app or _current()
        from conveyor.serialization import loads

        data = app.broker.kv_get(_GROUPS, id)
        if data is None:
            return None
        return cls(id, [app.AsyncResult(tid, task_name=name) for tid, name in loads(data)], app=app)

    def delete(self, app: Conveyor | None = None) -> None:
        (app or self.app or _current()).broker.kv_delete(_GROUPS, self.id)


_GROUPS = "groups"


def _current() -> Conveyor:
    from conveyor.app import get_current_app

    return get_current_app()
