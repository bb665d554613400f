"""Worker: the process a user starts with ``conveyor worker``.

It owns what is process-wide (signals, logging, the banner) and runs a Consumer.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Sequence
from types import FrameType
from typing import TYPE_CHECKING

from conveyor import signals
from conveyor.app import queue_names
from conveyor.brokers.base import mask_url
from conveyor.exceptions import BrokerConnectionError
from conveyor.worker.consumer import Consumer
from conveyor.worker.pools import make_pool
from conveyor.worker.prefork import ChildOptions, PreforkSupervisor

if TYPE_CHECKING:
    from conveyor.app import Conveyor
    from conveyor.beat import BeatThread

log = logging.getLogger("conveyor.worker")

LOG_FORMAT = "[%(asctime)s: %(levelname)s/%(processName)s] %(message)s"


def setup_logging(level: str | int = "info", *, logfile: str | None = None) -> None:
    """Celery-style log lines on stderr (or ``logfile``), unless the project configured logging itself.

    As in Celery, a receiver of ``signals.setup_logging`` takes the job over: then
    nothing is configured here. ``after_setup_logger`` and ``after_setup_task_logger``
    follow either way.
    """
    root = logging.getLogger()
    numeric = level if isinstance(level, int) else logging.getLevelName(str(level).upper())
    if not isinstance(numeric, int):
        raise ValueError(f"unknown log level {level!r}: use debug, info, warning or error")
    options = {"loglevel": numeric, "logfile": logfile, "format": LOG_FORMAT, "colorize": False}
    if signals.setup_logging.receivers and signals.setup_logging.send(sender=None, **options):
        return
    _configure(root, numeric, logfile)
    signals.after_setup_logger.send(sender=None, logger=root, **options)
    signals.after_setup_task_logger.send(sender=None, logger=logging.getLogger("conveyor.task"), **options)


def _configure(root: logging.Logger, numeric: int, logfile: str | None) -> None:
    if not root.handlers or logfile:
        handler: logging.Handler = (
            logging.FileHandler(logfile, encoding="utf-8") if logfile else logging.StreamHandler(sys.stderr)
        )
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        root.addHandler(handler)
    root.setLevel(numeric)
    logging.getLogger("conveyor").setLevel(numeric)


def default_hostname() -> str:
    return f"conveyor.{os.getpid()}@{socket.gethostname()}"


class Worker:
    """One worker process: a pool of ``concurrency`` slots consuming ``queues``.

    Example::

        Worker(app, queues=["email"], concurrency=4).start()
    """

    def __init__(
        self,
        app: Conveyor,
        *,
        queues: Sequence[str] | None = None,
        concurrency: int | None = None,
        pool: str | None = None,
        hostname: str | None = None,
        prefetch_multiplier: int | None = None,
        max_tasks_per_child: int | None = None,
        beat: bool = False,
        autoscale: tuple[int, int] | None = None,
    ) -> None:
        conf = app.conf
        self.app = app
        self.queues = list(queues or queue_names(conf.task_queues) or [conf.task_default_queue])
        self.pool_kind = pool or conf.worker_pool
        if self.pool_kind == "solo":
            self.concurrency = 1
        elif self.pool_kind == "asyncio":  # coroutines at once; -c has nothing to size
            self.concurrency = int(conf.worker_async_concurrency)
        else:
            self.concurrency = int(concurrency or conf.worker_concurrency or os.cpu_count() or 1)
        if autoscale is not None:
            if self.pool_kind != "prefork":
                raise ValueError(f"--autoscale needs the prefork pool, not {self.pool_kind}")
            self.concurrency = autoscale[1]  # start at the minimum; the backlog grows it
        self.hostname = hostname or default_hostname()
        self._stopping = False
        # worker --beat: the scheduler runs in this process, as a thread (conveyor/beat.py).
        self._beat: BeatThread | None = None
        if beat:
            from conveyor.beat import BeatThread

            self._beat = BeatThread(app)
        prefetch = int(prefetch_multiplier or conf.worker_prefetch_multiplier)
        lease_s = float(conf.broker_visibility_timeout)
        shutdown_s = float(conf.worker_shutdown_timeout)
        max_deliveries = int(conf.task_max_deliveries)
        self.runner: PreforkSupervisor | Consumer
        if self.pool_kind == "prefork":
            options = ChildOptions(
                queues=self.queues,
                hostname=self.hostname,
                prefetch_multiplier=prefetch,
                lease_s=lease_s,
                shutdown_timeout_s=shutdown_s,
                max_deliveries=max_deliveries,
                max_tasks=max_tasks_per_child or conf.worker_max_tasks_per_child,
                max_memory_kib=conf.worker_max_memory_per_child,
            )
            self.runner = PreforkSupervisor(app, self.concurrency, options, autoscale=autoscale)
        else:
            in_process = make_pool(self.pool_kind, app, concurrency=self.concurrency, hostname=self.hostname)
            self.runner = Consumer(
                app,
                in_process,
                self.queues,
                hostname=self.hostname,
                prefetch_multiplier=prefetch,
                lease_s=lease_s,
                shutdown_timeout_s=shutdown_s,
                max_deliveries=max_deliveries,
            )

    @property
    def pool_size(self) -> int:
        """Pool slots now: a prefork pool's size changes with pool_grow/pool_shrink and autoscale."""
        if isinstance(self.runner, PreforkSupervisor):
            return self.runner.concurrency
        return self.concurrency

    def set_queues(self, queues: Sequence[str]) -> None:
        """Consume ``queues`` from the next fetch on (add_consumer, cancel_consumer)."""
        self.queues = list(queues)
        self.runner.set_queues(self.queues)

    def _autoscale_note(self) -> str:
        bounds = self.runner.autoscale if isinstance(self.runner, PreforkSupervisor) else None
        return f", autoscale {bounds[0]},{bounds[1]}" if bounds else ""

    def _async_note(self) -> list[str]:
        if self.pool_kind == "asyncio" or not any(t.is_coroutine for t in self.app.tasks.values()):
            return []
        per = "child" if self.pool_kind == "prefork" else "process"
        return [f"  async def:   up to {self.app.conf.worker_async_concurrency} at once per {per}"]

    def banner(self) -> str:
        tasks = sorted(self.app.tasks)
        lines = [
            f"{self.hostname} ready.",
            f"  broker:      {mask_url(self.app.conf.broker_url)}",
            f"  results:     {mask_url(self.app.backend.url)}",
            f"  queues:      {', '.join(self.queues)}",
            f"  concurrency: {self.concurrency} ({self.pool_kind}{self._autoscale_note()})",
            *self._async_note(),
            "  tasks:",
            *(f"    . {name}" for name in tasks),
        ]
        return "\n".join(lines)

    def startup_warnings(self) -> list[str]:
        """What makes tasks "unknown" later, said once at start instead."""
        warnings = []
        if not self.app.tasks:
            warnings.append(
                f"app {self.app.main!r} has no task registered: every message will be dead-lettered "
                "as unknown. Does -A name the module that defines them (or its include=/autodiscover_tasks)?"
            )
        for name, instead in self.app.conf.unhonoured().items():
            warnings.append(f"setting {name} is not honoured by Conveyor: {instead}")
        for other, names in self.app.split_registry().items():
            shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
            warnings.append(
                f"a second Conveyor app {other!r} on the same broker holds {shown}, which this worker "
                f"(app {self.app.main!r}) does not know: keep one app per project, and use @shared_task "
                "or import the app instead of creating another"
            )
        return warnings

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        cold = signum == signal.SIGQUIT or self._stopping
        name = signal.Signals(signum).name
        if cold:
            log.warning("%s: cold shutdown, running tasks stop now (acks_late ones are redelivered)", name)
        else:
            log.warning("%s: warm shutdown, finishing running tasks (again for cold shutdown)", name)
        if not self._stopping or cold:
            how = "Cold" if cold else "Warm"
            signals.worker_shutting_down.send(sender=self.hostname, sig=name, how=how, exitcode=0)
        self._stopping = True
        self.runner.request_stop(cold=cold)
        if self._beat is not None:
            self._beat.beat.stop()  # hand the leader lease over now, not after the drain

    def request_warm_shutdown(self) -> None:
        """A warm shutdown from a thread (app.control.shutdown); no-op when already stopping."""
        if not self._stopping:
            self._stopping = True
            self.runner.request_stop()

    def _wait_for_broker(self) -> bool:
        """Reach the broker before announcing "ready"; while it cannot be reached, say
        why in one line and try again with capped backoff. False: stopped meanwhile."""
        delay = 1.0
        while not self._stopping:
            try:
                self.app.broker.queue_stats(self.queues)
                return True
            except BrokerConnectionError as exc:
                log.error("Cannot reach the broker: %s; retrying in %.0fs", exc, delay)
            deadline = time.monotonic() + delay
            while not self._stopping and time.monotonic() < deadline:
                time.sleep(0.1)
            delay = min(delay * 2, 30.0)
        return False

    def start(self) -> int:
        """Run until a shutdown signal; returns the process exit code."""
        self.app.import_includes()
        signals.worker_init.send(sender=self)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
            signal.signal(sig, self._on_signal)
        if not self._wait_for_broker():
            return 0
        from conveyor.monitor.agent import WorkerAgent

        # Before "ready": a control command sent once it is printed must reach us.
        agent = WorkerAgent(self)  # heartbeats and app.control
        agent.start()
        log.info("%s", self.banner())
        for warning in self.startup_warnings():
            log.warning("%s", warning)
        self._stopping = False
        if self._beat is not None:
            self._beat.start()
        signals.worker_ready.send(sender=self)
        try:
            if isinstance(self.runner, Consumer) and self.runner.pool.inline:
                self.runner.run_inline()
            else:
                self.runner.run()
        finally:
            agent.stop()
            if self._beat is not None:
                self._beat.stop()
            signals.worker_shutdown.send(sender=self)
            self.app.close()
        log.info(
            "%s stopped: %d task(s) processed, %d failed",
            self.hostname,
            self.runner.processed,
            self.runner.failed,
        )
        return 0
