"""``worker --autoscale=MAX,MIN``: the prefork pool's size follows the backlog.

Once a second the autoscaler compares the messages ready in the worker's queues
with what the pool can hold (children x prefetch multiplier): more waiting than
that grows the pool by one child, up to MAX. A pool with an idle child and nothing
ready for ``worker_autoscale_idle_s`` shrinks by one, down to MIN; the child
stopped finishes its running task and gives back what it prefetched.

It runs as a thread of the supervisor and resizes through the supervisor's
command queue, as ``pool_grow``/``pool_shrink`` do: only the supervisor's loop
touches its children.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING

from conveyor.exceptions import BrokerError

if TYPE_CHECKING:
    from conveyor.worker.prefork import PreforkSupervisor

log = logging.getLogger("conveyor.worker")

CHECK_S = 1.0


class Autoscaler:
    def __init__(self, supervisor: PreforkSupervisor, maximum: int, minimum: int, *, idle_s: float) -> None:
        self.supervisor = supervisor
        self.maximum = maximum
        self.minimum = minimum
        self.idle_s = idle_s
        self._stop = threading.Event()
        self._idle_since: float | None = None

    def start(self) -> None:
        threading.Thread(target=self._loop, name="autoscale", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        while not self._stop.wait(CHECK_S):
            try:
                self.step()
            except BrokerError as exc:
                log.warning("Autoscale: cannot read the backlog: %s", exc)

    def step(self) -> None:
        """One decision: grow by one, shrink by one, or leave the pool as it is."""
        supervisor = self.supervisor
        stats = supervisor.app.broker.queue_stats(list(supervisor.options.queues))
        ready = sum(s.ready for s in stats)
        size = supervisor.concurrency
        if ready > size * supervisor.options.prefetch_multiplier and size < self.maximum:
            self._idle_since = None
            size = supervisor.resize(1)
            log.info("Autoscale: pool grown to %d (%d message(s) waiting)", size, ready)
            return
        if ready or supervisor.busy() >= size or size <= self.minimum:
            self._idle_since = None
            return
        now = time.monotonic()
        if self._idle_since is None:
            self._idle_since = now
        elif now - self._idle_since >= self.idle_s:
            self._idle_since = None
            size = supervisor.resize(-1)
            log.info("Autoscale: pool shrunk to %d (idle)", size)
