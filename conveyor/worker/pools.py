"""Where tasks run: one Pool protocol, four pools.

- ``prefork``: N child processes, one task each at a time. The parent enforces hard
  time limits by killing the child, and replaces any child that dies.
- ``threads``: N threads in the worker process, for I/O-bound tasks.
- ``solo``: inline in the worker's main thread; one task at a time.

A pool never talks to the broker: it takes Jobs and gives back Completions, and the
consumer settles them.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import multiprocessing.connection as mpc
import os
import queue
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from conveyor import states
from conveyor.brokers.base import Delivery
from conveyor.exceptions import TimeLimitExceeded
from conveyor.serialization import exception_to_dict
from conveyor.worker.runner import ACK, Outcome, label, run_one

if TYPE_CHECKING:
    from conveyor.app import Conveyor

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
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def deadline(self) -> float | None:
        return self.started_at + self.time_limit if self.time_limit else None


@dataclass
class Completion:
    job: Job
    outcome: Outcome


class Pool(Protocol):
    concurrency: int
    name: str

    def start(self) -> None: ...

    def idle_slots(self) -> int: ...

    def submit(self, job: Job) -> None:
        """Run ``job``; only called when ``idle_slots() > 0``."""

    def poll(self, timeout_s: float) -> list[Completion]:
        """Wait up to ``timeout_s`` for finished jobs; returns early on ``wakeup()``."""

    def wakeup(self) -> None:
        """Thread- and signal-safe: make a blocked ``poll`` return."""

    def active(self) -> list[Job]: ...

    def stop(self, timeout_s: float) -> None:
        """Let idle slots exit; wait up to ``timeout_s`` for them."""

    def kill(self) -> None:
        """Stop every slot now (cold shutdown); running jobs are abandoned."""


def time_limit_outcome(job: Job, limit: float) -> Outcome:
    exc = TimeLimitExceeded(f"hard time limit ({limit:g}s) exceeded")
    now = time.time()
    return Outcome(
        ACK,
        task_id=job.task_id,
        task_name=job.task_name,
        state=states.FAILURE,
        exception=exception_to_dict(exc),
        queue=job.delivery.queue,
        started_at=now - limit,
        finished_at=now,
        log_level="error",
        log=f"Hard time limit ({limit:g}s) exceeded for {label(job.task_name, job.task_id)}: process ended",
    )


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


# --------------------------------------------------------------------------- prefork
def _die_with_parent() -> None:
    # A child must not outlive a SIGKILLed parent: it would finish a task whose
    # message is being redelivered elsewhere, and hold its memory forever.
    if sys.platform.startswith("linux"):
        import ctypes

        with contextlib.suppress(Exception):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _child_main(conn: mpc.Connection, app: Conveyor, hostname: str, max_tasks: int | None) -> None:
    # Ctrl-C and a SIGTERM sent to the whole process group (systemd's default
    # KillMode) are the parent's to handle: it finishes running tasks (warm
    # shutdown) and ends the children itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGQUIT, signal.SIG_IGN)
    _die_with_parent()
    done = 0
    while True:
        try:
            job = conn.recv()
        except (EOFError, OSError):
            return
        if job is None:
            return
        body, attempt = job
        outcome = run_one(app, body, attempt=attempt, hostname=hostname)
        done += 1
        retiring = bool(max_tasks and done >= max_tasks)
        try:
            conn.send((outcome, retiring))
        except (BrokenPipeError, OSError):
            return
        if retiring:
            return


@dataclass
class _Child:
    process: multiprocessing.process.BaseProcess
    conn: mpc.Connection
    job: Job | None = None
    retiring: bool = False  # will exit after its current reply (max tasks per child)
    killed: bool = False  # we ended it (time limit); its death is expected


class PreforkPool:
    name = "prefork"

    def __init__(
        self,
        app: Conveyor,
        concurrency: int,
        *,
        hostname: str,
        max_tasks_per_child: int | None = None,
    ) -> None:
        self.app = app
        self.concurrency = concurrency
        self.hostname = hostname
        self.max_tasks_per_child = max_tasks_per_child
        self._ctx = multiprocessing.get_context("fork")
        self._children: list[_Child] = []
        self._wake = _WakePipe()
        self._stopping = False

    def start(self) -> None:
        for _ in range(self.concurrency):
            self._children.append(self._spawn())

    def _spawn(self) -> _Child:
        parent_conn, child_conn = self._ctx.Pipe(duplex=True)
        process = self._ctx.Process(
            target=_child_main,
            args=(child_conn, self.app, self.hostname, self.max_tasks_per_child),
            name=f"ForkPoolWorker-{len(self._children) + 1}",
            daemon=True,
        )
        process.start()
        child_conn.close()
        return _Child(process, parent_conn)

    def idle_slots(self) -> int:
        return sum(1 for c in self._children if c.job is None and not c.retiring and not c.killed)

    def submit(self, job: Job) -> None:
        for child in self._children:
            if child.job is None and not child.retiring and not child.killed:
                job.started_at = time.monotonic()
                child.job = job
                try:
                    child.conn.send((job.delivery.body, job.delivery.attempt))
                except (BrokenPipeError, OSError):
                    pass  # the child died; poll() sees its sentinel and reports the job lost
                return
        raise RuntimeError("submit() called with no idle child")

    def active(self) -> list[Job]:
        return [c.job for c in self._children if c.job is not None]

    def wakeup(self) -> None:
        self._wake.wake()

    def poll(self, timeout_s: float) -> list[Completion]:
        completions: list[Completion] = []
        self._enforce_time_limits(completions)
        deadlines = [
            d for c in self._children if c.job and not c.killed and (d := c.job.deadline) is not None
        ]
        if deadlines:
            timeout_s = max(0.0, min(timeout_s, min(deadlines) - time.monotonic()))
        if completions:
            timeout_s = 0.0
        waitables: list[Any] = [self._wake.r]
        for child in self._children:
            waitables.append(child.conn)
            waitables.append(child.process.sentinel)
        ready = set(mpc.wait(waitables, timeout_s))
        if self._wake.r in ready:
            self._wake.drain()
        for child in list(self._children):
            if child.conn in ready:
                self._read_reply(child, completions)
        for child in list(self._children):
            if child.process.sentinel in ready or not child.process.is_alive():
                self._reap(child, completions)
        self._enforce_time_limits(completions)
        return completions

    def _read_reply(self, child: _Child, completions: list[Completion]) -> None:
        try:
            outcome, retiring = child.conn.recv()
        except (EOFError, OSError):
            return  # died; the sentinel path reports it
        job, child.job = child.job, None
        child.retiring = child.retiring or retiring
        if job is not None and not child.killed:
            completions.append(Completion(job, outcome))

    def _reap(self, child: _Child, completions: list[Completion]) -> None:
        # A reply may still sit in the pipe of a child that exited right after
        # sending it (max-tasks-per-child): read it before declaring the job lost.
        with contextlib.suppress(EOFError, OSError):
            while child.job is not None and child.conn.poll():
                self._read_reply(child, completions)
        child.process.join(timeout=0)
        if child.process.is_alive():
            return
        if child.job is not None and not child.killed:
            completions.append(Completion(child.job, self._lost(child)))
        child.conn.close()
        self._children.remove(child)
        if not self._stopping:
            if not child.retiring and not child.killed:
                log.error(
                    "Process %s (pid %s) exited with code %s",
                    child.process.name,
                    child.process.pid,
                    child.process.exitcode,
                )
            self._children.append(self._spawn())

    def _lost(self, child: _Child) -> Outcome:
        assert child.job is not None
        code = child.process.exitcode
        how = f"signal {signal.Signals(-code).name}" if code is not None and code < 0 else f"exit code {code}"
        return Outcome(LOST, task_id=child.job.task_id, task_name=child.job.task_name, reason=how)

    def _enforce_time_limits(self, completions: list[Completion]) -> None:
        now = time.monotonic()
        for child in self._children:
            job = child.job
            if job is None or child.killed or job.deadline is None or now < job.deadline:
                continue
            # The hard limit: the child may be stuck in C code where no exception can
            # reach it, so it is killed; the pool replaces it when it is reaped.
            child.killed = True
            with contextlib.suppress(ProcessLookupError):
                os.kill(child.process.pid or 0, signal.SIGKILL)
            assert job.time_limit is not None
            completions.append(Completion(job, time_limit_outcome(job, job.time_limit)))
            child.job = None

    def stop(self, timeout_s: float) -> None:
        self._stopping = True
        for child in self._children:
            with contextlib.suppress(BrokenPipeError, OSError):
                child.conn.send(None)
        deadline = time.monotonic() + timeout_s
        for child in self._children:
            child.process.join(max(0.0, deadline - time.monotonic()))
        self.kill()

    def kill(self) -> None:
        self._stopping = True
        for child in self._children:
            if child.process.is_alive():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child.process.pid or 0, signal.SIGKILL)
        for child in self._children:
            child.process.join(2.0)
            child.conn.close()
        self._children.clear()
        self._wake.close()


# --------------------------------------------------------------------------- threads
class ThreadPool:
    """Threads for I/O-bound tasks. A hard time limit cannot end a thread: the job is
    recorded as failed, an asynchronous exception is sent to the thread, and a new
    thread takes the slot so the pool keeps its size."""

    name = "threads"

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

    def start(self) -> None:
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
                    self.app, job.delivery.body, attempt=job.delivery.attempt, hostname=self.hostname
                )
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

    def submit(self, job: Job) -> None:
        job.started_at = time.monotonic()
        with self._lock:
            self._running[id(job)] = job
        self._jobs.put(job)

    def active(self) -> list[Job]:
        with self._lock:
            return list(self._running.values())

    def wakeup(self) -> None:
        self._done.put(None)

    def poll(self, timeout_s: float) -> list[Completion]:
        completions: list[Completion] = []
        deadline = self._next_deadline()
        if deadline is not None:
            timeout_s = max(0.0, min(timeout_s, deadline - time.monotonic()))
        try:
            first = self._done.get(timeout=timeout_s)
            if first is not None:
                completions.append(first)
            while True:
                more = self._done.get_nowait()
                if more is not None:
                    completions.append(more)
        except queue.Empty:
            pass
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

    def kill(self) -> None:
        for _ in self._workers:
            self._jobs.put(None)


# --------------------------------------------------------------------------- solo
class SoloPool:
    """Runs each job inline in the worker's main thread (soft limits via SIGALRM)."""

    name = "solo"
    concurrency = 1

    def __init__(self, app: Conveyor, *, hostname: str) -> None:
        self.app = app
        self.hostname = hostname
        self._done: list[Completion] = []
        self._wake = _WakePipe()
        self._current: Job | None = None

    def start(self) -> None:
        return None

    def idle_slots(self) -> int:
        return 0 if self._done else 1

    def submit(self, job: Job) -> None:
        job.started_at = time.monotonic()
        self._current = job
        try:
            outcome = run_one(
                self.app, job.delivery.body, attempt=job.delivery.attempt, hostname=self.hostname
            )
        finally:
            self._current = None
        self._done.append(Completion(job, outcome))

    def active(self) -> list[Job]:
        return [self._current] if self._current else []

    def wakeup(self) -> None:
        self._wake.wake()

    def poll(self, timeout_s: float) -> list[Completion]:
        if not self._done:
            import select

            with contextlib.suppress(InterruptedError):
                select.select([self._wake.r], [], [], timeout_s)
            self._wake.drain()
        done, self._done = self._done, []
        return done

    def stop(self, timeout_s: float) -> None:
        self._wake.close()

    def kill(self) -> None:
        self._wake.close()


def make_pool(
    kind: str,
    app: Conveyor,
    *,
    concurrency: int,
    hostname: str,
    max_tasks_per_child: int | None,
) -> PreforkPool | ThreadPool | SoloPool:
    if kind == "prefork":
        return PreforkPool(app, concurrency, hostname=hostname, max_tasks_per_child=max_tasks_per_child)
    if kind == "threads":
        return ThreadPool(app, concurrency, hostname=hostname)
    if kind == "solo":
        return SoloPool(app, hostname=hostname)
    from conveyor.exceptions import ConfigurationError

    raise ConfigurationError(f"unknown pool {kind!r}: use prefork, threads or solo")
