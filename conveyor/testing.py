"""Helpers for users' own tests: wait for a condition, drain queues in-process, run a worker.

``run_until_empty`` runs every due task of the given queues in the calling thread,
through the same runner and settling code as a real worker, so a test sees real
retries, dead letters and stored results without starting a process.
``start_worker`` runs a real worker (threads pool) in a thread for a block of a test:
what ``conveyor_worker`` (conveyor/contrib/pytest.py) gives pytest users.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from conveyor.app import Conveyor
    from conveyor.worker.consumer import Consumer

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


@contextlib.contextmanager
def start_worker(
    app: Conveyor,
    *,
    concurrency: int = 1,
    queues: Sequence[str] | None = None,
    hostname: str = "conveyor-test-worker@localhost",
    shutdown_timeout_s: float = 10.0,
) -> Iterator[Consumer]:
    """A worker consuming ``queues`` in a thread of this process while the block runs.

    Tasks run in ``concurrency`` pool threads (the threads pool), with the same runner,
    retries, results and dead letters as ``conveyor worker``. The app's tasks are
    loaded first (``import_includes``: Django is set up, discovery runs). On leaving
    the block the worker stops warmly, finishing the tasks it runs.

    Example::

        with start_worker(app):
            assert add.delay(2, 3).get(timeout=10) == 5
    """
    from conveyor.worker.consumer import Consumer
    from conveyor.worker.pools import ThreadPool

    app.import_includes()
    pool = ThreadPool(app, concurrency, hostname=hostname)
    consumer = Consumer(
        app,
        pool,
        list(queues or [app.conf.task_default_queue]),
        hostname=hostname,
        lease_s=float(app.conf.broker_visibility_timeout),
        shutdown_timeout_s=shutdown_timeout_s,
        max_deliveries=int(app.conf.task_max_deliveries),
    )
    thread = threading.Thread(target=consumer.run, name="conveyor-test-worker", daemon=True)
    thread.start()
    try:
        yield consumer
    finally:
        consumer.request_stop()
        thread.join(shutdown_timeout_s + 5)
        if thread.is_alive():  # a task that ignores the warm shutdown: stop without it
            consumer.request_stop(cold=True)
            thread.join(5)
