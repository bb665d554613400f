"""Tasks: the decorated function plus everything needed to send it and to run it.

``Task`` is generic over the function's parameters and return type, so a type
checker flags ``add.delay(1, "x")`` when ``add`` takes two ints.
"""

from __future__ import annotations

import contextvars
import datetime as dt
import functools
import inspect
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar

from conveyor import states
from conveyor.exceptions import MaxRetriesExceededError, Retry
from conveyor.message import MAX_PRIORITY, MIN_PRIORITY, Message, new_id
from conveyor.retry import parse_rate

if TYPE_CHECKING:
    from conveyor.app import Conveyor
    from conveyor.canvas import Signature
    from conveyor.result import AsyncResult

P = ParamSpec("P")
R = TypeVar("R")


@dataclass
class Request:
    """What a running task knows about its own invocation (``self.request``)."""

    id: str
    task: str
    args: list[Any] = field(default_factory=list)
    kwargs: dict[str, Any] = field(default_factory=dict)
    retries: int = 0
    queue: str | None = None
    priority: int = 0
    eta: float | None = None
    expires: float | None = None
    parent_id: str | None = None
    root_id: str | None = None
    hostname: str | None = None
    delivery_info: dict[str, Any] = field(default_factory=dict)
    headers: dict[str, Any] = field(default_factory=dict)
    is_eager: bool = False
    # Set by Task.retry() when max_retries is exhausted, so the worker can tell an
    # exhausted task (dead-lettered) from a plain failure.
    retries_exhausted: bool = False
    # Tasks this run sent (Celery's name), stored as its children (conveyor/relations.py),
    # and the task's relations record as stored before this run's first send.
    children: list[str] = field(default_factory=list)
    stored_relations: dict[str, Any] | None = None

    @classmethod
    def from_message(
        cls, message: Message, *, hostname: str | None, attempt: int = 1, eager: bool = False
    ) -> Request:
        return cls(
            id=message.id,
            task=message.task,
            args=message.args,
            kwargs=message.kwargs,
            retries=message.retries,
            queue=message.queue,
            priority=message.priority,
            eta=message.eta,
            expires=message.expires,
            parent_id=message.parent_id,
            root_id=message.root_id,
            hostname=hostname,
            delivery_info={"queue": message.queue, "priority": message.priority, "attempt": attempt},
            headers=message.headers,
            is_eager=eager,
        )


_current_request: contextvars.ContextVar[Request | None] = contextvars.ContextVar(
    "conveyor_request", default=None
)


def current_request() -> Request | None:
    return _current_request.get()


def push_request(request: Request) -> contextvars.Token[Request | None]:
    return _current_request.set(request)


def pop_request(token: contextvars.Token[Request | None]) -> None:
    _current_request.reset(token)


_UNSET: Any = object()
HOOKS = ("before_start", "on_success", "on_failure", "on_retry", "after_return")
# Every option @app.task accepts (besides name and base): Task's class attributes.
TASK_OPTIONS = frozenset(
    {
        "bind", "queue", "priority", "max_retries", "default_retry_delay", "autoretry_for",
        "retry_kwargs", "retry_backoff", "retry_backoff_max", "retry_jitter", "acks_late",
        "time_limit", "soft_time_limit", "rate_limit", "expires", "ignore_result", "track_started",
        "serializer",
        "unique_for", "reject_on_worker_lost", "acks_on_failure_or_timeout",
    }
)  # fmt: skip


class Task(Generic[P, R]):
    """A registered task. Made by ``@app.task`` or ``@shared_task``; not instantiated directly.

    Subclass it for a base class shared by several tasks, as in Celery: class
    attributes are the defaults of the options (``autoretry_for``, ``max_retries``,
    ``acks_late``, ``rate_limit``, ``queue``...), an option given to the decorator
    wins, and the hooks below run in the worker around each call::

        class Tracked(conveyor.Task):
            autoretry_for = (ConnectionError,)
            max_retries = 5

            def on_failure(self, exc, task_id, args, kwargs, einfo):
                alert(task_id, exc)

        @app.task(base=Tracked)
        def sync(feed): ...
    """

    # Plain options: class attributes, so a subclass's value is the default.
    queue: str | None = None
    priority: int | None = None
    autoretry_for: tuple[type[BaseException], ...] = ()
    retry_kwargs: dict[str, Any] = {}  # noqa: RUF012 - copied per task in __init__
    retry_backoff: bool | float = False
    retry_backoff_max: float = 600.0
    retry_jitter: bool = True
    expires: float | dt.datetime | dt.timedelta | None = None
    serializer: str | None = None  # None: the app's task_serializer
    bind: bool = False
    # Seconds a send with the same arguments (or idempotency_key) returns the first
    # task instead of sending another; True: until that task finishes.
    unique_for: float | bool | None = None
    # acks_late outcomes (conveyor/worker/settle.py); None: the task_* setting decides.
    reject_on_worker_lost: bool | None = None
    acks_on_failure_or_timeout: bool | None = None
    # Options resolved against the app's settings when unset (the properties below);
    # a subclass may set the public name as a plain class attribute instead.
    _max_retries: int | None = _UNSET
    _default_retry_delay: float | None = None
    _acks_late: bool | None = None
    _time_limit: float | None = None
    _soft_time_limit: float | None = None
    _rate_limit: str | float | None = None
    _ignore_result: bool | None = None
    _track_started: bool | None = None

    def __init__(
        self,
        fn: Callable[..., R],
        *,
        app: Conveyor | None,
        name: str,
        **options: Any,
    ) -> None:
        unknown = set(options) - TASK_OPTIONS
        if unknown:
            raise TypeError(f"task {name!r}: unknown option(s) {', '.join(sorted(unknown))}")
        self.fn = fn
        self._app = app
        self.name = name
        self.set_options(options)
        if self.priority is not None and not MIN_PRIORITY <= self.priority <= MAX_PRIORITY:
            raise ValueError(f"task {name!r}: priority must be 0..9, got {self.priority}")
        self.autoretry_for = tuple(self.autoretry_for)
        self.retry_kwargs = dict(self.retry_kwargs or {})
        declared = getattr(type(self), "rate_limit", None)
        # Fail at import time on "10/minutes", not in the worker.
        parse_rate(self._rate_limit if isinstance(declared, property) else declared)
        cls = type(self)
        # Looked up once: the worker skips the hook calls for tasks that define none.
        self.has_hooks = cls is not Task and any(getattr(cls, h) is not getattr(Task, h) for h in HOOKS)
        self.__doc__ = fn.__doc__
        self.__name__ = getattr(fn, "__name__", name)
        self.__module__ = getattr(fn, "__module__", __name__)
        self.__wrapped__ = fn
        # ``async def``: the worker awaits it on its event loop; apply() runs it to completion.
        self.is_coroutine = inspect.iscoroutinefunction(fn)

    def set_options(self, options: Mapping[str, Any]) -> None:
        """Set options as the decorator does (``task_annotations`` use it too)."""
        for option, value in options.items():
            if isinstance(getattr(type(self), option, None), property):
                setattr(self, f"_{option}", value)
            else:
                setattr(self, option, value)

    # -- hooks: Celery's signatures; run in the worker, where the task ran -----------
    def before_start(self, task_id: str, args: Sequence[Any], kwargs: Mapping[str, Any]) -> None:
        """Before the task's code runs."""

    def on_success(self, retval: Any, task_id: str, args: Sequence[Any], kwargs: Mapping[str, Any]) -> None:
        """After the task returned ``retval``."""

    def on_failure(
        self, exc: BaseException, task_id: str, args: Sequence[Any], kwargs: Mapping[str, Any], einfo: Any
    ) -> None:
        """After the task raised ``exc`` (for good: no retry follows)."""

    def on_retry(
        self, exc: BaseException, task_id: str, args: Sequence[Any], kwargs: Mapping[str, Any], einfo: Any
    ) -> None:
        """After the task asked to be retried."""

    def after_return(
        self,
        status: str,
        retval: Any,
        task_id: str,
        args: Sequence[Any],
        kwargs: Mapping[str, Any],
        einfo: Any,
    ) -> None:
        """After any outcome; ``retval`` is the return value or the exception."""

    # -- options resolved against the app's settings at use time -------------------
    @property
    def app(self) -> Conveyor:
        if self._app is not None:
            return self._app
        from conveyor.app import get_current_app

        return get_current_app()

    @property
    def max_retries(self) -> int | None:
        return self.app.conf.task_default_max_retries if self._max_retries is _UNSET else self._max_retries

    @property
    def default_retry_delay(self) -> float:
        d = self._default_retry_delay
        return float(self.app.conf.task_default_retry_delay if d is None else d)

    @property
    def acks_late(self) -> bool:
        return bool(self.app.conf.task_acks_late if self._acks_late is None else self._acks_late)

    @property
    def time_limit(self) -> float | None:
        return self.app.conf.task_time_limit if self._time_limit is None else self._time_limit

    @property
    def soft_time_limit(self) -> float | None:
        return self.app.conf.task_soft_time_limit if self._soft_time_limit is None else self._soft_time_limit

    @property
    def rate_limit(self) -> str | float | None:
        return self.app.conf.task_default_rate_limit if self._rate_limit is None else self._rate_limit

    @property
    def ignore_result(self) -> bool:
        return bool(self.app.conf.task_ignore_result if self._ignore_result is None else self._ignore_result)

    @property
    def track_started(self) -> bool:
        return bool(self.app.conf.task_track_started if self._track_started is None else self._track_started)

    @property
    def request(self) -> Request:
        req = _current_request.get()
        if req is None or req.task != self.name:
            raise RuntimeError(f"{self.name}: self.request is only available while the task runs")
        return req

    # -- calling -------------------------------------------------------------------
    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        if self.bind:
            return self.fn(self, *args, **kwargs)
        return self.fn(*args, **kwargs)

    def run(self, *args: Any, **kwargs: Any) -> R:
        return self(*args, **kwargs)

    def delay(self, *args: P.args, **kwargs: P.kwargs) -> AsyncResult[R]:
        """Send the task with these arguments; returns at once with a result handle."""
        return self.apply_async(args, kwargs)

    def apply_async(
        self,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        *,
        countdown: float | None = None,
        eta: dt.datetime | float | None = None,
        expires: float | dt.datetime | dt.timedelta | None = None,
        queue: str | None = None,
        priority: int | None = None,
        task_id: str | None = None,
        headers: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> AsyncResult[R]:
        """Send the task with options kept apart from its arguments (Celery's signature).

        Raises:
            TypeError: an argument cannot be sent as JSON (the message names it).
            ValueError: an option is out of range (priority, countdown with eta).
        """
        app = self.app
        if app.conf.task_always_eager:
            return self.apply(args, kwargs, task_id=task_id)
        message = self.build_message(
            args,
            kwargs,
            countdown=countdown,
            eta=eta,
            expires=expires,
            queue=queue,
            priority=priority,
            task_id=task_id,
            headers=headers,
            **options,
        )
        return app.AsyncResult(app.send(message), task_name=self.name)

    async def adelay(self, *args: P.args, **kwargs: P.kwargs) -> AsyncResult[R]:
        """``delay()`` from a coroutine, on the event loop's own broker client (conveyor/aio)."""
        return await self.aapply_async(args, kwargs)

    async def aapply_async(
        self,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> AsyncResult[R]:
        """``apply_async()`` from a coroutine: the same options, checks and signals,
        sent without blocking the loop (with ``task_always_eager``, run here and now)."""
        from conveyor.aio.client import apply_async

        return await apply_async(self, args, kwargs, options)

    def build_message(
        self,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> Message:
        return self.app.build_message(
            self.name,
            args,
            kwargs,
            default_queue=self.queue,
            default_priority=self.priority,
            default_expires=self.expires,
            default_serializer=self.serializer,
            default_unique_for=self.unique_for,
            **options,
        )

    def delay_on_commit(self, *args: P.args, **kwargs: P.kwargs) -> None:
        """``delay()`` once the current Django transaction commits; never if it rolls back.

        Celery 5.4's name. Outside a transaction it sends at once, and where Django is
        not in use it is ``delay()``. Returns None: the message does not exist until
        the commit. Arguments that cannot travel raise TypeError here, not at commit.
        """
        self.apply_async_on_commit(args, kwargs)

    def apply_async_on_commit(
        self,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> None:
        """``apply_async()`` once the current Django transaction commits (see ``delay_on_commit``)."""
        from conveyor.contrib.django.transaction import on_commit
        from conveyor.serialization import check_arguments

        # Checked now: at commit time the caller's transaction is already over.
        check_arguments(list(args or ()), dict(kwargs or {}), self.name)
        on_commit(functools.partial(self.apply_async, args, kwargs, **options))

    def map(
        self, arguments: Iterable[Sequence[Any] | Mapping[str, Any]], **options: Any
    ) -> list[AsyncResult[R]]:
        """Send one task per item in a single broker round trip.

        Each item is a tuple of positional arguments or a dict of keyword arguments.
        """
        app = self.app
        messages = []
        for item in arguments:
            if isinstance(item, Mapping):
                messages.append(self.build_message((), item, **options))
            else:
                messages.append(self.build_message(tuple(item), None, **options))
        if app.conf.task_always_eager:
            return [self.apply(m.args, m.kwargs, task_id=m.id) for m in messages]
        app.publish_many(messages)
        if current_request() is not None:
            from conveyor.relations import record_sent

            record_sent(app, messages)
        return [app.AsyncResult(m.id, task_name=self.name) for m in messages]

    def apply(
        self,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        *,
        task_id: str | None = None,
        **options: Any,
    ) -> AsyncResult[R]:
        """Run the task here and now (eager mode), with retries run inline too."""
        from conveyor.eager import run_eagerly

        return run_eagerly(self, list(args or ()), dict(kwargs or {}), task_id=task_id or new_id())

    def s(self, *args: Any, **kwargs: Any) -> Signature:
        """A signature: this task with partial arguments, for chain/group/chord."""
        from conveyor.canvas import Signature

        return Signature(self.name, args, kwargs, app=self._app)

    def si(self, *args: Any, **kwargs: Any) -> Signature:
        """An immutable signature: a chain does not prepend the previous result."""
        from conveyor.canvas import Signature

        return Signature(self.name, args, kwargs, app=self._app, immutable=True)

    signature = s

    def chunks(self, it: Iterable[Sequence[Any]], n: int) -> Any:
        """Celery's ``task.chunks(items, n)``: a group of tasks, each calling this task on
        ``n`` items (``task(*item)``) and returning the list of results."""
        from conveyor.canvas import chunks

        return chunks(self.s(), it, n)

    def starmap(self, it: Iterable[Sequence[Any]]) -> Signature:
        """Celery's ``task.starmap(items)``: one task calling ``task(*item)`` per item.
        (``Task.map`` keeps its Conveyor meaning, one message per item in one round trip;
        Celery's one-task form is ``conveyor.canvas.xmap(task.s(), items)``.)"""
        from conveyor.canvas import xstarmap

        return xstarmap(self.s(), it)

    # -- progress ------------------------------------------------------------------------
    def update_state(
        self,
        task_id: str | None = None,
        state: str | None = None,
        meta: Any = None,
        **kwargs: Any,
    ) -> None:
        """Store a state now, while the task runs: ``self.update_state(state="PROGRESS",
        meta={"current": 3, "total": 10})``. Custom state names are allowed.

        A client polling ``AsyncResult.state``/``.info`` sees it at once, on every
        backend; the task's final state replaces it. With task events on, the event log
        records it too (``task-progress``), for the dashboard.
        """
        request = current_request()
        task_id = task_id or (request.id if request is not None else None)
        if task_id is None:
            raise RuntimeError(f"{self.name}: update_state() needs task_id outside a running task")
        state = state or states.STARTED
        if state in states.READY_STATES:
            raise ValueError(f"{self.name}: update_state() cannot set {state}: return or raise instead")
        from conveyor.backends.base import ResultRecord

        record = ResultRecord(
            task_id,
            state,
            task=self.name,
            result=meta,
            retries=request.retries if request is not None else 0,
            worker=request.hostname if request is not None else None,
            queue=request.queue if request is not None else None,
            args=list(request.args) if request is not None else [],
            kwargs=dict(request.kwargs) if request is not None else {},
        )
        app = self.app
        app.backend.store([record])
        if app.conf.worker_send_task_events and request is not None and not request.is_eager:
            from conveyor.monitor.events import progress_event, write_now

            write_now(app, progress_event(task_id, self.name, state, meta, request.hostname))

    # -- retrying --------------------------------------------------------------------
    def retry(
        self,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        exc: BaseException | None = None,
        throw: bool = True,
        eta: dt.datetime | float | None = None,
        countdown: float | None = None,
        max_retries: int | None = _UNSET,
        **options: Any,
    ) -> Retry:
        """Ask for this task to run again later; use as ``raise self.retry(exc=exc)``.

        Past ``max_retries`` the original ``exc`` is re-raised (or
        MaxRetriesExceededError when there is none) and the task fails for good: the
        worker records FAILURE and moves the message to the dead-letter queue.
        """
        request = self.request
        limit = self.max_retries if max_retries is _UNSET else max_retries
        if limit is not None and request.retries >= limit:
            request.retries_exhausted = True
            if exc is not None:
                raise exc
            raise MaxRetriesExceededError(
                f"{self.name}[{request.id}]: retried {request.retries} times, max_retries is {limit}"
            )
        when = _resolve_eta(eta, countdown if countdown is not None else self.default_retry_delay)
        retry = Retry(exc=exc, when=when)
        retry.args_override = None if args is None else list(args)  # type: ignore[attr-defined]
        retry.kwargs_override = None if kwargs is None else dict(kwargs)  # type: ignore[attr-defined]
        if not throw:
            return retry
        raise retry

    def __repr__(self) -> str:
        return f"<Task {self.name}>"

    # Last in the class body: from here on, ``AsyncResult`` in this class's scope is this method.
    def AsyncResult(self, task_id: str) -> AsyncResult[R]:  # noqa: N802 - Celery's name
        """The result handle of one of this task's runs: ``send_email.AsyncResult(task_id)``."""
        return self.app.AsyncResult(task_id, task_name=self.name)


def _resolve_eta(eta: dt.datetime | float | None, countdown: float | None) -> float:
    if eta is not None:
        return to_timestamp(eta)
    return time.time() + float(countdown or 0.0)


def to_timestamp(value: dt.datetime | float | int) -> float:
    """Epoch seconds from a datetime (naive = UTC, as Celery assumes) or a number."""
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.timezone.utc)
        return value.timestamp()
    if isinstance(value, (int, float)):
        return float(value)
    raise TypeError(f"expected a datetime or epoch seconds, got {type(value).__name__}")


def expires_at(value: float | dt.datetime | dt.timedelta | None, now: float) -> float | None:
    """``expires`` as given to apply_async: seconds from now, a timedelta, or a datetime."""
    if value is None:
        return None
    if isinstance(value, dt.timedelta):
        return now + value.total_seconds()
    if isinstance(value, dt.datetime):
        return to_timestamp(value)
    if isinstance(value, (int, float)):
        return now + float(value)
    raise TypeError(f"expires must be seconds, a timedelta or a datetime, got {type(value).__name__}")
