"""Helpers for users' own tests: wait for a condition, drain queues in-process.

``run_until_empty`` runs every due task of the given queues in the calling thread,
through the same runner and settling code as a real worker, so a test sees real
retries, dead letters and stored results without starting a process.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from conveyor.app import Conveyor

T = TypeVar("T")


def wait_for(
    predicate: Callable[[], T], timeout: float = 5.0, interval: float = 0.01, message: str = ""
) -> T:
    """Poll ``predicate`` until it returns something truthy; return that value.

    Raises:
        AssertionError: still falsy after ``timeout`` seconds (with ``message``).
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(message or f"condition not met within {timeout}s")
        time.sleep(interval)


def run_until_empty(app: Conveyor, queues: Sequence[str] | None = None, *, max_tasks: int = 10_000) -> int:
    """Run due tasks from ``queues`` (default: the default queue) until none is due.

    Returns how many messages were processed. Tasks with a future eta (retries with
    a countdown) are left for a later call.
    """
    from conveyor.worker.consumer import Consumer
    from conveyor.worker.pools import SoloPool

    pool = SoloPool(app, hostname="testing")
    consumer = Consumer(app, pool, list(queues or [app.conf.task_default_queue]), hostname="testing")
    processed = 0
    while processed < max_tasks:
        deliveries = app.broker.fetch(consumer.queues, limit=1, lease_s=consumer.lease_s, timeout_s=0)
        if not deliveries:
            break
        consumer.accept(deliveries)
        consumer.poll_once(timeout_s=0)
        processed += len(deliveries)
    return processed
