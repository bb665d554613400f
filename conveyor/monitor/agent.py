"""The monitoring side of a running worker: its heartbeat and its control thread.

Runs in the worker's main process only (the prefork supervisor, or the one
process of the threads and solo pools). Prefork children take part through the
supervisor: it forwards revokes and rate limits to them over a pipe, asks them
for what they prefetched or hold for a rate limit, and reports what they run
from the slot each child keeps in memory shared with it.

What ``revoke(terminate=True)`` can do depends on the pool:

- prefork: the child running the task gets SIGUSR2, which raises
  ``TaskTerminated`` inside the task (its ``finally`` blocks run) and the child
  records REVOKED; a child still running the task a second later is SIGKILLed,
  the result recorded REVOKED by the supervisor and the child replaced;
- threads: ``TaskTerminated`` is raised in the task's thread asynchronously: it
  takes effect at the thread's next Python bytecode, so a task blocked inside a C
  call (a socket read without timeout) stops only when that call returns;
- solo: SIGUSR2 to the worker's own main thread, which interrupts even a
  blocking system call, as in prefork (there is no process to kill after it).
"""

from __future__ import annotations

import logging
import os
import resource
import time
from typing import TYPE_CHECKING, Any

from conveyor.brokers.base import mask_url
from conveyor.exceptions import BrokerError, SerializationError
from conveyor.message import decode
from conveyor.monitor.control import ControlError, ControlListener, describe_job, load_revoked
from conveyor.monitor.workers import Heartbeat, loadavg

if TYPE_CHECKING:
    from conveyor.brokers.base import Delivery
    from conveyor.worker.main import Worker

log = logging.getLogger("conveyor.worker")


class WorkerAgent:
    """Heartbeat + control listener for one Worker; implements ``ControlTarget``."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.app = worker.app
        self.started_at = time.time()
        self.heartbeat = Heartbeat(
            self.app,
            name=worker.hostname,
            pool=worker.pool_kind,
            concurrency=worker.concurrency,
            queues=list(worker.queues),
            snapshot=self._snapshot,
        )
        self.listener = ControlListener(self.app, worker.hostname, self)

    def start(self) -> None:
        """Before the pool starts: revokes made while no worker ran apply from the first task."""
        try:
            revoked = load_revoked(self.app)
        except BrokerError as exc:
            log.warning("Cannot load revoked task ids: %s", exc)
            revoked = set()
        self.worker.runner.revoked.update(revoked)
        try:
            self.listener.start()
        except BrokerError as exc:
            log.warning("Control commands unavailable: %s", exc)
        self.heartbeat.start()

    def stop(self) -> None:
        self.listener.stop()
        self.heartbeat.stop(offline=True)

    def _snapshot(self) -> dict[str, Any]:
        runner = self.worker.runner
        return {
            "active": len(self._active_jobs()),
            "processed": runner.processed,
            "failed": runner.failed,
            "concurrency": self.worker.pool_size,  # pool_grow, pool_shrink and autoscale change these
            "queues": list(self.worker.queues),
        }

    def _active_jobs(self) -> list[dict[str, Any]]:
        from conveyor.worker.prefork import PreforkSupervisor

        runner = self.worker.runner
        if isinstance(runner, PreforkSupervisor):
            return [describe_job(job, pid=pid) for job, pid in runner.active_jobs()]
        return [describe_job(job) for job in runner.active_jobs()]

    # -- ControlTarget ---------------------------------------------------------------
    def active(self) -> list[dict[str, Any]]:
        return self._active_jobs()

    def reserved(self) -> list[dict[str, Any]]:
        """Prefetched, not started (a prefork supervisor asks each child: every child
        is its own consumer)."""
        return _deliveries(self.worker.runner.reserved_deliveries())

    def scheduled(self) -> list[dict[str, Any]]:
        """Messages held in memory until their rate-limit slot (eta and countdown
        messages wait in the broker, not in a worker: ``conveyor queues`` counts them)."""
        return _deliveries(self.worker.runner.held_deliveries())

    def stats(self) -> dict[str, Any]:
        runner = self.worker.runner
        usage = resource.getrusage(resource.RUSAGE_SELF)
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        return {
            "hostname": self.worker.hostname,
            "pid": os.getpid(),
            "pool": self.worker.pool_kind,
            "concurrency": self.worker.pool_size,
            "queues": list(self.worker.queues),
            "broker": mask_url(self.app.conf.broker_url),
            "processed": runner.processed,
            "failed": runner.failed,
            "active": len(self._active_jobs()),
            "uptime": time.time() - self.started_at,
            "loadavg": loadavg(),
            "revoked": len(runner.revoked),
            "rusage": {
                "maxrss_kib": usage.ru_maxrss,
                "utime": usage.ru_utime + children.ru_utime,
                "stime": usage.ru_stime + children.ru_stime,
            },
        }

    def revoke(self, ids: list[str], terminate: bool) -> list[str]:
        from conveyor.worker.consumer import Consumer

        runner = self.worker.runner
        if isinstance(runner, Consumer):
            runner.revoked.update(ids)
            return [task_id for task_id in ids if terminate and runner.terminate(task_id)]
        return runner.revoke(ids, terminate)

    def set_rate_limit(self, task_name: str, rate: str | float | None) -> None:
        self.worker.runner.set_rate_limit(task_name, rate)

    def shutdown(self) -> None:
        self.worker.request_warm_shutdown()

    def add_consumer(self, queue: str) -> list[str]:
        if queue not in self.worker.queues:
            self.worker.set_queues([*self.worker.queues, queue])
        return list(self.worker.queues)

    def cancel_consumer(self, queue: str) -> list[str]:
        if queue not in self.worker.queues:
            raise ControlError(f"not consuming from queue {queue!r}")
        if len(self.worker.queues) == 1:
            raise ControlError(f"{queue!r} is this worker's only queue: add another first")
        self.worker.set_queues([q for q in self.worker.queues if q != queue])
        return list(self.worker.queues)

    def pool_resize(self, delta: int) -> int:
        from conveyor.worker.prefork import PreforkSupervisor

        runner = self.worker.runner
        if not isinstance(runner, PreforkSupervisor):
            raise ControlError(f"the {self.worker.pool_kind} pool cannot be resized: use --pool=prefork")
        return runner.resize(delta)


def _deliveries(deliveries: list[Delivery]) -> list[dict[str, Any]]:
    described = []
    for delivery in deliveries:
        try:
            message = decode(delivery.body)
        except SerializationError:
            continue
        described.append(
            {
                "id": message.id,
                "name": message.task,
                "queue": delivery.queue,
                "args": message.args,
                "kwargs": message.kwargs,
                "retries": message.retries,
                "eta": message.eta,
            }
        )
    return described
