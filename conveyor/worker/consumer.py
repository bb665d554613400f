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
import contextlib
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from conveyor import signals, states
from conveyor.backends.base import ResultRecord
from conveyor.brokers.base import Delivery
from conveyor.exceptions import BrokerError, NotRegistered, SerializationError
from conveyor.message import Message, decode
from conveyor.monitor.events import received_event, started_event
from conveyor.retry import parse_rate
from conveyor.serializers import accepted
from conveyor.task import Request
from conveyor.worker.limits import RateGate
from conveyor.worker.pools import LOST, Completion, Job, Pool, has_coroutine_tasks
from conveyor.worker.runner import (
    Outcome,
    expired,
    label,
    not_registered,
    revoked,
    undecodable,
)
from conveyor.worker.settle import Settler

if TYPE_CHECKING:
    from conveyor.app import Conveyor
    from conveyor.task import Task

log = logging.getLogger("conveyor.worker")
T = TypeVar("T")

SETTLE_DELAY_S = 0.005  # longest an outcome waits to share a write with others
SETTLE_BATCH = 32
BURST_MAX = SETTLE_BATCH  # most messages an inline consumer fetches at once while a backlog lasts
TAKE_AHEAD = BURST_MAX  # most early-ack messages acked in one write, ahead of running them
STALL_S = 0.1  # a task running this long makes its process give back what it prefetched

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
        max_tasks: int | None = None,
        max_memory_kib: int | None = None,
    ) -> None:
        self.app = app
        self.broker = app.broker
        self.backend = app.backend
        self.pool = pool
        self.queues = list(queues)
        self.hostname = hostname
        self.capacity = max(1, pool.concurrency * max(1, prefetch_multiplier))
        self._coroutines = False  # dispatching coroutine tasks too (_start_pool)
        self._burst = 0  # inline pools: fetch size beyond capacity while a backlog lasts
        self.lease_s = lease_s
        self.shutdown_timeout_s = shutdown_timeout_s
        self.max_deliveries = max_deliveries
        self.rate_gate = RateGate()
        self.content_types = accepted(app.conf.accept_content)  # what this worker deserializes
        # Early-ack messages acked ahead of running them while a backlog lasts (speed,
        # at the risk of losing them with a SIGKILLed process): 0 = never.
        self.take_ahead = max(0, min(TAKE_AHEAD, int(app.conf.worker_early_ack_ahead)))
        self.settler = Settler(app, hostname=hostname, max_deliveries=max_deliveries)
        self.max_tasks = max_tasks
        self.max_memory_kib = max_memory_kib  # prefork children only (worker_max_memory_per_child)
        self._cond = threading.Condition()
        self._reserved: dict[str, Delivery] = {}  # receipt -> every leased, unsettled delivery
        self._incoming: collections.deque[Delivery] = collections.deque()
        self._pending_acks: list[Delivery] = []
        # receipt -> decoded message: acked ahead of running (_take_ahead), not started.
        self._taken: dict[str, Message] = {}
        self._pending_records: list[ResultRecord] = []
        self._unsettled: list[Completion] = []  # finished, not yet written (adaptive batching)
        self._settle_by = 0.0  # monotonic deadline for the oldest unsettled outcome
        # A plain flag, not an Event: request_stop() runs in signal handlers, and an
        # Event's lock taken there deadlocks if the main thread held it when the signal came.
        self._fetching = False
        self._stopped = threading.Event()
        self._task_running = threading.Event()  # wakes the stall guard (inline pools)
        self._warm = False
        self._cold = False
        self._warm_deadline = 0.0
        self._threads: list[threading.Thread] = []
        self._rates: dict[str, float | None] = {}
        self.events = self.settler.events
        # Task ids revoked by app.control.revoke: dropped (REVOKED) when fetched.
        # Updated from another thread (set.add is atomic), read here per message.
        self.revoked: set[str] = set()

    # -- control -----------------------------------------------------------------
    def request_stop(self, *, cold: bool = False) -> None:
        """Signal-safe: the first call starts a warm shutdown, a cold one stops now."""
        if cold or self._warm:
            self._cold = True
        else:
            self._warm = True
            self._warm_deadline = time.monotonic() + self.shutdown_timeout_s
        self._fetching = False
        self.pool.wakeup()

    def abandon(self, reason: str, *, grace_s: float) -> bool:
        """From another thread: stop at once, giving back every message not started.

        Returns True when the main loop has ended within ``grace_s``; False while a
        task still runs in it.
        """
        self.request_stop(cold=True)
        self.broker.wake()  # out of a blocking fetch
        self._give_back(reason)
        return self._stopped.wait(grace_s)

    def _start_pool(self) -> None:
        """Start the pool; make room for coroutine tasks when the app has any.

        The coroutines in flight are held like prefetched messages (leased, their
        leases kept), so the prefetch room grows by as many as may run at once.
        """
        self.pool.start()
        slots = self.pool.coroutine_concurrency
        if slots and (not self.pool.concurrency or has_coroutine_tasks(self.app)):
            self._coroutines = True
            self.capacity += slots

    def run(self) -> None:
        self._start_pool()
        self._serve()

    def _serve(self) -> None:
        """Fetch in a thread; dispatch, wait for completions and settle in this one."""
        self._fetching = True
        self._start_thread(self._fetch_loop, "fetcher")
        self._start_thread(self._lease_loop, "lease-keeper")
        if self.pool.inline:
            self._start_thread(self._stall_guard, "stall-guard")
        try:
            while not self._cold:
                if self._warm:
                    if self._warm_step():
                        break
                    continue
                self.poll_once(timeout_s=1.0)
        finally:
            self._shutdown()

    def run_inline(self) -> None:
        """The loop for a pool that runs each task in this thread (solo, and every
        prefork child): fetch here when nothing is waiting, run, settle in batches.

        No fetcher thread: with one task at a time there is nothing to overlap, and a
        second thread would only contend with this one for the GIL and the database.
        With coroutine tasks there is: their outcomes arrive while this thread would
        block in a fetch, so the fetch moves to a thread of its own (``_serve``).
        """
        self._start_pool()
        if self._coroutines:
            self._serve()
            return
        self._start_thread(self._lease_loop, "lease-keeper")
        self._start_thread(self._stall_guard, "stall-guard")
        backoff = 0.1
        try:
            while not self._cold and not self._warm:
                if not self._incoming:
                    self._flush()  # write finished work before blocking
                    limit = max(self._room(), self._burst)
                    try:
                        deliveries = self.broker.fetch(
                            self.queues, limit=limit, lease_s=self.lease_s, timeout_s=self._idle_wait()
                        )
                        backoff = 0.1
                    except BrokerError as exc:
                        log.error("Cannot fetch from the broker: %s; retrying in %.1fs", exc, backoff)
                        time.sleep(backoff)
                        backoff = min(backoff * 2, 10.0)
                        continue
                    # A full batch means a backlog: take twice as many next time, so a
                    # drain pays one fetch and one settle per up to BURST_MAX tasks
                    # instead of per prefetch window. Safe for long tasks: the stall
                    # guard gives unstarted messages back after STALL_S.
                    self._burst = min(2 * limit, BURST_MAX) if len(deliveries) >= limit else 0
                    if deliveries:
                        self.accept(deliveries)
                self.poll_once(timeout_s=0.0)
        finally:
            self._shutdown()

    def _stall_guard(self) -> None:
        """Give back prefetched messages stuck behind a long task.

        A process running one task at a time holds its prefetched messages until that
        task ends; behind a task that runs for minutes they would wait while other
        processes sit idle. Once the current task has run for STALL_S, the messages
        not yet started go back to the queue for any consumer to take.
        """
        while not self._stopped.is_set():
            # Asleep while nothing runs (an idle worker must cost no CPU).
            if not self._task_running.wait(1.0) or self._stopped.wait(STALL_S / 2):
                continue
            active = [job for job in self.pool.active() if not job.coroutine]  # coroutines don't block
            if not active or not self._incoming:
                continue
            if time.monotonic() - active[0].started_at < STALL_S:
                continue
            self._give_back("given back behind a long task", include_held=False)

    def _idle_wait(self) -> float:
        held = self.rate_gate.next_due()
        return 1.0 if held is None else max(0.0, min(1.0, held - time.time()))

    def poll_once(self, timeout_s: float) -> None:
        """One turn of the main loop: dispatch, wait for completions, refill, settle.

        Freed slots get their next task *before* the settle writes, so children run
        while the parent talks to the store. Settling is batched adaptively: with a
        backlog, completions gather for up to SETTLE_DELAY_S (or SETTLE_BATCH of
        them) and are written in one transaction; with none, they are written at
        once, so a lone task's round trip pays no delay. Early acks and STARTED
        records never wait: they are written before their task runs (``_start``).
        """
        waiting = self._has_pending()
        self._dispatch()
        waiting = self._arm_settle(waiting)
        next_hold = self.rate_gate.next_due()
        if next_hold is not None:
            timeout_s = max(0.0, min(timeout_s, next_hold - time.time()))
        if waiting:
            timeout_s = min(timeout_s, max(0.0, self._settle_by - time.monotonic()))
        if self._incoming and self.pool.idle_slots() > 0 and not self._coroutines:
            # (With coroutines, what is left waits for a slot of its own kind: a free
            # sync slot must not turn this wait into a spin.)
            timeout_s = 0.0
        completions = self.pool.poll(timeout_s)
        if completions:
            if not self.pool.inline:
                # Refill freed slots before the settle writes; an inline pool would
                # run the next task right here and hold its outcome back instead.
                self._dispatch()
            with self._cond:
                self._unsettled.extend(completions)
                self._cond.notify_all()  # finished work frees prefetch room
        self._arm_settle(waiting)
        if self._should_settle():
            pending, self._unsettled = self._unsettled, []
            self._settle(pending)

    def _has_pending(self) -> bool:
        return bool(self._unsettled or self._pending_acks or self._pending_records)

    def _arm_settle(self, had_pending: bool) -> bool:
        """Start the settle clock when the first outcome arrives.

        Armed only on that first arrival: re-arming on later ones would let a steady
        stream postpone the write for ever.
        """
        has = self._has_pending()
        if has and not had_pending:
            self._settle_by = time.monotonic() + SETTLE_DELAY_S
        return has

    def _should_settle(self) -> bool:
        if not (self._unsettled or self._pending_acks or self._pending_records):
            return False
        busy = bool(self._incoming) and not self._warm
        return not busy or len(self._unsettled) >= SETTLE_BATCH or time.monotonic() >= self._settle_by

    def _start_thread(self, target: Callable[[], None], name: str) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        self._threads.append(thread)
        thread.start()

    # -- fetching ----------------------------------------------------------------
    def _room(self) -> int:
        # Messages waiting for a rate-limit slot, and finished ones waiting to be
        # settled, do not count: neither must keep the worker from fetching work.
        return self.capacity - (len(self._reserved) - len(self.rate_gate.items()) - len(self._unsettled))

    def _wants_more(self) -> bool:
        """Fetch in chunks: when half the prefetch room is free, or nothing is left to
        dispatch. Refetching after every completed task would cost a write
        transaction (and a GIL hand-over) per task."""
        room = self._room()
        return room > 0 and (room >= max(1, self.capacity // 2) or not self._incoming)

    def _fetch_loop(self) -> None:
        backoff = 0.1
        while self._fetching:
            with self._cond:
                while self._fetching and not self._wants_more():
                    self._cond.wait(1.0)
                room = self._room()
            if not self._fetching:
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
        queues = self.queues
        if any(d.queue not in queues for d in deliveries):
            # A fetch begun before cancel_consumer: what it found there is not ours now.
            for d in deliveries:
                if d.queue not in queues:
                    with contextlib.suppress(BrokerError):
                        self.broker.nack(d, retry_at=None, reason="queue no longer consumed")
            deliveries = [d for d in deliveries if d.queue in queues]
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
        jobs: list[Job] = []
        room = self.pool.idle_slots()
        coroutine_room = self.pool.idle_coroutine_slots() if self._coroutines else 0
        while self._incoming and (room > 0 or coroutine_room > 0) and not (self._warm or self._cold):
            with self._cond:  # the stall guard may take them back meanwhile
                if not self._incoming:
                    break
                delivery = self._incoming.popleft()
            message = None
            if self._coroutines:
                message = self._peek(delivery)
                task = self.app.tasks.get(message.task) if message is not None else None
                if (
                    message is not None
                    and task is not None
                    and not task.is_coroutine
                    and not self.pool.concurrency
                ):
                    from conveyor.worker.aio import unsupported_sync

                    self._settle_one(delivery, unsupported_sync(message))
                    continue
                if (coroutine_room if task is not None and task.is_coroutine else room) <= 0:
                    # Its kind's slots are full: it waits at the head, in order.
                    with self._cond:
                        self._incoming.appendleft(delivery)
                    break
            job = self._prepare(delivery, now, message)
            if job is None:
                continue
            if job.coroutine:
                coroutine_room -= 1
            else:
                room -= 1
            jobs.append(job)
        if jobs:
            self._start(jobs)

    def _peek(self, delivery: Delivery) -> Message | None:
        """The decoded message, to see which kind of slot it needs; None if undecodable
        (``_prepare`` settles it then)."""
        with self._cond:
            taken = self._taken.get(delivery.receipt)
        try:
            return taken or decode(delivery.body, self.content_types)
        except SerializationError:
            return None

    def _start(self, jobs: Sequence[Job]) -> None:
        """Hand jobs to the pool, once what must precede their code is in the store.

        Early ack (DESIGN.md, "Delivery": at most once, even if the whole worker
        dies): the ack is written *before* the task runs, so a task that started and
        was then SIGKILLed with its worker does not come back after its lease. The
        STARTED record of a ``track_started`` task is written then too, so a client
        sees it while the task runs. One write covers these, the outcomes waiting to
        be settled and, only when ``worker_early_ack_ahead`` allows it, while a
        backlog lasts, the acks of the next early-ack messages this process will run
        (``_take_ahead``). Off by default: a process SIGKILLed while holding those
        would lose them, and Conveyor's default is to lose nothing.

        On Redis that write goes out without waiting for its reply: once sent it
        reaches Redis even if the process is then killed. The reply is read by the
        task's own first Redis command or once the pool has the jobs (after the task,
        for a pool that runs it in this thread); a failed write is sent again then.
        """
        for job in jobs:
            if not job.acks_late:
                job.early_acked = True
                if not job.acked:
                    self._pending_acks.append(job.delivery)
        if self._pending_acks and self._burst and self.take_ahead:
            self._take_ahead()
        written = bool(self._pending_acks or self._pending_records)
        if written:
            pending, self._unsettled = self._unsettled, []
            self._settle(pending, reply_later=True)
        for job in jobs:
            self._task_running.set()
            try:
                self.pool.submit(job)
            finally:
                if self.pool.inline:
                    self._task_running.clear()
        if written:  # acks_late jobs alone wrote nothing ahead of their start
            self._retrying(self.broker.read_replies)

    def _take_ahead(self) -> None:
        """Ack, with the write that acks the task starting now, the next ``take_ahead``
        early-ack messages waiting here: this process runs them next.

        Until they start they are held as copies: given back (stall guard, warm
        shutdown, a dead supervisor) they are published anew, since their originals
        are gone. Tasks that may wait in the worker (rate limits) are not taken.
        """
        now = time.time()
        with self._cond:  # the stall guard gives messages back from another thread
            for delivery in list(self._incoming)[: self.take_ahead]:
                if delivery.receipt in self._taken:
                    continue
                try:
                    message = decode(delivery.body, self.content_types)
                except SerializationError:
                    continue
                task = self.app.tasks.get(message.task)
                if (
                    task is None
                    or task.acks_late
                    or self.rate_interval(task)
                    or message.id in self.revoked
                    or (message.expires is not None and now > message.expires)
                ):
                    continue
                self._taken[delivery.receipt] = message
                self._pending_acks.append(delivery)

    def _prepare(self, delivery: Delivery, now: float, decoded: Message | None = None) -> Job | None:
        with self._cond:
            taken = self._taken.pop(delivery.receipt, None)
        try:
            message = taken or decoded or decode(delivery.body, self.content_types)
        except SerializationError as exc:
            signals.task_rejected.send(sender=self, message=delivery, exc=exc)
            self._settle_one(delivery, undecodable(delivery.body, exc))
            return None
        task = self.app.tasks.get(message.task)
        if task is None:
            self._emit_received(message, now, started=False)
            if signals.task_unknown.receivers:
                unknown = NotRegistered(f"task {message.task!r} is not registered on this worker")
                signals.task_unknown.send(
                    sender=self, name=message.task, id=message.id, message=message, exc=unknown
                )
            self._settle_one(delivery, not_registered(message))
            return None
        if message.id in self.revoked:
            self._emit_received(message, now, started=False)
            self._signal_revoked(task, message, delivery, expired=False)
            self._settle_one(
                delivery,
                revoked(
                    message.id,
                    message.task,
                    queue=message.queue,
                    message=message,
                    reason="revoked before it started",
                ),
            )
            return None
        if message.expires is not None and now > message.expires:
            self._emit_received(message, now, started=False)
            self._signal_revoked(task, message, delivery, expired=True)
            self._settle_one(delivery, expired(message, now))
            return None
        # A taken message is acked: it runs now even if a rate limit was set since.
        interval = None if taken is not None else self.rate_interval(task)
        if interval and not self._rate_allows(task, delivery, interval, now, message.id):
            return None
        acked = taken is not None or bool(interval and not task.acks_late)  # see _take_slot
        log.info("%s received", label(message.task, message.id))
        self._emit_received(message, now, started=True)
        if signals.task_received.receivers:
            signals.task_received.send(sender=self, request=self._request(message, delivery))
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
            coroutine=task.is_coroutine,
            meta={"args": message.args, "kwargs": message.kwargs, "retries": message.retries},
            acked=acked,
            message=message,  # every pool runs the job in this process: not decoded again
        )

    def _request(self, message: Message, delivery: Delivery) -> Request:
        return Request.from_message(message, hostname=self.hostname, attempt=delivery.attempt)

    def _signal_revoked(
        self, task: Task[Any, Any], message: Message, delivery: Delivery, *, expired: bool
    ) -> None:
        if signals.task_revoked.receivers:
            request = self._request(message, delivery)
            signals.task_revoked.send(
                sender=task, request=request, terminated=False, signum=None, expired=expired
            )

    def _emit_received(self, message: Message, now: float, *, started: bool) -> None:
        events = self.events
        if events is None:
            return
        received = received_event(message, self.hostname, now)
        if started:
            events.emit_many(
                (received, started_event(message.id, message.task, message.queue, self.hostname, now))
            )
        else:
            events.emit(received)

    # -- control (called from the worker's control thread) ---------------------------
    def set_queues(self, queues: Sequence[str]) -> None:
        """Fetch from ``queues`` from the next fetch on (add_consumer, cancel_consumer).

        A new list, never changed in place: the fetching thread reads ``self.queues``
        once per fetch and must not see it half-changed.
        """
        self.queues = list(queues)

    def set_rate_limit(self, task_name: str, rate: str | float | None) -> None:
        """Change a task's rate limit in this process until it exits (app.control.rate_limit)."""
        self._rates[task_name] = parse_rate(rate)

    def terminate(self, task_id: str) -> bool:
        return self.pool.terminate(task_id)

    def active_jobs(self) -> list[Job]:
        return list(self.pool.active())

    def reserved_deliveries(self) -> list[Delivery]:
        with self._cond:
            return list(self._incoming)

    def held_deliveries(self) -> list[Delivery]:
        """Messages waiting here for their rate-limit slot (inspect's "scheduled")."""
        with self._cond:
            return self.rate_gate.items()

    def rate_interval(self, task: Task[Any, Any]) -> float | None:
        if task.name not in self._rates:
            self._rates[task.name] = parse_rate(task.rate_limit)
        return self._rates[task.name]

    def _rate_allows(
        self, task: Task[Any, Any], delivery: Delivery, interval: float, now: float, task_id: str
    ) -> bool:
        wait = self._retrying(lambda: self._take_slot(task, delivery, interval))
        if wait <= 0:
            return True
        if wait <= RateGate.HOLD_MAX_S and not self.rate_gate.holding(task.name):
            self.rate_gate.hold(task.name, delivery, now + wait)
            log.info(
                "%s held back by its rate limit %s: runs in %.1fs",
                label(task.name, task_id),
                task.rate_limit,
                wait,
            )
        else:
            retry_at = self.rate_gate.give_back_at(wait, interval, now)
            log.info(
                "%s held back by its rate limit %s: back in the queue, due in %.1fs",
                label(task.name, task_id),
                task.rate_limit,
                retry_at - now,
            )
            self._retrying(lambda: self.broker.nack(delivery, retry_at=retry_at, reason="rate limited"))
            self._release([delivery])
        return False

    def _take_slot(self, task: Task[Any, Any], delivery: Delivery, interval: float) -> float:
        """Take a rate-limit slot; an early-ack task is acked in the same write, so
        it starts the moment it has its slot (the runs stay ``interval`` apart)."""
        with self.broker.batch():
            wait = self.broker.rate_limit_wait(task.name, interval)
            if wait <= 0 and not task.acks_late:
                self.broker.ack([delivery])
        return wait

    # -- settling ----------------------------------------------------------------
    def _settle_one(self, delivery: Delivery, outcome: Outcome) -> None:
        # Never started, so never early-acked: the settle acks or dead-letters it.
        job = Job(delivery, task_id=outcome.task_id or "", task_name=outcome.task_name or "", acks_late=False)
        self._settle([Completion(job, outcome)])

    def _settle(self, completions: list[Completion], *, reply_later: bool = False) -> None:
        acks, records = self._pending_acks, self._pending_records
        self._pending_acks, self._pending_records = [], []
        self.settler.give_up = self._cold
        self.settler.settle(completions, acks=acks, records=records, reply_later=reply_later)
        self._release([c.job.delivery for c in completions])
        if self.max_tasks and self.settler.processed >= self.max_tasks and not self._warm:
            self.request_stop()  # recycled by the supervisor (max_tasks_per_child)
        if self.max_memory_kib and not self._warm and (rss := resident_kib()) > self.max_memory_kib:
            log.warning(
                "Process %s uses %d KiB, over worker_max_memory_per_child (%d KiB): replacing it",
                os.getpid(), rss, self.max_memory_kib,
            )  # fmt: skip
            self.request_stop()

    @property
    def processed(self) -> int:
        return self.settler.processed

    @property
    def failed(self) -> int:
        return self.settler.failed

    def _retrying(self, operation: Callable[[], T]) -> T:
        self.settler.give_up = self._cold
        return self.settler.retrying(operation)

    def _flush(self) -> None:
        if self._unsettled or self._pending_acks or self._pending_records:
            pending, self._unsettled = self._unsettled, []
            self._settle(pending)

    def _release(self, deliveries: Sequence[Delivery]) -> None:
        with self._cond:
            for d in deliveries:
                self._reserved.pop(d.receipt, None)
            self._cond.notify_all()

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

    def _give_back(self, reason: str = "worker shutting down", *, include_held: bool = True) -> None:
        """Return prefetched, unstarted messages to the queue so another worker takes them now."""
        with self._cond:
            waiting = list(self._incoming) + (self.rate_gate.drain() if include_held else [])
            self._incoming.clear()
            taken = {d.receipt: self._taken.pop(d.receipt) for d in waiting if d.receipt in self._taken}
        if taken:
            # Acked already (_take_ahead): a new copy is the only way back.
            copies = list(taken.values())
            try:
                self._retrying(lambda: self.broker.publish_many(copies))
            except BrokerError as exc:
                log.error("Could not give back %d taken message(s): %s", len(copies), exc)
        for delivery in waiting:
            if delivery.receipt in taken:
                continue
            try:
                self.broker.nack(delivery, retry_at=None, reason=reason)
            except BrokerError as exc:
                log.error("Could not give a message back (its lease will run out): %s", exc)
        self._release(waiting)

    def _shutdown(self) -> None:
        self._fetching = False
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
            if self.events is not None:
                self.events.close()

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


def resident_kib() -> int:
    """This process's resident memory now, in KiB (its peak where /proc is missing)."""
    try:
        with open("/proc/self/statm", "rb") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024
    except (OSError, ValueError, IndexError):
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak // 1024 if sys.platform == "darwin" else peak
