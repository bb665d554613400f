"""Settling outcomes: what happens to a message and its result once a task ended.

Shared by the consumer (tasks it ran) and the prefork supervisor (tasks whose
process died or ran past its hard limit), so both write outcomes the same way.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from conveyor import states
from conveyor.backends.base import Reply, ResultRecord
from conveyor.brokers.base import Delivery
from conveyor.canvas import complete_chord, count_chord_member
from conveyor.exceptions import BrokerError, WorkerLostError
from conveyor.message import Message, decode
from conveyor.monitor.events import EventBuffer, outcome_events
from conveyor.serializers import OWN_BODIES
from conveyor.worker.pools import LOST, Completion, Job, failed_job
from conveyor.worker.runner import ACK, DEAD, REQUEUE, RETRY, Outcome, label

if TYPE_CHECKING:
    from conveyor.app import Conveyor

log = logging.getLogger("conveyor.worker")
T = TypeVar("T")

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


class Settler:
    """Writes outcomes: result, follow-up messages, dead letters, then the ack."""

    def __init__(self, app: Conveyor, *, hostname: str, max_deliveries: int = 10) -> None:
        self.app = app
        self.broker = app.broker
        self.backend = app.backend
        self.hostname = hostname
        self.max_deliveries = max_deliveries
        self.processed = 0
        self.failed = 0
        self.give_up = False  # set at cold shutdown: stop retrying failed writes
        # Task events leave with the batch that settles what they describe.
        self.events = EventBuffer.for_app(app)

    def settle(
        self,
        completions: Sequence[Completion],
        *,
        acks: Sequence[Delivery] = (),
        records: Sequence[ResultRecord] = (),
        reply_later: bool = False,
    ) -> None:
        """``reply_later``: the batch may go out without waiting for the store's
        reply (``Broker.batch``); the caller then calls ``broker.read_replies()``."""
        batch = _Settlement(records=list(records), acks=list(acks))
        events = self.events
        finished = []
        for completion in completions:
            outcome = completion.outcome
            if outcome.action == LOST:
                outcome = self.lost(completion.job, outcome)
            if outcome.action == ACK and outcome.state == states.FAILURE and completion.job.acks_late:
                outcome = self._failed_late(completion.job, outcome)
            self._log(outcome)
            self._count(outcome)
            if outcome.state is not None:
                batch.records.append(self.record(outcome))
            batch.add(completion.job, outcome)
            if events is not None:
                finished.extend(outcome_events(outcome, self.hostname, completion.job.delivery.queue))
        if events is not None:
            if finished:
                events.emit_many(finished)
            batch.events = events.take_due()
        # Chords a count completed in a store that committed it apart from the batch
        # (results kept elsewhere): were the batch retried, counting again would
        # answer False and the body would never be sent.
        won: set[tuple[str, str]] = set()
        try:
            completed = self.retrying(lambda: self._write(batch, won, reply_later=reply_later))
        except BrokerError:
            if events is not None:
                events.put_back(batch.events)
            raise
        for spec in completed:
            self._complete(spec)

    def _complete(self, spec: Mapping[str, Any]) -> None:
        self.retrying(lambda: complete_chord(self.app, spec))

    def _write(
        self, batch: _Settlement, won: set[tuple[str, str]], *, reply_later: bool = False
    ) -> list[Mapping[str, Any]]:
        """Write one batch; returns the chords it completed whose body is still to send.

        One transaction where the store allows it (SQLite). Where it does not, the
        order still matters: results and follow-up messages are written before the
        ack, so a crash in between repeats a task rather than losing its outcome.
        """
        # A chord count's answer is needed here: such a batch waits for its reply.
        with self.broker.batch(reply_later=reply_later and not batch.chords):
            if batch.records:
                self.backend.store(batch.records)
            counts = self._count_chords(batch.chords, won)
            if batch.publish:
                self.broker.publish_many(batch.publish)
            for delivery, reason in batch.dead:
                self.broker.dead_letter(delivery, reason=reason)
            # With the result: a client that sees the task finished may send the key again.
            for name, owner in batch.releases:
                self.broker.release_lease(name, owner)
            for delivery in batch.requeue:
                self.broker.nack(delivery, retry_at=None, reason="requeued")
            # Answered already (SQLite, memory): the body joins this transaction too.
            waiting = [(spec, reply) for spec, reply in counts if not reply.ready]
            for spec, reply in counts:
                if reply.ready and reply.get():
                    complete_chord(self.app, spec)
            if batch.acks:
                self.broker.ack(batch.acks)
            if batch.events and self.events is not None:
                self.events.append(batch.events)
        # Answered by the EXEC (Redis): the body follows the batch.
        return [spec for spec, reply in waiting if reply.get()]

    def _count_chords(
        self, outcomes: Sequence[Outcome], won: set[tuple[str, str]]
    ) -> list[tuple[Mapping[str, Any], Reply[bool]]]:
        """Count finished chord members, in the same transaction (MULTI) as their
        results and acks where the store shares the broker's: a crash cannot count a
        member whose result was lost, nor lose the count of one whose result was stored."""
        counts: list[tuple[Mapping[str, Any], Reply[bool]]] = []
        for outcome in outcomes:
            if not outcome.chord:
                continue
            key = (str(outcome.chord["id"]), outcome.task_id or "")
            if key in won:
                reply = Reply.now(True)
            else:
                reply = count_chord_member(self.app, outcome.chord, key[1])
                if reply.ready and reply.committed and reply.get():
                    won.add(key)
            counts.append((outcome.chord, reply))
        return counts

    def lost(self, job: Job, outcome: Outcome) -> Outcome:
        """The process running ``job`` died (OOM killer, segfault, os._exit, SIGKILL)."""
        how = outcome.reason or "unknown"
        name = label(job.task_name, job.task_id)
        # A cold shutdown is the worker stopping, not the task crashing it: as in
        # Celery (unacked messages come back), acks_late work is put back.
        if job.acks_late and (self.give_up or self._option(job, "reject_on_worker_lost")):
            if job.delivery.attempt >= self.max_deliveries:
                exc = WorkerLostError(
                    f"worker process died ({how}) on each of {job.delivery.attempt} deliveries"
                )
                return failed_job(job, exc, f"{name}: {exc}; dead-lettered", action=DEAD, reason=str(exc))
            # acks_late promises at least once: the message goes back for another try.
            return Outcome(
                REQUEUE,
                task_id=job.task_id,
                task_name=job.task_name,
                log_level="error",
                log=f"{name}: worker process died ({how}); message requeued (acks_late)",
            )
        exc = WorkerLostError(f"worker process died ({how}) while running the task")
        return failed_job(job, exc, f"{name} failed: {exc}")

    def _failed_late(self, job: Job, outcome: Outcome) -> Outcome:
        """An acks_late task failed or timed out: acked, or (acks_on_failure_or_timeout
        False) dead-lettered, Celery's reject without requeue. Its failure is stored either way."""
        if self._option(job, "acks_on_failure_or_timeout"):
            return outcome
        outcome.action = DEAD
        outcome.reason = "failed with task_acks_on_failure_or_timeout off: not acked"
        return outcome

    def _option(self, job: Job, name: str) -> bool:
        """A task's own attribute (Celery's spelling) or else the task_* setting."""
        task = self.app.tasks.get(job.task_name or "")
        value = getattr(task, name, None) if task is not None else None
        return bool(getattr(self.app.conf, "task_" + name) if value is None else value)

    def record(self, outcome: Outcome) -> ResultRecord:
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

    def retrying(self, operation: Callable[[], T]) -> T:
        """Run a broker/backend call until it works: an outcome must not be dropped
        because the store was briefly unavailable. Gives up only at cold shutdown,
        leaving the message leased so it is redelivered."""
        delay = 0.05
        while True:
            try:
                return operation()
            except BrokerError as exc:
                if self.give_up:
                    raise
                log.error("Broker operation failed: %s; retrying in %.2fs", exc, delay)
                time.sleep(delay)
                delay = min(delay * 2, 5.0)


@dataclass
class _Settlement:
    """What one settle pass writes, grouped so each kind is one broker call."""

    records: list[ResultRecord] = field(default_factory=list)
    acks: list[Delivery] = field(default_factory=list)
    publish: list[Message] = field(default_factory=list)  # retries, chain steps, re-sent copies
    dead: list[tuple[Delivery, str]] = field(default_factory=list)
    requeue: list[Delivery] = field(default_factory=list)
    chords: list[Outcome] = field(default_factory=list)
    events: list[bytes] = field(default_factory=list)  # encoded task events
    releases: list[tuple[str, str]] = field(default_factory=list)  # unique tasks' leases: (name, owner)

    def add(self, job: Job, outcome: Outcome) -> None:
        delivery = job.delivery
        unacked = not job.early_acked  # early-acked messages are gone (or going) already
        self.publish.extend(decode(body, OWN_BODIES) for body in outcome.follow_ups)
        if outcome.chord and outcome.state in states.READY_STATES:
            self.chords.append(outcome)
        if outcome.action not in (RETRY, REQUEUE):  # it finished, however
            unique = outcome.unique or _ended_by_worker_lease(job, outcome)
            if unique:
                self.releases.append((unique, outcome.task_id or ""))
        if outcome.action == RETRY and outcome.retry_body is not None:
            self.publish.append(decode(outcome.retry_body, OWN_BODIES))
        elif outcome.action == DEAD:
            self.dead.append((delivery, outcome.reason or "dead-lettered"))
            unacked = False  # dead_letter() removes the message itself
        elif outcome.action == REQUEUE:
            if unacked:
                self.requeue.append(delivery)
                unacked = False
            else:  # acked at dispatch: the only way back is a new copy
                self.publish.append(decode(delivery.body, OWN_BODIES))  # accepted when fetched
        if unacked:
            self.acks.append(delivery)


def _ended_by_worker_lease(job: Job, outcome: Outcome) -> str | None:
    """The unique lease of a task the worker ended (time limit, lost process, terminated):
    such an outcome is made without the message, so its headers are read here, when
    they may hold a lease at all."""
    if not outcome.task_id or b'"unique"' not in job.delivery.body:
        return None
    from conveyor.worker.runner import unique_lease

    return unique_lease(job.message or decode(job.delivery.body))
