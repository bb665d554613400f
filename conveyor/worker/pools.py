"""Where tasks run: one Pool protocol; the in-process pools.

- ``prefork`` (worker/prefork.py): N child processes, each a whole consumer
  running this module's solo pool, under a supervising parent.
- ``threads``: N threads in the worker process, for I/O-bound tasks.
- ``solo``: inline in the worker's main thread; one task at a time.
- ``asyncio`` (worker/aio.py): coroutine tasks only, on one event loop.

Every pool also runs ``async def`` tasks beside its sync slots: up to
``worker_async_concurrency`` coroutines at once on the process's event loop
(worker/aio.py), which is started by the first one.

A pool never talks to the broker: it takes Jobs and gives back Completions, and the
consumer settles them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from conveyor import signals, states
from conveyor.brokers.base import Delivery
from conveyor.exceptions import TimeLimitExceeded
from conveyor.serialization import exception_to_dict
from conveyor.worker.limits import TaskTerminated
from conveyor.worker.runner import ACK, Outcome, label, revoked, run_one

if TYPE_CHECKING:
    from conveyor.app import Conveyor
    from conveyor.message import Message
    from conveyor.worker.aio import CoroutineRunner

log = logging.getLogger("conveyor.worker")

LOST = "lost"  # Outcome.action when the process running the job died


@dataclass
class Job:
    delivery: Delivery
    task_id: str
    task_name: str
    acks_late: bool
    time_limit: float | None = None
    soft_time_limit: float | None = None
    started_at: float = 0.0  # time.monotonic() when handed to a slot
    coroutine: bool = False  # an ``async def`` task: awaited on the event loop, not in a sync slot
    early_acked: bool = False  # its ack is written before it runs
    acked: bool = False  # acked already: taken ahead (consumer._take_ahead) or with its rate-limit slot
    meta: dict[str, Any] = field(default_factory=dict)
    # The decoded body: every pool runs the job in this process (a prefork child is a
    # consumer of its own), so run_one need not decode it again.
    message: Message | None = field(default=None, repr=False, compare=False)

    @property
    def deadline(self) -> float | None:
        return self.started_at + self.time_limit if self.time_limit else None


@dataclass
class Completion:
    job: Job
    outcome: Outcome


class Pool(Protocol):
    concurrency: int  # sync tasks at once (0: the asyncio pool runs none)
    coroutine_concurrency: int  # coroutine tasks at once, beside them
    name: str
    inline: bool  # submit() runs a sync job in the calling thread before returning

    def start(self) -> None: ...

    def idle_slots(self) -> int:
        """Free sync slots."""

    def idle_coroutine_slots(self) -> int:
        """Coroutine tasks that may start now."""

    def submit(self, job: Job) -> None:
        """Run ``job``; only called when the slots of its kind have room."""

    def poll(self, timeout_s: float) -> list[Completion]:
        """Wait up to ``timeout_s`` for finished jobs; returns early on ``wakeup()``."""

    def wakeup(self) -> None:
        """Thread- and signal-safe: make a blocked ``poll`` return."""

    def active(self) -> list[Job]: ...

    def stop(self, timeout_s: float) -> None:
        """Let idle slots exit; wait up to ``timeout_s`` for them."""

    def kill(self) -> None:
        """Stop every slot now (cold shutdown); running jobs are abandoned."""

    def terminate(self, task_id: str) -> bool:
        """Interrupt the running task ``task_id`` (revoke with terminate); True when it runs here."""


def failed_job(
    job: Job, exc: BaseException, log: str, *, action: str = ACK, reason: str | None = None
) -> Outcome:
    """The outcome of a job that the worker, not the task, ended (time limit, lost process)."""
    return Outcome(
        action,
        task_id=job.task_id,
        task_name=job.task_name,
        state=states.FAILURE,
        exception=exception_to_dict(exc),
        queue=job.delivery.queue,
        finished_at=time.time(),
        reason=reason,
        log_level="error",
        log=log,
    )


def terminated_outcome(job: Job, app: Conveyor, signum: int = signal.SIGUSR2) -> Outcome:
    """A task stopped by ``revoke(terminate=True)``: ``signum`` is the signal that ended it."""
    if signals.task_revoked.receivers:
        from conveyor.task import Request

        meta = job.meta
        request = Request(
            id=job.task_id or "",
            task=job.task_name or "",
            args=meta.get("args", []),
            kwargs=meta.get("kwargs", {}),
            retries=meta.get("retries", 0),
            queue=job.delivery.queue,
        )
        task = app.tasks.get(job.task_name or "")
        signals.task_revoked.send(
            sender=task, request=request, terminated=True, signum=signal.Signals(signum), expired=False
        )
    started = time.time() - (time.monotonic() - job.started_at) if job.started_at else None
    return revoked(
        job.task_id, job.task_name, queue=job.delivery.queue, started_at=started, reason="terminated"
    )


def time_limit_outcome(job: Job, limit: float) -> Outcome:
    exc = TimeLimitExceeded(f"hard time limit ({limit:g}s) exceeded")
    log = f"Hard time limit ({limit:g}s) exceeded for {label(job.task_name, job.task_id)}: process ended"
    outcome = failed_job(job, exc, log)
    outcome.started_at = (outcome.finished_at or 0.0) - limit
    return outcome


class _WakePipe:
    """A self-pipe: the one fd a select-based wait can be woken through from a signal handler."""

    def __init__(self) -> None:
        self.r, self.w = os.pipe()
        os.set_blocking(self.r, False)
        os.set_blocking(self.w, False)

    def wake(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(self.w, b"x")

    def drain(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            while os.read(self.r, 4096):
                pass

    def close(self) -> None:
        for fd in (self.r, self.w):
            with contextlib.suppress(OSError):
                os.close(fd)


# --------------------------------------------------------------------------- threads
class ThreadPool:
    """Threads for I/O-bound tasks. A hard time limit cannot end a thread: the job is
    recorded as failed, an asynchronous exception is sent to the thread, and a new
    thread takes the slot so the pool keeps its size."""

    name = "threads"
    inline = False

    def __init__(self, app: Conveyor, concurrency: int, *, hostname: str) -> None:
        self.app = app
        self.concurrency = concurrency
        self.hostname = hostname
        self._jobs: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._done: queue.SimpleQueue[Completion | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._running: dict[int, Job] = {}  # job id() -> job
        self._threads: dict[int, threading.Thread] = {}  # job id() -> thread running it
        self._abandoned: set[int] = set()
        self._workers: list[threading.Thread] = []
        self.coroutines: CoroutineRunner | NoCoroutines = NO_COROUTINES
        self.coroutine_concurrency = async_concurrency(app)

    def start(self) -> None:
        if has_coroutine_tasks(self.app):
            self.coroutines = coroutine_runner(self.app, self.hostname, self._done.put)
        for _ in range(self.concurrency):
            self._add_thread()

    def _add_thread(self) -> None:
        thread = threading.Thread(
            target=self._work, name=f"ThreadPoolWorker-{len(self._workers) + 1}", daemon=True
        )
        self._workers.append(thread)
        thread.start()

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            with self._lock:
                self._threads[id(job)] = threading.current_thread()
            try:
                outcome = run_one(
                    self.app,
                    job.delivery.body,
                    attempt=job.delivery.attempt,
                    hostname=self.hostname,
                    message=job.message,
                )
            except TaskTerminated:
                outcome = terminated_outcome(job, self.app)
            except BaseException as exc:  # noqa: BLE001 - the async time-limit exception lands here
                outcome = Outcome(LOST, task_id=job.task_id, task_name=job.task_name, reason=repr(exc))
            with self._lock:
                self._threads.pop(id(job), None)
                abandoned = id(job) in self._abandoned
                self._abandoned.discard(id(job))
            if abandoned:
                return  # its slot was given to a new thread at the hard limit
            self._done.put(Completion(job, outcome))

    def idle_slots(self) -> int:
        with self._lock:
            return self.concurrency - len(self._running)

    def idle_coroutine_slots(self) -> int:
        return self.coroutines.idle_slots()

    def submit(self, job: Job) -> None:
        if job.coroutine:
            self.coroutines.submit(job)
            return
        job.started_at = time.monotonic()
        with self._lock:
            self._running[id(job)] = job
        self._jobs.put(job)

    def active(self) -> list[Job]:
        with self._lock:
            return list(self._running.values()) + self.coroutines.active()

    def wakeup(self) -> None:
        self._done.put(None)

    def poll(self, timeout_s: float) -> list[Completion]:
        deadline = self._next_deadline()
        if deadline is not None:
            timeout_s = max(0.0, min(timeout_s, deadline - time.monotonic()))
        completions = collect(self._done, timeout_s)
        self.coroutines.release(completions)
        with self._lock:
            for c in completions:
                self._running.pop(id(c.job), None)
        self._enforce_time_limits(completions)
        return completions

    def _next_deadline(self) -> float | None:
        with self._lock:
            return min((d for j in self._running.values() if (d := j.deadline) is not None), default=None)

    def _enforce_time_limits(self, completions: list[Completion]) -> None:
        import ctypes

        now = time.monotonic()
        with self._lock:
            overdue = [j for j in self._running.values() if j.deadline is not None and now >= j.deadline]
            for job in overdue:
                del self._running[id(job)]
                self._abandoned.add(id(job))
                thread = self._threads.get(id(job))
                if thread is not None and thread.ident is not None:
                    ctypes.pythonapi.PyThreadState_SetAsyncExc(
                        ctypes.c_ulong(thread.ident), ctypes.py_object(TimeLimitExceeded)
                    )
        for job in overdue:
            assert job.time_limit is not None
            completions.append(Completion(job, time_limit_outcome(job, job.time_limit)))
            self._add_thread()

    def stop(self, timeout_s: float) -> None:
        for _ in self._workers:
            self._jobs.put(None)
        deadline = time.monotonic() + timeout_s
        for thread in self._workers:
            thread.join(max(0.0, deadline - time.monotonic()))
        self.coroutines.stop(max(0.0, deadline - time.monotonic()))

    def kill(self) -> None:
        for _ in self._workers:
            self._jobs.put(None)
        self.coroutines.kill()

    def terminate(self, task_id: str) -> bool:
        """A thread cannot be killed: TaskTerminated is raised in it asynchronously,
        which takes effect at its next Python bytecode (not inside a blocking C call)."""
        import ctypes

        if self.coroutines.terminate(task_id):
            return True
        with self._lock:
            for key, job in self._running.items():
                thread = self._threads.get(key)
                if job.task_id == task_id and thread is not None and thread.ident is not None:
                    ctypes.pythonapi.PyThreadState_SetAsyncExc(
                        ctypes.c_ulong(thread.ident), ctypes.py_object(TaskTerminated)
                    )
                    return True
        return False


# --------------------------------------------------------------------------- solo
class SoloPool:
    """Runs each sync job inline in the worker's main thread (soft limits via SIGALRM);
    coroutine jobs go to the event loop's thread and finish there."""

    name = "solo"
    concurrency = 1
    inline = True

    def __init__(self, app: Conveyor, *, hostname: str) -> None:
        self.app = app
        self.hostname = hostname
        self._done: list[Completion] = []
        self._done_lock = threading.Lock()  # the event loop's thread appends too
        self._ran = False  # a sync job ran since the last poll: its outcome goes out first
        self._wake = _WakePipe()
        self._current: Job | None = None
        self.coroutines: CoroutineRunner | NoCoroutines = NO_COROUTINES
        self.coroutine_concurrency = async_concurrency(app)

    def start(self) -> None:
        if has_coroutine_tasks(self.app):
            self.coroutines = coroutine_runner(self.app, self.hostname, self._coroutine_done)
        # revoke(terminate=True) interrupts the running task with SIGUSR2 (sent by the
        # control thread, or by the prefork supervisor to its child).
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGUSR2, self._on_terminate)

    def _on_terminate(self, signum: int, frame: object) -> None:
        if self._current is not None:
            raise TaskTerminated()

    def idle_slots(self) -> int:
        return 0 if self._ran else 1

    def idle_coroutine_slots(self) -> int:
        return self.coroutines.idle_slots()

    def _coroutine_done(self, completion: Completion) -> None:
        with self._done_lock:
            self._done.append(completion)
        self._wake.wake()

    def submit(self, job: Job) -> None:
        if job.coroutine:
            self.coroutines.submit(job)
            return
        outcome = self.run_inline(job)
        with self._done_lock:
            self._done.append(Completion(job, outcome))
        self._ran = True

    def run_inline(self, job: Job) -> Outcome:
        job.started_at = time.monotonic()
        self._current = job
        try:
            outcome = run_one(
                self.app,
                job.delivery.body,
                attempt=job.delivery.attempt,
                hostname=self.hostname,
                message=job.message,
            )
        except TaskTerminated:
            self._current = None
            outcome = terminated_outcome(job, self.app)
        finally:
            self._current = None
        return outcome

    def terminate(self, task_id: str) -> bool:
        if self.coroutines.terminate(task_id):
            return True
        job = self._current
        if job is None or job.task_id != task_id:
            return False
        signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGUSR2)
        return True

    def active(self) -> list[Job]:
        return ([self._current] if self._current else []) + self.coroutines.active()

    def wakeup(self) -> None:
        self._wake.wake()

    def poll(self, timeout_s: float) -> list[Completion]:
        if not self._done:
            import select

            with contextlib.suppress(InterruptedError):
                select.select([self._wake.r], [], [], timeout_s)
            self._wake.drain()
        with self._done_lock:
            done, self._done = self._done, []
        self._ran = False
        self.coroutines.release(done)
        return done

    def stop(self, timeout_s: float) -> None:
        self.coroutines.stop(timeout_s)
        self._wake.close()

    def kill(self) -> None:
        self.coroutines.kill()
        self._wake.close()


def has_coroutine_tasks(app: Conveyor) -> bool:
    return any(task.is_coroutine for task in app.tasks.values())


def async_concurrency(app: Conveyor) -> int:
    return max(1, int(app.conf.worker_async_concurrency))


def coroutine_runner(app: Conveyor, hostname: str, on_done: Callable[[Completion], None]) -> CoroutineRunner:
    """The pool's event loop for ``async def`` tasks (started by the first one)."""
    from conveyor.worker.aio import CoroutineRunner

    return CoroutineRunner(app, hostname=hostname, concurrency=async_concurrency(app), on_done=on_done)


class NoCoroutines:
    """A pool's coroutine side while the app has no ``async def`` task: nothing runs there,
    and asyncio (a few MiB in every prefork child) is never imported."""

    def idle_slots(self) -> int:
        return 0

    def submit(self, job: Job) -> None:
        # The consumer dispatches coroutines only when the app had some as the pool started.
        raise RuntimeError(f"{job.task_name}: no async def task was registered when the pool started")

    def active(self) -> list[Job]:
        return []

    def release(self, completions: list[Completion]) -> None:
        """Nothing is ever in flight here."""

    def terminate(self, task_id: str) -> bool:
        return False

    def stop(self, timeout_s: float) -> None:
        """No loop to close."""

    def kill(self) -> None:
        """No loop to close."""


NO_COROUTINES = NoCoroutines()


def collect(done: queue.SimpleQueue[Completion | None], timeout_s: float) -> list[Completion]:
    """What finished: wait up to ``timeout_s`` for the first, take the rest without waiting
    (a ``None`` is a wakeup, not a completion)."""
    completions: list[Completion] = []
    try:
        first = done.get(timeout=timeout_s)
        if first is not None:
            completions.append(first)
        while True:
            more = done.get_nowait()
            if more is not None:
                completions.append(more)
    except queue.Empty:
        pass
    return completions


def make_pool(kind: str, app: Conveyor, *, concurrency: int, hostname: str) -> Pool:
    """The in-process pools; prefork is a supervisor of its own (worker/prefork.py)."""
    if kind == "threads":
        return ThreadPool(app, concurrency, hostname=hostname)
    if kind == "solo":
        return SoloPool(app, hostname=hostname)
    if kind == "asyncio":
        from conveyor.worker.aio import AsyncioPool

        return AsyncioPool(app, hostname=hostname)
    from conveyor.exceptions import ConfigurationError

    raise ConfigurationError(f"unknown pool {kind!r}: use prefork, threads, solo or asyncio")


__all__ = ["LOST", "Completion", "Job", "Pool", "SoloPool", "ThreadPool", "make_pool", "terminated_outcome"]
