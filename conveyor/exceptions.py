"""Every error Conveyor raises, under one root so callers can catch it once.

::

    ConveyorError
    ├── ConfigurationError          bad or missing setting; no app to bind to
    ├── BrokerError
    │   └── BrokerConnectionError   the broker cannot be reached
    ├── SerializationError          a message or result that cannot be encoded/decoded
    ├── TaskError
    │   ├── NotRegistered           no task by that name in the registry
    │   ├── TimeoutError            AsyncResult.get() waited longer than asked
    │   ├── MaxRetriesExceededError a task asked to retry past max_retries
    │   ├── Revoked                 the task was revoked or expired before it ran
    │   ├── TimeLimitExceeded       the hard time limit ended the process running it
    │   └── WorkerLostError         the process running the task died
    ├── Retry                       raised by Task.retry(): "run me again later"
    └── Reject                      raised by a task: "do not run me, dead-letter me"

``SoftTimeLimitExceeded`` derives from ``Exception`` only, not from ``ConveyorError``:
it is raised *inside* user code, and a task's own ``except Exception`` must be able
to catch it to clean up, exactly as with Celery.

Each class's docstring is its default message, so ``raise NotRegistered()`` still
says something useful.
"""

from __future__ import annotations

import builtins
from typing import Any


class ConveyorError(Exception):
    """Conveyor failed."""

    def __init__(self, message: str | None = None, *args: object) -> None:
        super().__init__(message or (self.__doc__ or "").strip(), *args)


class ConfigurationError(ConveyorError):
    """Conveyor is misconfigured: check the app's settings and CONVEYOR_* environment variables."""


class BrokerError(ConveyorError):
    """The broker refused the operation."""


class BrokerConnectionError(BrokerError):
    """The broker cannot be reached: check broker_url and that the broker is running."""


class SerializationError(ConveyorError):
    """A value could not be converted to or from the wire format (JSON)."""


class TaskError(ConveyorError):
    """A task could not be run or its result could not be fetched."""


class ChordError(TaskError):
    """A chord's member failed, so its body did not run; the message names the member."""


class NotRegistered(TaskError, KeyError):
    """No task with that name is registered: import the module that defines it (autodiscover_tasks)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class TimeoutError(TaskError, builtins.TimeoutError):
    """The result was not ready in time: wait longer or check that a worker consumes the task's queue."""


class MaxRetriesExceededError(TaskError):
    """The task asked to retry more times than its max_retries allows."""


class Revoked(TaskError):
    """The task was revoked (or had expired) and did not run."""


class TimeLimitExceeded(TaskError):
    """The task ran past its hard time limit and its process was ended."""


class WorkerLostError(TaskError):
    """The process running the task exited before the task finished."""


class SoftTimeLimitExceeded(Exception):  # noqa: N818 - Celery's public name
    """The task ran past its soft time limit; clean up and return or raise."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or "soft time limit exceeded")


class Retry(ConveyorError):  # noqa: N818 - Celery's public name
    """The task asked to be run again later (raise self.retry(...))."""

    def __init__(
        self,
        message: str | None = None,
        exc: BaseException | None = None,
        when: float | None = None,
    ) -> None:
        self.exc = exc
        self.when = when  # epoch seconds at which the retry becomes due
        super().__init__(message or _retry_message(exc, when))

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (str(self), None, self.when))


class Reject(ConveyorError):  # noqa: N818 - Celery's public name
    """The task rejected its message: it is dead-lettered with this reason and not retried."""

    def __init__(self, reason: str | None = None, requeue: bool = False) -> None:
        self.reason = reason or "rejected by the task"
        self.requeue = requeue
        super().__init__(self.reason)


def _retry_message(exc: BaseException | None, when: float | None) -> str:
    cause = f": {type(exc).__name__}: {exc}" if exc is not None else ""
    return f"retry requested{cause}"


__all__ = [
    "BrokerConnectionError",
    "BrokerError",
    "ChordError",
    "ConfigurationError",
    "ConveyorError",
    "MaxRetriesExceededError",
    "NotRegistered",
    "Reject",
    "Retry",
    "Revoked",
    "SerializationError",
    "SoftTimeLimitExceeded",
    "TaskError",
    "TimeLimitExceeded",
    "TimeoutError",
    "WorkerLostError",
]


class ExceptionInfo:
    """An exception with its traceback, as hooks and signals receive it (Celery's ``einfo``).

    ``type``, ``exception``, ``tb`` (the traceback object) and ``traceback`` (the text).
    """

    def __init__(self, exception: BaseException) -> None:
        import traceback as tb_module

        self.exception = exception
        self.type = type(exception)
        self.tb = exception.__traceback__
        self.traceback = "".join(tb_module.format_exception(self.type, exception, self.tb))

    def __str__(self) -> str:
        return self.traceback

    def __repr__(self) -> str:
        return f"<ExceptionInfo: {self.exception!r}>"
