"""The prefork pool: N child processes, each a complete consumer.

Each child fetches, runs and settles its own tasks (``Consumer.run_inline``), so the
children work in parallel on separate cores and no task crosses a pipe. The parent
only supervises, from what each child publishes in its shared-memory slot (the task
it runs, its counts: ``_Slot``) and, for tasks with a hard time limit, from events
it sends down a pipe when such a task starts and ends:

- it replaces a child that dies, and settles the task that child was running
  (``FAILURE``/``WorkerLostError``, or back to the queue with ``acks_late``);
- it enforces hard time limits: past ``time_limit`` it kills the child, records
  ``TimeLimitExceeded`` and starts a new one, because a task stuck in C code cannot
  be interrupted any other way;
- it turns SIGTERM into a warm shutdown of every child (SIGUSR1) and a second
  signal into a cold one (SIGKILL, then the running tasks are settled as above).

Children ignore SIGTERM and SIGINT themselves: a signal sent to the whole process
group (Ctrl-C, systemd's default KillMode) must reach only the parent's logic.
They do not outlive the supervisor: the kernel kills them when it dies (Linux's
parent-death signal) or, where that cannot be asked for, each notices its parent
is gone, gives back what it has not started and exits (``_watch_supervisor``).
Children are forked under ``_forkguard.fork_guard()``: never while one of the
parent's threads (heartbeats, control, the scheduler) is inside SQLite.
"""

from __future__ import annotations

import contextlib
import logging
import mmap
import multiprocessing
import os
import pickle
import queue
import select
import selectors
import signal
import struct
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from conveyor import _forkguard, signals, states
from conveyor.brokers.base import Delivery
from conveyor.worker.pools import (
    LOST,
    Completion,
    Job,
    SoloPool,
    _WakePipe,
    terminated_outcome,
    time_limit_outcome,
)
from conveyor.worker.runner import Outcome
from conveyor.worker.settle import Settler

if TYPE_CHECKING:
    from conveyor.app import Conveyor
    from conveyor.worker.autoscale import Autoscaler
    from conveyor.worker.consumer import Consumer

log = logging.getLogger("conveyor.worker")

COMMAND_WAIT_S = 2.0  # longest a control command waits for the supervisor's loop
# False: children do not ask the kernel for a parent-death signal, as where libc's
# prctl cannot be loaded (musl, macOS). Tests set it to exercise that path.
USE_PDEATHSIG = True
SUPERVISOR_CHECK_S = 0.2  # without that signal, how often a child checks its supervisor lives
ORPHAN_GRACE_S = 0.5  # how long an orphaned child lets its main loop wind down before it exits


@dataclass(frozen=True)
class ChildOptions:
    queues: Sequence[str]
    hostname: str
    prefetch_multiplier: int
    lease_s: float
    shutdown_timeout_s: float
    max_deliveries: int
    max_tasks: int | None
    max_memory_kib: int | None = None


class _Channel:
    """One end of a pipe carrying pickled tuples, each prefixed with its length.

    What multiprocessing.connection does for us here, without its import: about
    1.1 MiB of RSS in the supervisor and again in every child.
    """

    _LENGTH = struct.Struct("=I")

    def __init__(self, fd: int) -> None:
        self.fd = fd

    @classmethod
    def pipe(cls) -> tuple[_Channel, _Channel]:
        """(read end, write end)."""
        r, w = os.pipe()
        return cls(r), cls(w)

    def fileno(self) -> int:
        return self.fd

    def send(self, obj: object) -> None:
        payload = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
        view = memoryview(self._LENGTH.pack(len(payload)) + payload)
        while view:
            view = view[os.write(self.fd, view) :]

    def recv(self) -> Any:
        """Blocks for a whole message; EOFError once the other end is closed."""
        (length,) = self._LENGTH.unpack(self._read(self._LENGTH.size))
        return pickle.loads(self._read(length))

    def _read(self, size: int) -> bytes:
        chunks = []
        while size:
            chunk = os.read(self.fd, size)
            if not chunk:
                raise EOFError("the other end of the pipe is closed")
            chunks.append(chunk)
            size -= len(chunk)
        return b"".join(chunks)

    def poll(self) -> bool:
        """Is something (a message, or the end of the pipe) ready to read?"""
        return bool(select.select([self.fd], [], [], 0)[0])

    def close(self) -> None:
        fd, self.fd = self.fd, -1
        if fd >= 0:
            os.close(fd)


class _Slot:
    """What one child runs, in memory it shares with the supervisor (mapped before fork).

    The child writes the job it starts and its counts here instead of sending them
    down the pipe: two pipe messages per task cost the child two system calls and
    woke the supervisor twice, a quarter of the worker's CPU per task on two cores.
    The supervisor reads a slot only when it needs to know: a child died, inspect
    asks, a task is to be terminated, a heartbeat counts. Tasks with a hard time
    limit still go through the pipe, because the supervisor must time them.

    Layout: seq (u64; odd while the child writes), processed, failed (u64 each),
    length (u32), then the pickled job. A read that finds seq odd or changed retries;
    a child that died mid-write had not started that task, so it is not running.
    """

    SIZE = 64 * 1024
    _HEADER = struct.Struct("=QQQI")

    def __init__(self) -> None:
        self._mem = mmap.mmap(-1, self.SIZE)  # MAP_SHARED | MAP_ANONYMOUS: survives fork
        self._payload = b""  # the running job, kept while coroutines are counted beside it
        self._seq = 0
        self.processed = 0
        self.failed = 0

    def _write(self, payload: bytes) -> None:
        self._seq += 1  # odd: being written
        self._HEADER.pack_into(self._mem, 0, self._seq, self.processed, self.failed, 0)
        self._mem[self._HEADER.size : self._HEADER.size + len(payload)] = payload
        self._seq += 1
        self._HEADER.pack_into(self._mem, 0, self._seq, self.processed, self.failed, len(payload))

    def start(self, record: tuple[object, ...]) -> bool:
        """Child: this job runs now. False: too big for the slot (use the pipe)."""
        payload = pickle.dumps(record, protocol=pickle.HIGHEST_PROTOCOL)
        if len(payload) > self.SIZE - self._HEADER.size:
            return False
        self._payload = payload
        self._write(payload)
        return True

    def finish(self, failed: bool, *, running: bool = True) -> None:
        """Child: the running job ended (or the piped one did): count it, clear the job.
        ``running=False``: a coroutine task ended; the running job, if any, stays."""
        self.processed += 1
        self.failed += int(failed)
        if running:
            self._payload = b""
        self._write(self._payload)

    def read(self) -> tuple[int, int, Job | None]:
        """Supervisor: (processed, failed, running job or None)."""
        for _ in range(1000):
            seq, processed, failed, length = self._HEADER.unpack_from(self._mem, 0)
            payload = bytes(self._mem[self._HEADER.size : self._HEADER.size + length]) if length else b""
            if seq % 2 == 0 and self._HEADER.unpack_from(self._mem, 0)[0] == seq:
                return processed, failed, _job_from_record(pickle.loads(payload)) if payload else None
        return processed, failed, None  # a torn write that never completed: not started

    def counts(self) -> tuple[int, int]:
        """Supervisor: (processed, failed), for heartbeats; a moment stale at worst."""
        _, processed, failed, _ = self._HEADER.unpack_from(self._mem, 0)
        return processed, failed

    def close(self) -> None:
        with contextlib.suppress(BufferError, ValueError):
            self._mem.close()


def _job_from_record(record: tuple[Any, ...]) -> Job:
    body, queue, receipt, attempt, message_id, task_id, task_name, acks_late, limit, started_at = record
    job = Job(
        Delivery(body, queue, receipt, attempt, message_id),
        task_id=task_id,
        task_name=task_name,
        acks_late=acks_late,
        time_limit=limit,
    )
    job.started_at = started_at  # CLOCK_MONOTONIC is system-wide: valid in the supervisor
    return job


class _ReportingPool(SoloPool):
    """The child's pool: runs inline and tells the parent what runs, for limits and crashes."""

    def __init__(self, app: Conveyor, *, hostname: str, events: _Channel, slot: _Slot) -> None:
        super().__init__(app, hostname=hostname)
        self.events = events
        self.slot = slot
        # The commands thread reports too; a message over PIPE_BUF is written in
        # pieces, which another thread's message must not land between.
        self._send_lock = threading.Lock()

    def report(self, event: tuple[object, ...]) -> None:
        with self._send_lock, contextlib.suppress(OSError):
            self.events.send(event)

    def submit(self, job: Job) -> None:
        d = job.delivery
        record = (
            d.body,
            d.queue,
            d.receipt,
            d.attempt,
            d.message_id,
            job.task_id,
            job.task_name,
            job.acks_late,
            job.time_limit,
            time.monotonic(),
        )
        if job.coroutine:
            # Timed and interrupted on the child's event loop, not by the supervisor
            # (ending this process would end every coroutine beside it), which only
            # learns of it to list it and to settle it if this process dies.
            self.report(("coroutine", *record))
            super().submit(job)
            return
        # A hard time limit needs the supervisor's clock on it: that job goes by pipe.
        piped = job.time_limit is not None or not self.slot.start(record)
        if piped:
            self.report(("start", *record))
        outcome = self.run_inline(job)
        with self._done_lock:
            self._done.append(Completion(job, outcome))
        self._ran = True
        self.slot.finish(outcome.state == states.FAILURE)
        if piped:
            self.report(("end", d.receipt))

    def poll(self, timeout_s: float) -> list[Completion]:
        done = super().poll(timeout_s)
        ended = [c for c in done if c.job.coroutine]
        for completion in ended:
            self.slot.finish(completion.outcome.state == states.FAILURE, running=False)
        if ended:
            self.report(("coroutines-ended", [c.job.delivery.receipt for c in ended]))
        return done


def _trim_heap() -> None:
    """Give the C heap's free pages back before forking, so no child starts with them.

    Start-up (imports, the CLI, the configuration) frees much of what it allocates,
    and glibc keeps those pages resident: measured, about 0.8 MiB of the supervisor's
    RSS.
    """
    if sys.platform.startswith("linux"):
        import ctypes

        with contextlib.suppress(Exception):
            ctypes.CDLL("libc.so.6").malloc_trim(0)


def _die_with_parent() -> bool:
    """Ask the kernel to SIGKILL this child when its parent dies; False where it cannot."""
    if USE_PDEATHSIG and sys.platform.startswith("linux"):
        import ctypes

        with contextlib.suppress(Exception):
            libc = ctypes.CDLL("libc.so.6", use_errno=True)
            return bool(libc.prctl(1, signal.SIGKILL) == 0)  # PR_SET_PDEATHSIG
    return False


def _watch_supervisor(supervisor_pid: int, consumer: Consumer) -> None:
    """Where no parent-death signal exists (musl, macOS): leave once the supervisor is gone.

    A child must not outlive a SIGKILLed supervisor: it would go on fetching and
    renewing leases with nobody enforcing its limits. It gives back the messages it
    has not started and exits; an ``acks_late`` task it was running comes back
    when its lease runs out.
    """
    while os.getppid() == supervisor_pid:
        time.sleep(SUPERVISOR_CHECK_S)
    log.error("Supervisor (pid %s) is gone: process %s exits", supervisor_pid, os.getpid())
    if not consumer.abandon("supervisor died", grace_s=ORPHAN_GRACE_S):
        os._exit(1)  # a task still runs in the main thread: stop it with the process


def _read_commands(commands: _Channel, consumer: Consumer, pool: _ReportingPool) -> None:
    """The child's end of control: revokes and rate limits forwarded by the supervisor.

    Each is acknowledged once in force, so the supervisor's reply to the caller means
    every child applies it to the next message it takes. A "list" query (inspect's
    reserved and scheduled: prefetched messages live in the child that fetched
    them) is answered in its acknowledgement. A thread blocked in recv() costs
    nothing while no command comes.
    """
    while True:
        try:
            command = commands.recv()
        except (EOFError, OSError):
            return
        kind, seq = command[0], command[1]
        if kind == "revoke":
            consumer.revoked.update(command[2])
            if len(command) > 3 and command[3]:  # terminate: a coroutine task is cancelled here
                for task_id in command[2]:
                    pool.coroutines.terminate(task_id)
        elif kind == "rate_limit":
            consumer.set_rate_limit(command[2], command[3])
        elif kind == "queues":
            consumer.set_queues(command[2])
        elif kind == "list":
            held = consumer.reserved_deliveries() if command[2] == "reserved" else consumer.held_deliveries()
            listed = [(d.body, d.queue, d.receipt, d.attempt, d.message_id) for d in held]
            pool.report(("applied", seq, listed))
            continue
        pool.report(("applied", seq))


def _child_main(
    app: Conveyor,
    options: ChildOptions,
    slot: _Slot,
    events: _Channel,
    commands: _Channel,
    revoked: set[str],
    rates: dict[str, str | float | None],
    supervisor_pid: int,
) -> None:
    from conveyor.worker.consumer import Consumer

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
        signal.signal(sig, signal.SIG_IGN)
    # A supervisor that died before the signal was asked for would never send it.
    watched = _die_with_parent() and os.getppid() == supervisor_pid
    pool = _ReportingPool(app, hostname=options.hostname, events=events, slot=slot)
    consumer = Consumer(
        app,
        pool,
        options.queues,
        hostname=options.hostname,
        prefetch_multiplier=options.prefetch_multiplier,
        lease_s=options.lease_s,
        shutdown_timeout_s=options.shutdown_timeout_s,
        max_deliveries=options.max_deliveries,
        max_tasks=options.max_tasks,
        max_memory_kib=options.max_memory_kib,
    )
    signal.signal(signal.SIGUSR1, lambda *_: consumer.request_stop())
    consumer.revoked.update(revoked)
    for name, rate in rates.items():
        consumer.set_rate_limit(name, rate)
    threading.Thread(
        target=_read_commands, args=(commands, consumer, pool), name="commands", daemon=True
    ).start()
    if not watched:
        threading.Thread(
            target=_watch_supervisor, args=(supervisor_pid, consumer), name="supervisor-watch", daemon=True
        ).start()
    # Where users open per-process resources (database connections): after fork,
    # before the first task. A receiver that raises is logged; the child still works.
    signals.worker_process_init.send(sender=None)
    exitcode = 1
    try:
        consumer.run_inline()
        exitcode = 0
    finally:
        signals.worker_process_shutdown.send(sender=None, pid=os.getpid(), exitcode=exitcode)
        app.close()


@dataclass
class _Child:
    process: multiprocessing.process.BaseProcess
    events: _Channel
    slot: _Slot
    commands: _Channel | None = None  # supervisor -> child (revokes, rate limits)
    job: Job | None = None  # a job that came by pipe (hard time limit, or too big for the slot)
    killed: bool = False  # we ended it (time limit, cold shutdown); its death is expected
    terminate_at: float | None = None  # revoke(terminate=True): SIGKILL if still running then
    terminating: str | None = None  # the task id that terminate_at is for
    retiring: bool = False  # stopped by a pool shrink: not replaced when it exits
    coroutines: dict[str, Job] = field(default_factory=dict)  # receipt -> job on its event loop

    def running(self) -> Job | None:
        """The job this child runs now, from the pipe or from its slot."""
        return self.job if self.job is not None else self.slot.read()[2]

    def counts(self) -> tuple[int, int]:
        return self.slot.counts()

    def final(self) -> tuple[int, int, Job | None]:
        """(processed, failed, job it was running) of a child that has exited."""
        processed, failed, job = self.slot.read()
        return processed, failed, self.job or job


class PreforkSupervisor:
    """Runs ``concurrency`` consumer processes and keeps them running."""

    name = "prefork"

    def __init__(
        self,
        app: Conveyor,
        concurrency: int,
        options: ChildOptions,
        *,
        autoscale: tuple[int, int] | None = None,
    ) -> None:
        self.app = app
        self.concurrency = concurrency
        self.options = options
        self.autoscale = autoscale  # (max, min) children, --autoscale
        self.settler = Settler(app, hostname=options.hostname, max_deliveries=options.max_deliveries)
        self._ctx = multiprocessing.get_context("fork")
        # Before the worker starts its heartbeat and control threads: from here on
        # their SQLite statements are counted, so a fork never lands inside one.
        _forkguard.enable()
        self._children: list[_Child] = []
        self._wake = _WakePipe()
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._wake.r, selectors.EVENT_READ, None)
        self._warm = False
        self._cold = False
        self._warm_deadline = 0.0
        self._finished_processed = 0
        self._finished_failed = 0
        # Control (app.control): remembered for children started later, and commands
        # from the control thread, carried out by the supervisor's own loop.
        self.revoked: set[str] = set()
        self.rates: dict[str, str | float | None] = {}
        self._commands: queue.SimpleQueue[tuple[str, object, object, threading.Event]] = queue.SimpleQueue()
        self._command_seq = 0
        # Commands sent and not yet acknowledged: seq -> (children still to answer, done).
        self._awaiting: dict[int, tuple[set[int], threading.Event]] = {}
        # "list" queries: seq -> the deliveries the children answered with so far.
        self._listed: dict[int, list[Delivery]] = {}

    @property
    def processed(self) -> int:
        live = sum(c.counts()[0] for c in list(self._children))
        return self._finished_processed + live + self.settler.processed

    @property
    def failed(self) -> int:
        live = sum(c.counts()[1] for c in list(self._children))
        return self._finished_failed + live + self.settler.failed

    # -- control (called from the worker's control thread) ---------------------------
    def revoke(self, ids: list[str], terminate: bool) -> list[str]:
        """Forward revokes to every child; with ``terminate``, stop those running them.

        Returns the ids running now (being terminated). The supervisor's loop does
        the work: children and pipes are only touched from that thread.
        """
        running = [job.task_id for job, _ in self.active_jobs() if job.task_id in ids]
        self._command("revoke", list(ids), terminate)
        return running if terminate else []

    def set_rate_limit(self, task_name: str, rate: str | float | None) -> None:
        self._command("rate_limit", task_name, rate)

    def set_queues(self, queues: Sequence[str]) -> None:
        """Every child (and every child started later) fetches from ``queues``."""
        self._command("queues", list(queues), None)

    def resize(self, delta: int) -> int:
        """Start ``delta`` more children, or stop ``-delta`` of them (never the last);
        returns the pool's size. A stopped child finishes its running task and gives
        back what it prefetched, as in a warm shutdown."""
        self._command("resize", delta, None)
        return self.concurrency

    def busy(self) -> int:
        """Children running a task now."""
        return sum(1 for c in list(self._children) if not c.retiring and c.running() is not None)

    def reserved_deliveries(self) -> list[Delivery]:
        """Prefetched and not started, in every child (inspect's "reserved")."""
        return self._list("reserved")

    def held_deliveries(self) -> list[Delivery]:
        """Waiting for a rate-limit slot, in every child (inspect's "scheduled")."""
        return self._list("scheduled")

    def _list(self, which: str) -> list[Delivery]:
        found: list[Delivery] = []
        self._command("list", which, found)
        return list(found)  # a child that did not answer in time is left out

    def _command(self, kind: str, first: object, second: object) -> None:
        """Hand a command to the supervisor's loop and wait (briefly) until every
        child has acknowledged it, so a reply means "in force from now on"."""
        done = threading.Event()
        self._commands.put((kind, first, second, done))
        self._wake.wake()
        done.wait(COMMAND_WAIT_S)

    def active_jobs(self) -> list[tuple[Job, int]]:
        children = list(self._children)
        found = [(c.running(), c.process.pid or 0) for c in children]
        found += [(job, c.process.pid or 0) for c in children for job in list(c.coroutines.values())]
        return [(job, pid) for job, pid in found if job is not None]

    def _run_commands(self) -> None:
        while True:
            try:
                kind, first, second, done = self._commands.get_nowait()
            except queue.Empty:
                return
            sent: set[int] = set()
            try:
                sent = self._run_command(kind, first, second)
            finally:
                if sent:
                    self._awaiting[self._command_seq] = (sent, done)
                else:
                    done.set()

    def _run_command(self, kind: str, first: object, second: object) -> set[int]:
        """Carry out one command; returns the children that must acknowledge it."""
        self._command_seq += 1
        seq = self._command_seq
        if kind == "revoke":
            assert isinstance(first, list)
            self.revoked.update(first)
            sent = self._send_children(("revoke", seq, first, bool(second)))
            if second:
                self._terminate(set(first))
            return sent
        if kind == "rate_limit":
            assert isinstance(first, str)
            rate = second if isinstance(second, (str, float, int)) or second is None else None
            self.rates[first] = rate
            return self._send_children(("rate_limit", seq, first, rate))
        if kind == "queues":
            assert isinstance(first, list)
            self.options = replace(self.options, queues=tuple(first))
            return self._send_children(("queues", seq, first))
        if kind == "resize":
            assert isinstance(first, int)
            self._resize(first)
            return set()
        if kind == "list":
            assert isinstance(second, list)
            sent = self._send_children(("list", seq, first))
            if sent:
                self._listed[seq] = second
            return sent
        return set()

    def _resize(self, delta: int) -> None:
        if self._warm or self._cold:
            return
        for _ in range(delta):
            self._children.append(self._spawn())
            self.concurrency += 1
        if delta >= 0:
            return
        # Idle children first: a busy one would make its task wait for the shrink.
        serving = sorted((c for c in self._children if not c.retiring), key=lambda c: c.running() is not None)
        for child in serving[: min(-delta, len(serving) - 1)]:
            child.retiring = True
            self.concurrency -= 1
            with contextlib.suppress(ProcessLookupError):
                os.kill(child.process.pid or 0, signal.SIGUSR1)  # its warm shutdown

    def _send_children(self, command: tuple[object, ...]) -> set[int]:
        sent = set()
        for child in self._children:
            if child.commands is not None:
                with contextlib.suppress(OSError, ValueError):
                    child.commands.send(command)
                    sent.add(id(child))
        return sent

    def _acknowledged(self, child: _Child, seq: int | None, listed: list[Any] | None = None) -> None:
        """A child applied command ``seq`` (None: it is gone and answers nothing);
        ``listed``: its answer to a "list" query."""
        if seq is not None and listed is not None and seq in self._listed:
            self._listed[seq].extend(Delivery(*item) for item in listed)
        for key, (waiting, done) in list(self._awaiting.items()):
            if seq is None or key == seq:
                waiting.discard(id(child))
                if not waiting:
                    done.set()
                    del self._awaiting[key]
                    self._listed.pop(key, None)

    def _terminate(self, ids: set[str]) -> None:
        """Interrupt (SIGUSR2: TaskTerminated inside the task, whose cleanup runs and
        whose result the child records REVOKED); a child still running the task after
        TERMINATE_GRACE_S is SIGKILLed, the task recorded REVOKED here, the child replaced."""
        from conveyor.monitor.control import TERMINATE_GRACE_S

        for child in self._children:
            job = child.running()
            if job is None or job.task_id not in ids or child.killed or child.terminate_at is not None:
                continue
            log.warning("Terminating %s in process %s", job.task_id, child.process.pid)
            child.terminate_at = time.monotonic() + TERMINATE_GRACE_S
            child.terminating = job.task_id
            with contextlib.suppress(ProcessLookupError):
                os.kill(child.process.pid or 0, signal.SIGUSR2)

    def request_stop(self, *, cold: bool = False) -> None:
        """Signal-safe: the first call starts a warm shutdown, a later one a cold one."""
        if cold or self._warm:
            self._cold = True
        else:
            self._warm = True
            self._warm_deadline = time.monotonic() + self.options.shutdown_timeout_s
        self._wake.wake()

    def active(self) -> list[Job]:
        return [job for job, _ in self.active_jobs()]

    def run(self) -> None:
        _trim_heap()
        for _ in range(self.concurrency):
            self._children.append(self._spawn())
        autoscaler = self._autoscaler()
        warned = False
        try:
            while self._children and not self._cold:
                if self._warm and not warned:
                    warned = True
                    self._signal_children(signal.SIGUSR1)
                if self._warm and time.monotonic() >= self._warm_deadline:
                    log.warning(
                        "Warm shutdown: tasks still running after %.0fs; stopping them",
                        self.options.shutdown_timeout_s,
                    )
                    self._cold = True
                    break
                self.poll(self._timeout())
        finally:
            if autoscaler is not None:
                autoscaler.stop()
            self._stop_all()

    def _autoscaler(self) -> Autoscaler | None:
        if self.autoscale is None:
            return None
        from conveyor.worker.autoscale import Autoscaler

        maximum, minimum = self.autoscale
        idle_s = float(self.app.conf.worker_autoscale_idle_s)
        autoscaler = Autoscaler(self, maximum, minimum, idle_s=idle_s)
        autoscaler.start()
        return autoscaler

    def _spawn(self) -> _Child:
        parent_end, child_end = _Channel.pipe()
        commands_in, commands_out = _Channel.pipe()
        slot = _Slot()
        process = self._ctx.Process(
            target=_child_main,
            args=(
                self.app,
                self.options,
                slot,
                child_end,
                commands_in,
                set(self.revoked),
                dict(self.rates),
                os.getpid(),
            ),
            name=f"ForkPoolWorker-{len(self._children) + 1}",
            daemon=True,
        )
        with _forkguard.fork_guard():
            process.start()
        child_end.close()
        commands_in.close()
        child = _Child(process, parent_end, slot, commands_out)
        self._selector.register(parent_end.fileno(), selectors.EVENT_READ, (id(child), "events"))
        self._selector.register(process.sentinel, selectors.EVENT_READ, (id(child), "exit"))
        return child

    def _forget(self, child: _Child) -> None:
        self._acknowledged(child, None)
        for fd in (child.events.fileno(), child.process.sentinel):
            with contextlib.suppress(KeyError, ValueError, OSError):
                self._selector.unregister(fd)
        child.events.close()
        child.slot.close()
        if child.commands is not None:
            child.commands.close()

    def _timeout(self) -> float:
        timeout = 1.0
        if self._warm:
            timeout = min(timeout, max(0.0, self._warm_deadline - time.monotonic()))
        for child in self._children:
            if child.job is not None and not child.killed and child.job.deadline is not None:
                timeout = min(timeout, max(0.0, child.job.deadline - time.monotonic()))
            if child.terminate_at is not None:
                timeout = min(timeout, max(0.0, child.terminate_at - time.monotonic()))
        return timeout

    def poll(self, timeout_s: float) -> None:
        # One selector for the supervisor's life (children are added and removed as
        # they come and go): building one per poll was most of the parent's CPU.
        ready = {key.data for key, _ in self._selector.select(timeout_s)}
        if None in ready:
            self._wake.drain()
            self._run_commands()
        for child in list(self._children):
            if (id(child), "events") in ready:
                self._read_events(child)
        for child in list(self._children):
            if (id(child), "exit") in ready:
                self._reap(child)
        self._enforce_time_limits()

    def _read_events(self, child: _Child) -> None:
        with contextlib.suppress(EOFError, OSError):
            while child.events.poll():
                event = child.events.recv()
                kind = event[0]
                if kind == "start":
                    job = _job_from_record(event[1:])
                    job.started_at = time.monotonic()  # the limit runs from when we heard of it
                    child.job = job
                elif kind == "end":
                    if child.job is not None and child.job.delivery.receipt == event[1]:
                        child.job = None
                        child.terminate_at = None
                elif kind == "coroutine":
                    job = _job_from_record(event[1:])
                    child.coroutines[job.delivery.receipt] = job
                elif kind == "coroutines-ended":
                    for receipt in event[1]:
                        child.coroutines.pop(receipt, None)
                elif kind == "applied":
                    self._acknowledged(child, event[1], event[2] if len(event) > 2 else None)

    def _reap(self, child: _Child) -> None:
        self._read_events(child)
        child.process.join(timeout=1.0)
        if child.process.is_alive():
            return
        self._children.remove(child)
        processed, failed, job = child.final()
        self._finished_processed += processed
        self._finished_failed += failed
        code = child.process.exitcode
        how = f"signal {signal.Signals(-code).name}" if code is not None and code < 0 else f"exit code {code}"
        # Its coroutines were settled by nobody, even when we ended it (a time limit).
        lost = [job] if job is not None and not child.killed else []
        self._settle_lost([*lost, *child.coroutines.values()], how)
        self._forget(child)
        if self._warm or self._cold or child.retiring:
            return
        if code != 0 and not child.killed:
            log.error("Process %s (pid %s) exited with code %s", child.process.name, child.process.pid, code)
        self._children.append(self._spawn())

    def _settle_lost(self, jobs: Sequence[Job], how: str) -> None:
        if not jobs:
            return
        completions = [
            Completion(job, Outcome(LOST, task_id=job.task_id, task_name=job.task_name, reason=how))
            for job in jobs
        ]
        self.settler.give_up = self._cold
        self.settler.settle(completions)

    def _enforce_time_limits(self) -> None:
        now = time.monotonic()
        for child in self._children:
            if child.terminate_at is not None and now >= child.terminate_at:
                child.terminate_at = None
                running = child.running()
                if running is not None and running.task_id == child.terminating and not child.killed:
                    # The interrupt did not end the task (stuck in C code, or it caught
                    # the exception): end the process, as for a hard time limit.
                    child.killed = True
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(child.process.pid or 0, signal.SIGKILL)
                    self.settler.settle(
                        [Completion(running, terminated_outcome(running, self.app, signal.SIGKILL))]
                    )
                    child.job = None
                    continue
            job = child.job
            if job is None or child.killed or job.deadline is None or now < job.deadline:
                continue
            child.killed = True
            with contextlib.suppress(ProcessLookupError):
                os.kill(child.process.pid or 0, signal.SIGKILL)
            assert job.time_limit is not None
            # The child's prefetched messages come back when their leases run out.
            self.settler.settle([Completion(job, time_limit_outcome(job, job.time_limit))])
            child.job = None

    def _signal_children(self, sig: int) -> None:
        for child in self._children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child.process.pid or 0, sig)

    def _stop_all(self) -> None:
        """Cold path (and the end of every run): no child may outlive the supervisor."""
        if self._children:
            for child in self._children:
                child.killed = True
            self._signal_children(signal.SIGKILL)
            for child in list(self._children):
                child.process.join(2.0)
                self._read_events(child)
                processed, failed, job = child.final()
                lost = [job] if job is not None else []
                self._settle_lost([*lost, *child.coroutines.values()], "cold shutdown")
                self._finished_processed += processed
                self._finished_failed += failed
                self._forget(child)
            self._children.clear()
        self._selector.close()
        self._wake.close()
