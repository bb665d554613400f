"""``conveyor run``: worker, scheduler and dashboard in one process tree (the dev default).

The worker runs as ``worker --beat`` does (the scheduler is a thread of its main
process, one leader among every scheduler on the broker); with ``--worker-per-queue``
each further queue gets a worker process of its own, forked from this one, so a
flood in one queue never takes the slots another queue's tasks wait for. The
dashboard, when its extra is installed, is a child process so its server's signal
handling and the worker's never meet. Stopping the main worker (SIGTERM, Ctrl+C)
stops the dashboard and the other queues' workers.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import threading
from typing import TYPE_CHECKING

import click

from conveyor.cli.context import CliState, load_tasks, pass_state, queues_option, shared_options
from conveyor.cli.dashboard import allowed_host_option
from conveyor.cli.output import split_names
from conveyor.cli.worker import POOLS, loglevel_option

if TYPE_CHECKING:
    from multiprocessing.process import BaseProcess

    from conveyor.app import Conveyor

log = logging.getLogger("conveyor.run")


def dashboard_available() -> bool:
    from conveyor.dashboard import missing_requirements

    return not missing_requirements()


def _serve_dashboard(app: Conveyor, host: str, port: int, allowed_hosts: tuple[str, ...]) -> None:
    """The dashboard child: Ctrl+C in the terminal reaches it too; it exits quietly."""
    from conveyor.dashboard import serve

    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        serve(app, host=host, port=port, auth=None, allowed_hosts=allowed_hosts)
    except Exception as exc:  # one line in the shared log, not a child's traceback
        log.error("dashboard stopped: %s", exc)
        os._exit(1)


@click.command()
@queues_option(
    "Queues to consume (default: every queue the app routes to: task_routes, tasks' queue=, beat entries).",
    envvar="CONVEYOR_QUEUES",
)
@click.option("-c", "--concurrency", type=click.IntRange(min=1), default=None, help="Worker slots.")
@click.option(
    "-P", "--pool", type=click.Choice(POOLS), default=None, help="Worker pool (default: worker_pool)."
)
@loglevel_option
@click.option("--host", default="127.0.0.1", show_default=True, help="Dashboard address.")
@click.option(
    "--port", type=click.IntRange(0, 65535), default=5555, show_default=True, help="Dashboard port."
)
@allowed_host_option
@click.option(
    "--worker-per-queue",
    is_flag=True,
    help="One worker process per queue, each with -c slots (default: one worker for all).",
)
@click.option("--no-dashboard", is_flag=True, help="Run only the worker and the scheduler.")
@shared_options(envvars=False)
@pass_state
@click.pass_context
def run(
    ctx: click.Context,
    state: CliState,
    queue_names: tuple[str, ...],
    concurrency: int | None,
    pool: str | None,
    loglevel: str,
    host: str,
    port: int,
    allowed_hosts: tuple[str, ...],
    worker_per_queue: bool,
    no_dashboard: bool,
) -> None:
    """Worker + scheduler + dashboard in one command, for development.

    \b
    conveyor -A proj run            # then open http://127.0.0.1:5555/
    conveyor -A proj run -Q default,feeds,notifications --worker-per-queue
    """
    from conveyor.worker.main import Worker, setup_logging

    app = state.get_app(need_project="run")
    load_tasks(app)
    setup_logging(loglevel)
    # In development every queue the project sends to is consumed, so work routed to
    # `email` or `feeds` does not pile up behind a worker that reads only `default`.
    queues = split_names(queue_names) or app.known_queues()
    workers = QueueWorkers()
    if worker_per_queue:
        # Forked before this process starts its own threads (beat, heartbeats).
        for queue in queues[1:]:
            workers.start(app, queue, concurrency, pool)
        queues = queues[:1]
    process = Worker(app, queues=queues, concurrency=concurrency, pool=pool, beat=True)
    child: BaseProcess | None = None
    if not no_dashboard and dashboard_available():
        child = multiprocessing.get_context("fork").Process(
            target=_serve_dashboard,
            args=(app, host, port, allowed_hosts),
            name="conveyor-dashboard",
            daemon=True,
        )
        from conveyor._forkguard import fork_guard

        with fork_guard():
            child.start()
        click.echo(f"dashboard: http://{host}:{port}/", err=True)
    elif not no_dashboard:
        click.echo(
            "dashboard: not installed (pip install 'conveyor-tasks[dashboard]'); running worker and beat",
            err=True,
        )
    try:
        code = process.start()
    finally:
        workers.stop(float(app.conf.worker_shutdown_timeout))
        if child is not None and child.is_alive():
            child.terminate()
            child.join(5)
    ctx.exit(code)


def _run_worker(
    app: Conveyor,
    queues: list[str],
    concurrency: int | None,
    pool: str | None,
    stop_fd: int,
    writers: list[int],
) -> None:
    """A queue's worker: stops warmly when the run process closes its end of the pipe,
    or dies. A pipe, not a signal: after a Ctrl+C that reached this process too, a
    second signal would be taken as a cold shutdown."""
    from conveyor.worker.main import Worker

    for fd in writers:  # inherited copies would keep the pipes of this and earlier workers open
        os.close(fd)
    worker = Worker(app, queues=queues, concurrency=concurrency, pool=pool)

    def wait_for_stop() -> None:
        os.read(stop_fd, 1)  # b"" at end of file
        worker.request_warm_shutdown()

    threading.Thread(target=wait_for_stop, name="conveyor-run-stop", daemon=True).start()
    os._exit(worker.start())


class QueueWorkers:
    """The workers of ``--worker-per-queue`` beyond the first queue's, one process each."""

    def __init__(self) -> None:
        self.processes: list[BaseProcess] = []
        self.writers: list[int] = []

    def start(self, app: Conveyor, queue: str, concurrency: int | None, pool: str | None) -> None:
        from conveyor._forkguard import fork_guard

        reader, writer = os.pipe()
        self.writers.append(writer)
        process = multiprocessing.get_context("fork").Process(
            target=_run_worker,
            args=(app, [queue], concurrency, pool, reader, list(self.writers)),
            name=f"conveyor-worker-{queue}",
        )
        with fork_guard():
            process.start()
        os.close(reader)
        self.processes.append(process)

    def stop(self, grace_s: float) -> None:
        """Warm shutdown for each, as the main worker had; one still running after the
        grace period is killed, and its unacknowledged tasks are redelivered."""
        for fd in self.writers:
            os.close(fd)
        self.writers.clear()
        for process in self.processes:
            process.join(grace_s + 5)
            if process.is_alive():
                process.kill()
                process.join(5)
