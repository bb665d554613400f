"""``conveyor worker``: start one worker process for the project's app.

Options that have a setting (concurrency, pool, prefetch, max tasks per child) read
no environment variable here: ``CONVEYOR_WORKER_*`` already reach the app's
settings, with the documented precedence (the code wins). An option typed on the
command line wins over both.
"""

from __future__ import annotations

import click

from conveyor.cli.context import CliState, import_project, pass_state, queues_option, shared_options
from conveyor.cli.output import split_names

POOLS = ("prefork", "threads", "solo")
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")

# One definition for every command that runs a process and logs (worker, beat, run).
loglevel_option = click.option(
    "-l",
    "--loglevel",
    type=click.Choice(LOG_LEVELS, case_sensitive=False),
    default="info",
    show_default=True,
    envvar="CONVEYOR_LOG_LEVEL",
    show_envvar=True,
)


@click.command()
@queues_option(
    "Queues to consume, comma-separated or repeated (default: task_default_queue).", envvar="CONVEYOR_QUEUES"
)
@click.option(
    "-c",
    "--concurrency",
    type=click.IntRange(min=1),
    default=None,
    help="Child processes or threads (default: worker_concurrency, else the CPU count).",
)
@click.option(
    "-P",
    "--pool",
    type=click.Choice(POOLS),
    default=None,
    help="prefork (CPU-bound), threads (I/O-bound) or solo (one task at a time, in-process).",
)
@loglevel_option
@click.option("-n", "--hostname", default=None, help="This worker's name (default: conveyor.PID@HOST).")
@click.option(
    "--max-tasks-per-child",
    type=click.IntRange(min=1),
    default=None,
    help="Replace a prefork child after this many tasks (leaky task code).",
)
@click.option(
    "--prefetch-multiplier",
    type=click.IntRange(min=1),
    default=None,
    help="Messages reserved per pool slot.",
)
@click.option(
    "-B",
    "--beat",
    is_flag=True,
    help="Also run the scheduler in this process (one leader among all schedulers on the broker).",
)
@shared_options(envvars=False)
@pass_state
@click.pass_context
def worker(
    ctx: click.Context,
    state: CliState,
    queue_names: tuple[str, ...],
    concurrency: int | None,
    pool: str | None,
    loglevel: str,
    hostname: str | None,
    max_tasks_per_child: int | None,
    prefetch_multiplier: int | None,
    beat: bool,
) -> None:
    """Consume tasks until SIGTERM (warm shutdown) or a second signal (cold).

    \b
    conveyor -A proj worker -Q email,default -c 4 --pool threads -l info
    """
    # Import the worker only here: the admin commands must not pay for the pools.
    from conveyor.worker.main import Worker, setup_logging

    app = state.get_app(need_project="worker")
    for module_name in app.include:
        # The task modules too: a broken one is one line here, not a traceback from
        # Worker.start() (which imports them again, from the module cache).
        import_project(module_name)
    setup_logging(loglevel)
    process = Worker(
        app,
        queues=split_names(queue_names) or None,
        concurrency=concurrency,
        pool=pool,
        hostname=hostname,
        prefetch_multiplier=prefetch_multiplier,
        max_tasks_per_child=max_tasks_per_child,
        beat=beat,
    )
    ctx.exit(process.start())
