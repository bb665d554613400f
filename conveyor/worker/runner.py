"""run_one(): one message in, one Outcome out. Decides; never acks.

The runner runs wherever the pool runs a task (a child process, a thread, inline)
and returns plain data, so the consumer can settle the outcome with the broker in
one place: store the result, publish the retry, then ack (DESIGN.md, "Delivery":
nothing is acknowledged that was not done).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from conveyor import signals, states
from conveyor.exceptions import (
    ExceptionInfo,
    NotRegistered,
    Reject,
    Retry,
    Revoked,
    SerializationError,
)
from conveyor.message import Message, decode
from conveyor.retry import backoff_countdown
from conveyor.serialization import dumps, exception_from_dict, exception_to_dict, format_traceback
from conveyor.serializers import accepted, wrap_result
from conveyor.task import Request, pop_request, push_request
from conveyor.worker.limits import TaskTerminated, soft_time_limit

if TYPE_CHECKING:
    from conveyor.app import Conveyor
    from conveyor.task import Task

log = logging.getLogger("conveyor.worker")

# What the consumer does with the message after the outcome is stored.
ACK = "ack"  # done (success, failure, revoked)
RETRY = "retry"  # publish retry_body at retry_at, then ack
DEAD = "dead"  # dead-letter with reason
REQUEUE = "requeue"  # give the same message back (Reject(requeue=True))


@dataclass
class Outcome:
    """Plain, picklable data: it crosses the pipe from a child process to the consumer."""

    action: str
    task_id: str | None = None
    task_name: str | None = None
    state: str | None = None  # None: store nothing
    result: Any = None
    exception: dict[str, Any] | None = None
    traceback: str | None = None
    retries: int = 0
    queue: str | None = None
    args: list[Any] = field(default_factory=list)
    kwargs: dict[str, Any] = field(default_factory=dict)
    started_at: float | None = None
    finished_at: float | None = None
    retry_body: bytes | None = None
    retry_at: float | None = None
    reason: str | None = None
    follow_ups: list[bytes] = field(default_factory=list)  # the next chain step, sent with the ack
    chord: dict[str, Any] | None = None  # the chord this task is a member of
    unique: str | None = None  # the lease a unique task holds until it finishes
    log_level: str = "info"
    log: str = ""

    @property
    def runtime_s(self) -> float:
        if self.started_at is None or self.finished_at is None:
            return 0.0
        return self.finished_at - self.started_at


def label(name: str | None, task_id: str | None) -> str:
    return f"Task {name or '?'}[{task_id or '?'}]"


def undecodable(body: bytes, error: Exception) -> Outcome:
    preview = body[:80].decode("utf-8", "replace")
    return Outcome(
        DEAD,
        reason=f"undecodable message: {error}",
        log_level="error",
        log=f"Undecodable message dead-lettered: {error} (body starts {preview!r})",
    )


def not_registered(message: Message) -> Outcome:
    exc = NotRegistered(f"task {message.task!r} is not registered on this worker")
    return Outcome(
        DEAD,
        task_id=message.id,
        task_name=message.task,
        state=states.FAILURE,
        exception=exception_to_dict(exc),
        queue=message.queue,
        args=message.args,
        kwargs=message.kwargs,
        retries=message.retries,
        finished_at=time.time(),
        reason=f"unknown task {message.task!r}: no task of that name is registered on the worker",
        unique=unique_lease(message),
        log_level="error",
        log=f"Received unregistered task of type {message.task!r}[{message.id}]: dead-lettered. "
        "Is its module imported by the worker (-A / include / autodiscover_tasks)?",
    )


def expired(message: Message, now: float) -> Outcome:
    exc = Revoked(f"task {message.id} expired at {message.expires:.3f} before it ran")
    return Outcome(
        ACK,
        task_id=message.id,
        task_name=message.task,
        state=states.REVOKED,
        exception=exception_to_dict(exc),
        queue=message.queue,
        args=message.args,
        kwargs=message.kwargs,
        retries=message.retries,
        finished_at=now,
        unique=unique_lease(message),
        log_level="warning",
        log=f"{label(message.task, message.id)} expired: not run (revoked)",
    )


def revoked(
    task_id: str,
    task_name: str | None,
    *,
    queue: str | None,
    message: Message | None = None,
    started_at: float | None = None,
    reason: str,
) -> Outcome:
    """A task revoked before it ran, or stopped by ``revoke(terminate=True)``."""
    exc = Revoked(f"task {task_id} was revoked ({reason})")
    return Outcome(
        ACK,
        task_id=task_id,
        task_name=task_name,
        state=states.REVOKED,
        exception=exception_to_dict(exc),
        queue=queue,
        args=message.args if message else [],
        kwargs=message.kwargs if message else {},
        retries=message.retries if message else 0,
        unique=unique_lease(message) if message else None,
        started_at=started_at,
        finished_at=time.time(),
        reason=reason,
        log_level="warning",
        log=f"{label(task_name, task_id)} revoked: {reason}",
    )


def run_one(
    app: Conveyor,
    body: bytes,
    *,
    attempt: int,
    hostname: str,
    use_soft_limit: bool = True,
    message: Message | None = None,
) -> Outcome:
    """Decode, resolve, run and describe one message. Never raises for the task's sake.

    ``message``: ``body`` already decoded (the consumer did, to dispatch it), so an
    inline pool does not decode every message twice."""
    if message is None:
        try:
            message = decode(body, accepted(app.conf.accept_content))
        except SerializationError as exc:
            return undecodable(body, exc)
    task = app.tasks.get(message.task)
    if task is None:
        return not_registered(message)
    now = time.time()
    if message.expires is not None and now > message.expires:
        return expired(message, now)
    return execute(task, message, attempt=attempt, hostname=hostname, use_soft_limit=use_soft_limit)


def execute(
    task: Task[Any, Any], message: Message, *, attempt: int, hostname: str, use_soft_limit: bool
) -> Outcome:
    request = Request.from_message(message, hostname=hostname, attempt=attempt)
    token = push_request(request)
    started = time.time()
    observed = observed_by_hooks(task)
    try:
        if observed:
            report_start(task, message.id, message.args, message.kwargs)
        outcome, raised, value = _run(task, message, request, started, use_soft_limit)
        if observed:
            state = outcome.state or (states.SUCCESS if raised is None else states.FAILURE)
            report_end(task, request, state, raised, value)
        return outcome
    finally:
        pop_request(token)


def _run(
    task: Task[Any, Any], message: Message, request: Request, started: float, use_soft_limit: bool
) -> tuple[Outcome, BaseException | None, Any]:
    """The call itself: the outcome, plus what the hooks report (the exception or the value)."""
    try:
        with soft_time_limit(task.soft_time_limit if use_soft_limit else None):
            try:
                value = call(task, message)
            except Exception as exc:
                retry_if_listed(task, exc)
                raise
    except BaseException as exc:  # noqa: BLE001 - SystemExit in a task must not end the child silently
        return ended(task, message, request, exc, started), exc, None
    return succeeded(task, message, value, started), None, value


def retry_if_listed(task: Task[Any, Any], exc: Exception) -> None:
    """``autoretry_for``: raise Retry for an exception the task lists; otherwise return."""
    if task.autoretry_for and isinstance(exc, task.autoretry_for) and not isinstance(exc, (Retry, Reject)):
        autoretry(task, exc)


def ended(
    task: Task[Any, Any], message: Message, request: Request, exc: BaseException, started: float
) -> Outcome:
    """The outcome of a task that raised ``exc`` (a retry, a reject or a failure).

    KeyboardInterrupt and TaskTerminated are re-raised: the pool, not the task, decides those.
    """
    if isinstance(exc, Retry):
        return _retried(task, message, exc, started)
    if isinstance(exc, Reject):
        return _rejected(message, exc, started)
    if isinstance(exc, (KeyboardInterrupt, TaskTerminated)):
        raise exc
    return _failed(task, message, request, exc, started)


_TASK_SIGNALS = (
    signals.task_prerun,
    signals.task_postrun,
    signals.task_success,
    signals.task_failure,
    signals.task_retry,
)


def observed_by_hooks(task: Task[Any, Any]) -> bool:
    """Does anything watch this call? Neither hooks nor receivers: run it bare (the common case)."""
    return task.has_hooks or any(sig.receivers for sig in _TASK_SIGNALS)


def _guarded(what: str, task: Task[Any, Any], fn: Any, *args: Any, **kwargs: Any) -> None:
    """A hook's error is logged with its traceback; the task's outcome stands."""
    try:
        fn(*args, **kwargs)
    except Exception:
        log.exception("%s: %s raised; the task's outcome is kept", task.name, what)


def report_start(task: Task[Any, Any], task_id: str, args: list[Any], kwargs: dict[str, Any]) -> None:
    """task_prerun, then the task's before_start hook (in the request's context)."""
    signals.task_prerun.send(sender=task, task_id=task_id, task=task, args=args, kwargs=kwargs)
    _guarded("before_start", task, task.before_start, task_id, args, kwargs)


def report_end(
    task: Task[Any, Any],
    request: Request,
    state: str,
    raised: BaseException | None,
    value: Any,
) -> None:
    """The outcome's hook and signal (success, retry or failure), then after_return and task_postrun."""
    task_id, args, kwargs = request.id, request.args, request.kwargs
    einfo = None
    if raised is None:
        _guarded("on_success", task, task.on_success, value, task_id, args, kwargs)
        signals.task_success.send(sender=task, result=value)
    elif isinstance(raised, Retry):
        cause = raised.exc if raised.exc is not None else raised
        einfo = ExceptionInfo(cause)
        _guarded("on_retry", task, task.on_retry, cause, task_id, args, kwargs, einfo)
        signals.task_retry.send(sender=task, request=request, reason=cause, einfo=einfo)
    else:
        einfo = ExceptionInfo(raised)
        _guarded("on_failure", task, task.on_failure, raised, task_id, args, kwargs, einfo)
        signals.task_failure.send(
            sender=task,
            task_id=task_id,
            exception=raised,
            args=args,
            kwargs=kwargs,
            traceback=raised.__traceback__,
            einfo=einfo,
        )
    retval = value if einfo is None else einfo.exception
    _guarded("after_return", task, task.after_return, state, retval, task_id, args, kwargs, einfo)
    signals.task_postrun.send(
        sender=task, task_id=task_id, task=task, args=args, kwargs=kwargs, retval=retval, state=state
    )


def autoretry(task: Task[Any, Any], exc: Exception) -> None:
    """Turn an exception listed in ``autoretry_for`` into a retry, with backoff if asked.

    Raises Retry, or ``exc`` itself once max_retries is exhausted.
    """
    options = dict(task.retry_kwargs)
    retries = task.request.retries
    if task.retry_backoff:
        factor = 1.0 if task.retry_backoff is True else float(task.retry_backoff)
        options["countdown"] = backoff_countdown(
            retries, factor=factor, maximum=task.retry_backoff_max, jitter=task.retry_jitter
        )
    raise task.retry(exc=exc, **options)


def call(task: Task[Any, Any], message: Message) -> Any:
    """Run the task as the message asks: once, once per item (xmap, xstarmap, chunks),
    or as an error callback with the failed task's request and exception rebuilt."""
    args, headers = message.args, message.headers
    how = headers.get("map")
    if how == "star":
        return [task(*item) for item in args[0]]
    if how == "each":
        return [task(item) for item in args[0]]
    if headers.get("errback") and len(args) >= 3 and isinstance(args[0], dict):
        args = [_errback_request(args[0]), exception_from_dict(args[1]), *args[2:]]
    return task(*args, **message.kwargs)


def _errback_request(data: dict[str, Any]) -> Request:
    known = {k: v for k, v in data.items() if k in Request.__dataclass_fields__}
    return Request(**{"id": "", "task": "", **known})


def unique_lease(message: Message) -> str | None:
    unique = message.headers.get("unique")
    return str(unique["name"]) if unique and unique.get("release") else None


def _base(message: Message, started: float) -> dict[str, Any]:
    return {
        "unique": unique_lease(message),
        "chord": message.headers.get("chord"),
        "task_id": message.id,
        "task_name": message.task,
        "queue": message.queue,
        "args": message.args,
        "kwargs": message.kwargs,
        "retries": message.retries,
        "started_at": started,
        "finished_at": time.time(),
    }


def succeeded(task: Task[Any, Any], message: Message, value: Any, started: float) -> Outcome:
    base = _base(message, started)
    runtime = base["finished_at"] - started
    if task.ignore_result:
        return Outcome(
            ACK, state=None, log=f"{label(task.name, message.id)} succeeded in {runtime:.6f}s", **base
        )
    result_serializer = task.app.conf.result_serializer
    try:
        if result_serializer == "json":
            dumps(value)  # refused here, where the task is known, not by the store later
            stored = value
        else:
            stored = wrap_result(result_serializer, value)
    except SerializationError as exc:
        error = SerializationError(
            f"return value of type {type(value).__name__} cannot be stored as "
            f"{'JSON' if result_serializer == 'json' else result_serializer} ({exc}); "
            "return plain data"
        )
        return Outcome(
            ACK,
            state=states.FAILURE,
            exception=exception_to_dict(error),
            traceback=None,
            log_level="error",
            log=f"{label(task.name, message.id)} failed in {runtime:.6f}s: {error}",
            **base,
        )
    follow_ups = []
    if message.headers.get("chain") or message.headers.get("link"):
        from conveyor.canvas import follow_ups_on_success

        follow_ups = _encoded(message, follow_ups_on_success(task.app, message, value))
    return Outcome(
        ACK,
        state=states.SUCCESS,
        result=stored,
        follow_ups=follow_ups,
        log=f"{label(task.name, message.id)} succeeded in {runtime:.6f}s: {_short(value)}",
        **base,
    )


def _encoded(message: Message, follow_ups: list[Message]) -> list[bytes]:
    root = message.root_id or message.id
    return [m.with_changes(parent_id=message.id, root_id=root).encode() for m in follow_ups]


def _failed(
    task: Task[Any, Any], message: Message, request: Request, exc: BaseException, started: float
) -> Outcome:
    base = _base(message, started)
    if message.headers.get("link_error"):
        from conveyor.canvas import follow_ups_on_failure

        base["follow_ups"] = _encoded(
            message, follow_ups_on_failure(task.app, message, exc, request.hostname)
        )
    runtime = base["finished_at"] - started
    text = f"{type(exc).__name__}({str(exc)!r})"
    if request.retries_exhausted:
        reason = f"max retries exceeded ({message.retries}): {type(exc).__name__}: {exc}"
        return Outcome(
            DEAD,
            state=states.FAILURE,
            exception=exception_to_dict(exc),
            traceback=format_traceback(exc),
            reason=reason,
            log_level="error",
            log=f"{label(task.name, message.id)} failed in {runtime:.6f}s after {message.retries} retries: {text}; dead-lettered",
            **base,
        )
    return Outcome(
        ACK,
        state=states.FAILURE,
        exception=exception_to_dict(exc),
        traceback=format_traceback(exc),
        log_level="error",
        log=f"{label(task.name, message.id)} failed in {runtime:.6f}s: {text}",
        **base,
    )


def _retried(task: Task[Any, Any], message: Message, retry: Retry, started: float) -> Outcome:
    base = _base(message, started)
    when = retry.when if retry.when is not None else time.time()
    args = getattr(retry, "args_override", None)
    kwargs = getattr(retry, "kwargs_override", None)
    again = message.with_changes(
        retries=message.retries + 1,
        eta=when,
        args=message.args if args is None else args,
        kwargs=message.kwargs if kwargs is None else kwargs,
    )
    cause = retry.exc if retry.exc is not None else retry
    countdown = max(0.0, when - time.time())
    return Outcome(
        RETRY,
        state=states.RETRY,
        exception=exception_to_dict(cause),
        traceback=format_traceback(cause) if retry.exc is not None else None,
        retry_body=again.encode(),
        retry_at=when,
        log_level="info",
        log=f"{label(task.name, message.id)} retry in {_seconds(countdown)}: {type(cause).__name__}({str(cause)!r})",
        **base,
    )


def _rejected(message: Message, reject: Reject, started: float) -> Outcome:
    base = _base(message, started)
    if reject.requeue:
        return Outcome(
            REQUEUE, state=None, log=f"{label(message.task, message.id)} rejected: requeued", **base
        )
    return Outcome(
        DEAD,
        state=states.FAILURE,
        exception=exception_to_dict(reject),
        reason=f"rejected: {reject.reason}",
        log_level="warning",
        log=f"{label(message.task, message.id)} rejected: {reject.reason}; dead-lettered",
        **base,
    )


def _seconds(value: float) -> str:
    return f"{value:.0f}s" if value >= 10 else f"{value:.1f}s"


def _short(value: Any, limit: int = 120) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
