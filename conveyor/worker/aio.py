"""Coroutine tasks: one event loop per process, in a thread beside the pool's sync slots.

An ``async def`` task is awaited on this loop, up to ``worker_async_concurrency`` of
them at once, while the pool runs sync tasks as before: every prefork child and a
solo or threads worker run both kinds; the asyncio pool (``AsyncioPool``) runs only
coroutines. The loop is created by the process that uses it, after fork: a loop
inherited from a parent shares its selector and wakeup fds with that parent.

Limits and revokes end only the coroutine concerned, never the process, since the
process also runs the others:

- the soft limit cancels it; its ``finally`` and ``async with`` blocks run and it is
  recorded as failed with SoftTimeLimitExceeded (``autoretry_for`` may list it);
- the hard limit cancels it too, and records TimeLimitExceeded at the deadline
  whether or not it ends (one that swallows the cancellation is left to itself);
- ``revoke(terminate=True)`` cancels it and records REVOKED.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from conveyor import states
from conveyor.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded
from conveyor.message import Message, decode
from conveyor.serialization import exception_to_dict
from conveyor.serializers import accepted
from conveyor.task import Request, pop_request, push_request
from conveyor.worker.limits import TaskTerminated
from conveyor.worker.runner import (
    ACK,
    DEAD,
    Outcome,
    call,
    ended,
    label,
    not_registered,
    observed_by_hooks,
    report_end,
    report_start,
    retry_if_listed,
    succeeded,
    undecodable,
)

if TYPE_CHECKING:
    from conveyor.app import Conveyor
    from conveyor.task import Task
    from conveyor.worker.pools import Completion, Job

log = logging.getLogger("conveyor.worker")

SOFT = "soft"  # why a coroutine was cancelled: its soft time limit
HARD = "hard"  # its hard time limit
TERMINATE = "terminate"  # revoke(terminate=True)


async def execute_coroutine(
    task: Task[Any, Any],
    message: Message,
    *,
    attempt: int,
    hostname: str,
    why_cancelled: Callable[[], str | None] = lambda: None,
) -> Outcome:
    """The coroutine twin of ``runner.execute``: same hooks, signals and outcomes.

    ``why_cancelled`` tells a cancellation the worker asked for (a limit, a
    terminate) from one the task's own code let through.
    """
    request = Request.from_message(message, hostname=hostname, attempt=attempt)
    token = push_request(request)  # a context variable: each asyncio task sees its own
    started = time.time()
    observed = observed_by_hooks(task)
    try:
        if observed:
            report_start(task, message.id, message.args, message.kwargs)
        raised: BaseException | None = None
        value: Any = None
        try:
            try:
                value = await _awaited(task, message, why_cancelled)
            except Exception as exc:
                retry_if_listed(task, exc)
                raise
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # noqa: BLE001 - SystemExit in a task is its failure, as for sync ones
            raised = exc
            outcome = ended(task, message, request, exc, started)  # re-raises TaskTerminated
        else:
            outcome = succeeded(task, message, value, started)
        if observed:
            state = outcome.state or (states.SUCCESS if raised is None else states.FAILURE)
            report_end(task, request, state, raised, value)
        return outcome
    finally:
        pop_request(token)


async def _awaited(task: Task[Any, Any], message: Message, why_cancelled: Callable[[], str | None]) -> Any:
    """Await the task's coroutine (one per item for xmap/xstarmap); a cancellation
    the worker asked for comes out as what it stands for."""
    called = call(task, message)
    pending: list[Coroutine[Any, Any, Any]] = list(called) if isinstance(called, list) else [called]
    try:
        values = []
        while pending:
            values.append(await pending.pop(0))
        return values if isinstance(called, list) else values[0]
    except asyncio.CancelledError:
        why = why_cancelled()
        if why is None or why == HARD:
            raise
        uncancel = getattr(asyncio.current_task(), "uncancel", None)  # Python 3.11+
        if uncancel is not None:
            uncancel()  # handled here: the task's later awaits are not cancelled
        if why == TERMINATE:
            raise TaskTerminated() from None
        limit = task.soft_time_limit
        raise SoftTimeLimitExceeded(f"soft time limit ({limit:g}s) exceeded" if limit else None) from None
    finally:
        for coroutine in pending:
            coroutine.close()  # items never started: no "never awaited" warnings


@dataclass(eq=False)
class _Flight:
    job: Job
    task: asyncio.Task[Outcome] | None = None
    why: str | None = None  # set when the worker cancels it
    finished: bool = False
    timers: list[asyncio.TimerHandle] = field(default_factory=list)  # its limits


class CoroutineRunner:
    """The event loop of one process and the coroutine tasks in flight on it.

    Every method but the coroutines' own runs in the pool's thread; the loop's
    thread is reached only through ``call_soon_threadsafe``. Each finished task is
    handed to ``on_done`` (from the loop's thread), and still counts as active, holding
    its slot, until the pool has collected it (``release``): a warm shutdown that saw
    nothing active before its outcome was collected would never store that outcome.
    """

    def __init__(
        self,
        app: Conveyor,
        *,
        hostname: str,
        concurrency: int,
        on_done: Callable[[Completion], None],
    ) -> None:
        self.app = app
        self.hostname = hostname
        self.concurrency = concurrency
        self._on_done = on_done
        self._content_types = accepted(app.conf.accept_content)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._flights: dict[int, _Flight] = {}  # id(job) -> flight

    def start(self) -> None:
        """Start the loop now rather than with the first coroutine."""
        self._ensure_loop()

    def _ensure_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            loop = asyncio.new_event_loop()
            ready = threading.Event()

            def serve() -> None:
                asyncio.set_event_loop(loop)
                loop.call_soon(ready.set)
                loop.run_forever()

            self._thread = threading.Thread(target=serve, name="event-loop", daemon=True)
            self._thread.start()
            ready.wait()
            self._loop = loop
        return self._loop

    def idle_slots(self) -> int:
        with self._lock:
            return self.concurrency - len(self._flights)

    def active(self) -> list[Job]:
        with self._lock:
            return [f.job for f in self._flights.values()]

    def release(self, completions: Sequence[Completion]) -> None:
        """The pool collected these (the consumer settles them now): their slots are free."""
        with self._lock:
            for completion in completions:
                self._flights.pop(id(completion.job), None)

    def submit(self, job: Job) -> None:
        job.started_at = time.monotonic()
        flight = _Flight(job)
        with self._lock:
            self._flights[id(job)] = flight
        self._ensure_loop().call_soon_threadsafe(self._begin, flight)

    def terminate(self, task_id: str) -> bool:
        with self._lock:
            flight = next(
                (f for f in self._flights.values() if f.job.task_id == task_id and not f.finished), None
            )
        if flight is None or self._loop is None:
            return False
        self._loop.call_soon_threadsafe(self._cancel, flight, TERMINATE)
        return True

    # -- in the loop's thread -------------------------------------------------------
    def _begin(self, flight: _Flight) -> None:
        loop = asyncio.get_running_loop()
        flight.task = loop.create_task(self._run(flight))
        job = flight.job
        if job.soft_time_limit and (not job.time_limit or job.soft_time_limit < job.time_limit):
            flight.timers.append(loop.call_later(job.soft_time_limit, self._cancel, flight, SOFT))
        if job.time_limit:
            flight.timers.append(loop.call_later(job.time_limit, self._hard_limit, flight))

    def _cancel(self, flight: _Flight, why: str) -> None:
        if flight.task is not None and not flight.task.done() and flight.why is None:
            flight.why = why
            flight.task.cancel()

    def _hard_limit(self, flight: _Flight) -> None:
        if flight.finished:
            return
        self._cancel(flight, HARD)
        limit = flight.job.time_limit or 0.0
        exc = TimeLimitExceeded(f"hard time limit ({limit:g}s) exceeded")
        outcome = Outcome(
            ACK,
            task_id=flight.job.task_id,
            task_name=flight.job.task_name,
            state=states.FAILURE,
            exception=exception_to_dict(exc),
            queue=flight.job.delivery.queue,
            started_at=time.time() - limit,
            finished_at=time.time(),
            log_level="error",
            log=f"Hard time limit ({limit:g}s) exceeded for "
            f"{label(flight.job.task_name, flight.job.task_id)}: coroutine cancelled",
        )
        self._finish(flight, outcome)

    async def _run(self, flight: _Flight) -> Outcome:
        job = flight.job
        try:
            outcome = await self._outcome(flight)
        except TaskTerminated:
            from conveyor.worker.pools import terminated_outcome

            outcome = terminated_outcome(job, self.app)
        except asyncio.CancelledError:
            if flight.why != HARD:  # the loop is closing under it (cold shutdown)
                raise
            return Outcome(ACK)  # recorded at the deadline already
        except BaseException as exc:  # noqa: BLE001 - a fault of the worker's: reported, the slot freed
            log.exception("%s: the worker failed to run it", label(job.task_name, job.task_id))
            from conveyor.worker.pools import LOST

            outcome = Outcome(LOST, task_id=job.task_id, task_name=job.task_name, reason=repr(exc))
        self._finish(flight, outcome)
        return outcome

    async def _outcome(self, flight: _Flight) -> Outcome:
        job = flight.job
        message = job.message
        if message is None:
            try:
                message = decode(job.delivery.body, self._content_types)
            except Exception as exc:  # noqa: BLE001 - SerializationError and what a codec raises
                return undecodable(job.delivery.body, exc)
        task = self.app.tasks.get(message.task)
        if task is None:
            return not_registered(message)
        return await execute_coroutine(
            task,
            message,
            attempt=job.delivery.attempt,
            hostname=self.hostname,
            why_cancelled=lambda: flight.why,
        )

    def _finish(self, flight: _Flight, outcome: Outcome) -> None:
        if flight.finished:
            return
        flight.finished = True
        for timer in flight.timers:
            timer.cancel()  # or the loop would keep the job (its body too) until the limit
        from conveyor.worker.pools import Completion

        self._on_done(Completion(flight.job, outcome))

    # -- stopping ---------------------------------------------------------------------
    def stop(self, timeout_s: float) -> None:
        """Wait up to ``timeout_s`` for the coroutines in flight, then close the loop."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self._lock:
                if all(f.finished for f in self._flights.values()):
                    break
            time.sleep(0.01)
        self.kill()

    def kill(self) -> None:
        """Stop the loop now; coroutines in flight are abandoned (the consumer settles them)."""
        loop, self._loop = self._loop, None
        if loop is None:
            return
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(2.0)
            if not self._thread.is_alive():
                with contextlib.suppress(RuntimeError):
                    loop.close()  # its selector and self-pipe fds, which a fork would inherit


class AsyncioPool:
    """``--pool asyncio``: coroutine tasks only, ``worker_async_concurrency`` at once, on
    one event loop in the worker process. A sync task that reaches it is dead-lettered
    (``unsupported_sync``): it would block every coroutine on the loop."""

    name = "asyncio"
    concurrency = 0
    inline = False

    def __init__(self, app: Conveyor, *, hostname: str) -> None:
        from conveyor.worker.pools import async_concurrency

        self._done: queue.SimpleQueue[Completion | None] = queue.SimpleQueue()
        self.coroutine_concurrency = async_concurrency(app)
        self.coroutines = CoroutineRunner(
            app, hostname=hostname, concurrency=self.coroutine_concurrency, on_done=self._done.put
        )

    def start(self) -> None:
        self.coroutines.start()

    def idle_slots(self) -> int:
        return 0

    def idle_coroutine_slots(self) -> int:
        return self.coroutines.idle_slots()

    def submit(self, job: Job) -> None:
        self.coroutines.submit(job)

    def poll(self, timeout_s: float) -> list[Completion]:
        from conveyor.worker.pools import collect

        done = collect(self._done, timeout_s)
        self.coroutines.release(done)
        return done

    def wakeup(self) -> None:
        self._done.put(None)

    def active(self) -> list[Job]:
        return self.coroutines.active()

    def stop(self, timeout_s: float) -> None:
        self.coroutines.stop(timeout_s)

    def kill(self) -> None:
        self.coroutines.kill()

    def terminate(self, task_id: str) -> bool:
        return self.coroutines.terminate(task_id)


def unsupported_sync(message: Message) -> Outcome:
    """A sync task that reached the asyncio pool, which runs only coroutines: dead-lettered
    with the reason, to be replayed where a pool for sync tasks consumes it."""
    reason = (
        f"task {message.task!r} is not a coroutine (async def) and the asyncio pool runs only coroutines: "
        "route it to a queue a prefork, threads or solo worker consumes"
    )
    return Outcome(
        DEAD,
        task_id=message.id,
        task_name=message.task,
        state=states.FAILURE,
        exception=exception_to_dict(TypeError(reason)),
        queue=message.queue,
        args=message.args,
        kwargs=message.kwargs,
        retries=message.retries,
        finished_at=time.time(),
        reason=reason,
        log_level="error",
        log=f"{label(message.task, message.id)} dead-lettered: {reason}",
    )
