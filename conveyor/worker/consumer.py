"""The consumer: leases messages, hands them to the pool, settles outcomes.

Three threads, one owner each:

- the fetcher leases messages while the worker has room (prefetch) and hands them to
  the main loop;
- the lease keeper renews the lease of every message the worker holds, so a long
  task is never redelivered while its worker lives (DESIGN.md,
  broker_visibility_timeout), while a dead worker's leases run out and its messages
  return to the queue;
- the main loop dispatches to the pool, reads completions and settles them: store
  the result, publish the retry, then ack. In that order, so a crash in between
  repeats work rather than losing it.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from conveyor import states
from conveyor.backends.base import ResultRecord
from conveyor.brokers.base import Delivery
from conveyor.canvas import complete_chord
from conveyor.exceptions import BrokerError, SerializationError, WorkerLostError
from conveyor.message import Message, decode
from conveyor.retry import parse_rate
from conveyor.serialization import exception_to_dict
from conveyor.worker.limits import RateGate
from conveyor.worker.pools import LOST, Completion, Job, Pool
from conveyor.worker.runner import (
    ACK,
    DEAD,
    REQUEUE,
    RETRY,
    Outcome,
    expired,
    label,
    not_registered,
    undecodable,
)

if TYPE_CHECKING:
    from conveyor.app import Conveyor
    from conveyor.task import Task

log = logging.getLogger("conveyor.worker")
T = TypeVar("T")

ACK_DELAY_S = 0.005  # longest an early ack waits to share a write with other outcomes

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


class Consumer:
    def __init__(
        self,
        app: Conveyor,
        pool: Pool,
        queues: Sequence[str],
        *,
        hostname: str,
        prefetch_multiplier: int = 4,
        lease_s: float = 30.0,
        shutdown_timeout_s: float = 60.0,
        max_deliveries: int = 10,
    ) -> None:
        self.app = app
        self.broker = app.broker
        self.backend = app.backend
        self.pool = pool
        self.queues = list(queues)
        self.hostname = hostname
        self.capacity = max(1, pool.concurrency * max(1, prefetch_multiplier))
        self.lease_s = lease_s
        self.shutdown_timeout_s = shutdown_timeout_s
        self.max_deliveries = max_deliveries
        self.rate_gate = RateGate()
        self.processed = 0
        self.failed = 0
        self._cond = threading.Condition()
        self._reserved: dict[str, Delivery] = {}  # receipt -> every leased, unsettled delivery
        self._incoming: collections.deque[Delivery] = collections.deque()
        self._pending_acks: list[Delivery] = []
        self._pending_records: list[ResultRecord] = []
        self._fetching = threading.Event()
        self._stopped = threading.Event()
        self._warm = False
        self._cold = False
        self._warm_deadline = 0.0
        self._threads: list[threading.Thread] = []
        self._rates: dict[str, float | None] = {}

    # -- control -----------------------------------------------------------------
    def request_stop(self, *, cold: bool = False) -> None:
        """Signal-safe: the first call starts a warm shutdown, a cold one stops now."""
        if cold or self._warm:
            self._cold = True
        else:
            self._warm = True
            self._warm_deadline = time.monotonic() + self.shutdown_timeout_s
        self._fetching.clear()
        self.pool.wakeup()

    def run(self) -> None:
        self.pool.start()
        self._fetching.set()
        self._start_thread(self._fetch_loop, "fetcher")
        self._start_thread(self._lease_loop, "lease-keeper")
        try:
            while not self._cold:
                if self._warm:
                    if self._warm_step():
                        break
                    continue
                self.poll_once(timeout_s=1.0)
        finally:
            self._shutdown()

    def poll_once(self, timeout_s: float) -> None:
        """One turn of the main loop: dispatch, wait for completions, refill, settle.

        Freed slots get their next task *before* the settle writes, so children run
        while the parent talks to the store. Early acks ride in the same settle batch;
        when nothing completes they are flushed within ACK_DELAY_S anyway, so "acked
        once a slot has it" stays true to within a few milliseconds.
        """
        self._dispatch()
        next_hold = self.rate_gate.next_due()
        if next_hold is not None:
            timeout_s = max(0.0, min(timeout_s, next_hold - time.time()))
        if self._pending_acks or self._pending_records:
            timeout_s = min(timeout_s, ACK_DELAY_S)
        if self._incoming and self.pool.idle_slots() > 0:
            timeout_s = 0.0
        completions = self.pool.poll(timeout_s)
        if completions:
            self._dispatch()
        if completions or self._pending_acks or self._pending_records:
            self._settle(completions)

    def _start_thread(self, target: Callable[[], None], name: str) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        self._threads.append(thread)
        thread.start()

    # -- fetching ----------------------------------------------------------------
    def _room(self) -> int:
        # Messages waiting for a rate-limit slot do not count: they must not keep the
        # worker from fetching other tasks.
        return self.capacity - (len(self._reserved) - len(self.rate_gate.items()))

    def _fetch_loop(self) -> None:
        backoff = 0.1
        while self._fetching.is_set():
            with self._cond:
                while self._fetching.is_set() and self._room() <= 0:
                    self._cond.wait(1.0)
                room = self._room()
            if not self._fetching.is_set():
                return
            try:
                deliveries = self.broker.fetch(self.queues, limit=room, lease_s=self.lease_s, timeout_s=1.0)
                backoff = 0.1
            except BrokerError as exc:
                log.error("Cannot fetch from the broker: %s; retrying in %.1fs", exc, backoff)
                self._stopped.wait(backoff)
                backoff = min(backoff * 2, 10.0)
                continue
            if deliveries:
                self.accept(deliveries)
                self.pool.wakeup()

    def accept(self, deliveries: Sequence[Delivery]) -> None:
        """Take leased deliveries into the worker: they are dispatched by the main loop."""
        with self._cond:
            for d in deliveries:
                self._reserved[d.receipt] = d
            self._incoming.extend(deliveries)

    def _lease_loop(self) -> None:
        interval = max(0.2, self.lease_s / 3)
        while not self._stopped.wait(interval):
            with self._cond:
                held = list(self._reserved.values())
            if not held:
                continue
            try:
                self.broker.extend(held, lease_s=self.lease_s)
            except BrokerError as exc:
                log.error("Cannot extend leases: %s", exc)

    # -- dispatching -------------------------------------------------------------
    def _dispatch(self) -> None:
        now = time.time()
        for _key, item in self.rate_gate.due(now):
            self._incoming.appendleft(item)
        while self._incoming and self.pool.idle_slots() > 0 and not self._warm:
            delivery = self._incoming.popleft()
            job = self._prepare(delivery, now)
            if job is not None:
                if not job.acks_late:
                    # Early ack: the message is acknowledged once a pool slot has it
                    # (DESIGN.md, "Delivery"), never while it only sits prefetched here.
                    self._pending_acks.append(delivery)
                self.pool.submit(job)

    def _prepare(self, delivery: Delivery, now: float) -> Job | None:
        try:
            message = decode(delivery.body)
        except SerializationError as exc:
            self._settle_one(delivery, undecodable(delivery.body, exc), acks_late=True)
            return None
        task = self.app.tasks.get(message.task)
        if task is None:
            self._settle_one(delivery, not_registered(message), acks_late=True)
            return None
        if message.expires is not None and now > message.expires:
            self._settle_one(delivery, expired(message, now), acks_late=True)
            return None
        if not self._rate_allows(task, delivery, now):
            return None
        log.info("%s received", label(message.task, message.id))
        if task.track_started:
            self._pending_records.append(
                ResultRecord(
                    message.id,
                    states.STARTED,
                    task=message.task,
                    queue=message.queue,
                    args=message.args,
                    kwargs=message.kwargs,
                    retries=message.retries,
                    worker=self.hostname,
                    started_at=now,
                )
            )
        return Job(
            delivery,
            task_id=message.id,
            task_name=message.task,
            acks_late=task.acks_late,
            time_limit=task.time_limit,
            soft_time_limit=task.soft_time_limit,
            meta={"args": message.args, "kwargs": message.kwargs, "retries": message.retries},
        )

    def rate_interval(self, task: Task[Any, Any]) -> float | None:
        if task.name not in self._rates:
            self._rates[task.name] = parse_rate(task.rate_limit)
        return self._rates[task.name]

    def set_rate_limit(self, task_name: str, rate: str | float | None) -> None:
        self._rates[task_name] = parse_rate(rate)

    def _rate_allows(self, task: Task[Any, Any], delivery: Delivery, now: float) -> bool:
        interval = self.rate_interval(task)
        if not interval:
            return True
        wait = self._retrying(lambda: self.broker.rate_limit_wait(task.name, interval))
        if wait <= 0:
            return True
        if wait <= RateGate.HOLD_MAX_S and not self.rate_gate.holding(task.name):
            self.rate_gate.hold(task.name, delivery, now + wait)
        else:
            retry_at = self.rate_gate.give_back_at(wait, interval, now)
            self._retrying(lambda: self.broker.nack(delivery, retry_at=retry_at, reason="rate limited"))
            self._release([delivery])
        return False

    # -- settling ----------------------------------------------------------------
    def _settle_one(self, delivery: Delivery, outcome: Outcome, *, acks_late: bool) -> None:
        job = Job(
            delivery, task_id=outcome.task_id or "", task_name=outcome.task_name or "", acks_late=acks_late
        )
        self._settle([Completion(job, outcome)])

    def _settle(self, completions: list[Completion]) -> None:
        batch = _Settlement(records=self._pending_records, acks=self._pending_acks)
        self._pending_records, self._pending_acks = [], []
        for completion in completions:
            outcome = completion.outcome
            if outcome.action == LOST:
                outcome = self._lost(completion.job, outcome)
            self._log(outcome)
            self._count(outcome)
            if outcome.state is not None:
                batch.records.append(self._record(outcome))
            batch.add(completion.job, outcome)
        # Order matters: results and follow-up messages are written before the ack, so
        # a crash in between repeats a task rather than losing its outcome.
        if batch.records:
            self._retrying(lambda: self.backend.store(batch.records))
        if batch.publish:
            self._retrying(lambda: self.broker.publish_many(batch.publish))
        for delivery, reason in batch.dead:
            self._retrying(lambda d=delivery, r=reason: self.broker.dead_letter(d, reason=r))  # type: ignore[misc]
        for delivery in batch.requeue:
            self._retrying(lambda d=delivery: self.broker.nack(d, retry_at=None, reason="requeued"))  # type: ignore[misc]
        for outcome in batch.chords:
            self._retrying(lambda o=outcome: complete_chord(self.app, o.chord or {}, self.hostname))  # type: ignore[misc]
        if batch.acks:
            self._retrying(lambda: self.broker.ack(batch.acks))
        self._release([c.job.delivery for c in completions])

    def _flush(self) -> None:
        if self._pending_acks or self._pending_records:
            self._settle([])

    def _release(self, deliveries: Sequence[Delivery]) -> None:
        with self._cond:
            for d in deliveries:
                self._reserved.pop(d.receipt, None)
            self._cond.notify_all()

    def _lost(self, job: Job, outcome: Outcome) -> Outcome:
        """The process running ``job`` died (OOM killer, segfault, os._exit, SIGKILL)."""
        how = outcome.reason or "unknown"
        if job.acks_late:
            if job.delivery.attempt >= self.max_deliveries:
                exc = WorkerLostError(
                    f"worker process died ({how}) on each of {job.delivery.attempt} deliveries"
                )
                return Outcome(
                    DEAD,
                    task_id=job.task_id,
                    task_name=job.task_name,
                    state=states.FAILURE,
                    exception=exception_to_dict(exc),
                    queue=job.delivery.queue,
                    finished_at=time.time(),
                    reason=str(exc),
                    log_level="error",
                    log=f"{label(job.task_name, job.task_id)}: {exc}; dead-lettered",
                )
            # acks_late promises at least once: the message goes back for another try.
            return Outcome(
                REQUEUE,
                task_id=job.task_id,
                task_name=job.task_name,
                log_level="error",
                log=f"{label(job.task_name, job.task_id)}: worker process died ({how}); message requeued (acks_late)",
            )
        exc = WorkerLostError(f"worker process died ({how}) while running the task")
        return Outcome(
            ACK,
            task_id=job.task_id,
            task_name=job.task_name,
            state=states.FAILURE,
            exception=exception_to_dict(exc),
            queue=job.delivery.queue,
            finished_at=time.time(),
            log_level="error",
            log=f"{label(job.task_name, job.task_id)} failed: {exc}",
        )

    def _record(self, outcome: Outcome) -> ResultRecord:
        return ResultRecord(
            task_id=outcome.task_id or "",
            state=outcome.state or states.FAILURE,
            task=outcome.task_name,
            result=outcome.result,
            exception=outcome.exception,
            traceback=outcome.traceback,
            retries=outcome.retries,
            worker=self.hostname,
            queue=outcome.queue,
            args=outcome.args,
            kwargs=outcome.kwargs,
            started_at=outcome.started_at,
            finished_at=outcome.finished_at,
        )

    def _log(self, outcome: Outcome) -> None:
        if outcome.log:
            log.log(_LEVELS.get(outcome.log_level, logging.INFO), outcome.log)
        if outcome.traceback and outcome.state == states.FAILURE:
            log.debug("%s", outcome.traceback)

    def _count(self, outcome: Outcome) -> None:
        if outcome.task_id:
            self.processed += 1
            if outcome.state == states.FAILURE:
                self.failed += 1

    def _retrying(self, operation: Callable[[], T]) -> T:
        """Run a broker/backend call until it works: an outcome must not be dropped
        because the store was briefly unavailable. Gives up only at cold shutdown,
        leaving the message leased so it is redelivered."""
        delay = 0.05
        while True:
            try:
                return operation()
            except BrokerError as exc:
                if self._cold:
                    raise
                log.error("Broker operation failed: %s; retrying in %.2fs", exc, delay)
                time.sleep(delay)
                delay = min(delay * 2, 5.0)

    # -- shutdown ----------------------------------------------------------------
    def _warm_step(self) -> bool:
        """One step of a warm shutdown; True when it is complete."""
        self._give_back()
        if not self.pool.active():
            return True
        if time.monotonic() >= self._warm_deadline:
            log.warning(
                "Warm shutdown: %d task(s) still running after %.0fs; stopping them",
                len(self.pool.active()),
                self.shutdown_timeout_s,
            )
            self._cold = True
            return True
        self._flush()
        completions = self.pool.poll(min(0.5, max(0.0, self._warm_deadline - time.monotonic())))
        if completions:
            self._settle(completions)
        return False

    def _give_back(self) -> None:
        """Return prefetched, unstarted messages to the queue so another worker takes them now."""
        with self._cond:
            waiting = list(self._incoming) + self.rate_gate.drain()
            self._incoming.clear()
        for delivery in waiting:
            try:
                self.broker.nack(delivery, retry_at=None, reason="worker shutting down")
            except BrokerError as exc:
                log.error("Could not return a message at shutdown (its lease will run out): %s", exc)
        self._release(waiting)

    def _shutdown(self) -> None:
        self._fetching.clear()
        with self._cond:
            self._cond.notify_all()
        self.broker.wake()
        for thread in self._threads:
            if thread.name == "fetcher":
                thread.join(5.0)
        self._give_back()
        try:
            if self._cold:
                running = self.pool.active()
                self.pool.kill()
                self._abandon(running)
            else:
                self._flush()
                self.pool.stop(timeout_s=5.0)
        finally:
            self._stopped.set()
            try:
                self._flush()
            except BrokerError as exc:
                log.error("Could not flush at shutdown: %s", exc)

    def _abandon(self, jobs: Sequence[Job]) -> None:
        """Cold shutdown: running tasks stop unfinished; acks_late ones go back now."""
        completions = [
            Completion(
                job, Outcome(LOST, task_id=job.task_id, task_name=job.task_name, reason="cold shutdown")
            )
            for job in jobs
        ]
        if completions:
            self._cold = False  # let _retrying do its job for these last writes
            try:
                self._settle(completions)
            finally:
                self._cold = True


@dataclass
class _Settlement:
    """What one settle pass writes, grouped so each kind is one broker call."""

    records: list[ResultRecord] = field(default_factory=list)
    acks: list[Delivery] = field(default_factory=list)
    publish: list[Message] = field(default_factory=list)  # retries, chain steps, re-sent copies
    dead: list[tuple[Delivery, str]] = field(default_factory=list)
    requeue: list[Delivery] = field(default_factory=list)
    chords: list[Outcome] = field(default_factory=list)

    def add(self, job: Job, outcome: Outcome) -> None:
        delivery = job.delivery
        unacked = job.acks_late  # early-acked messages are already gone from the broker
        self.publish.extend(decode(body) for body in outcome.follow_ups)
        if outcome.chord and outcome.state in states.READY_STATES:
            self.chords.append(outcome)
        if outcome.action == RETRY and outcome.retry_body is not None:
            self.publish.append(decode(outcome.retry_body))
        elif outcome.action == DEAD:
            self.dead.append((delivery, outcome.reason or "dead-lettered"))
            unacked = False  # dead_letter() removes the message itself
        elif outcome.action == REQUEUE:
            if unacked:
                self.requeue.append(delivery)
                unacked = False
            else:  # acked at dispatch: the only way back is a new copy
                self.publish.append(decode(delivery.body))
        if unacked:
            self.acks.append(delivery)
