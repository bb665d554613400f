"""Running a task inline, for tests and ``task_always_eager``.

Retries run inline too (without their countdown), so a test sees the same number of
attempts a worker would make, and ``task_eager_propagates`` re-raises the final error.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

from conveyor import states
from conveyor.exceptions import Retry
from conveyor.result import EagerResult
from conveyor.serialization import check_arguments, format_traceback
from conveyor.task import Request, pop_request, push_request

if TYPE_CHECKING:
    from conveyor.task import Task


def run_to_completion(coroutine: Coroutine[Any, Any, Any]) -> Any:
    """Await an ``async def`` task's coroutine to its end, as a worker would, and return its value.

    Eager calls also come from async code (a test, an async view sending with
    ``task_always_eager``), where this thread's loop is running and cannot be
    re-entered: then the coroutine runs on a loop of its own in another thread.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="eager-coroutine") as executor:
        # The request (self.request) lives in a context variable: carry it over.
        return executor.submit(contextvars.copy_context().run, asyncio.run, coroutine).result()


def run_eagerly(
    task: Task[Any, Any], args: list[Any], kwargs: dict[str, Any], *, task_id: str
) -> EagerResult[Any]:
    # Same check as a real send, so eager tests catch arguments a worker could never receive.
    check_arguments(args, kwargs, task.name)
    from conveyor.worker.runner import observed_by_hooks, report_end, report_start

    observed = observed_by_hooks(task)
    retries = 0
    while True:
        request = Request(
            id=task_id, task=task.name, args=args, kwargs=kwargs, retries=retries, is_eager=True
        )
        token = push_request(request)
        try:
            if observed:
                report_start(task, task_id, args, kwargs)
            try:
                try:
                    value = task(*args, **kwargs)
                    if task.is_coroutine:
                        value = run_to_completion(value)
                except Exception as exc:
                    if (
                        task.autoretry_for
                        and isinstance(exc, task.autoretry_for)
                        and not isinstance(exc, Retry)
                    ):
                        from conveyor.worker.runner import autoretry

                        autoretry(task, exc)  # raises Retry, or exc when exhausted
                    raise
            except Retry as retry:
                if observed:
                    report_end(task, request, states.RETRY, retry, None)
                retries += 1
                args = getattr(retry, "args_override", None) or args
                kwargs = getattr(retry, "kwargs_override", None) or kwargs
                continue
            except Exception as exc:
                if observed:
                    report_end(task, request, states.FAILURE, exc, None)
                if task.app.conf.task_eager_propagates:
                    raise
                return EagerResult(
                    task_id,
                    exc,
                    states.FAILURE,
                    traceback=format_traceback(exc),
                    retries=retries,
                    task_name=task.name,
                )
            if observed:
                report_end(task, request, states.SUCCESS, None, value)
        finally:
            pop_request(token)
        return EagerResult(task_id, value, states.SUCCESS, retries=retries, task_name=task.name)
