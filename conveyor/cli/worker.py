"""``conveyor worker``: start one worker process for the project's app.

Options that have a setting (concurrency, pool, prefetch, max tasks per child) read
no environment variable here: ``CONVEYOR_WORKER_*`` already reach the app's
settings, with the documented precedence (the code wins). An option typed on the
command line wins over both.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import socket

import click

from conveyor.cli.context import CliState, load_tasks, pass_state, queues_option, shared_options
from conveyor.cli.output import split_names

POOLS = ("prefork", "threads", "solo", "asyncio")
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
    help="Child processes or threads (default: worker_concurrency, else the CPU count); "
    "with --pool asyncio, async def tasks at once (as --async-concurrency).",
)
@click.option(
    "-P",
    "--pool",
    type=click.Choice(POOLS),
    default=None,
    help="prefork (CPU-bound), threads (I/O-bound), solo (one task at a time, in-process) "
    "or asyncio (async def tasks only, on one event loop).",
)
@click.option(
    "--async-concurrency",
    type=click.IntRange(min=1),
    default=None,
    help="async def tasks each process awaits at once, beside its sync tasks "
    "(default: worker_async_concurrency, 100).",
)
@loglevel_option
@click.option(
    "-n",
    "--hostname",
    default=None,
    help="This worker's name (default: conveyor.PID@HOST); %h, %n and %d expand as in Celery.",
)
@click.option(
    "-f",
    "--logfile",
    default=None,
    metavar="PATH",
    help="Log to this file instead of stderr (%h %n %d %p expand).",
)
@click.option(
    "--pidfile",
    default=None,
    metavar="PATH",
    help="Write the worker's pid here; refuse to start while another live worker holds it.",
)
@click.option(
    "-E", "--task-events", is_flag=True, help="Send task events (on by default: worker_send_task_events)."
)
@click.option(
    "-O",
    "optimization",
    type=click.Choice(["fair", "default"]),
    default=None,
    help="Accepted for Celery's units: Conveyor always hands a task to a free slot (Celery's 'fair').",
)
@click.option(
    "--detach",
    is_flag=True,
    expose_value=False,
    callback=lambda ctx, param, value: _refuse_detach() if value else None,
    help="Not supported: run in the foreground under systemd, supervisord or a Procfile.",
)
@click.option("--without-gossip", is_flag=True, hidden=True, help="Accepted for Celery's units; no effect.")
@click.option("--without-mingle", is_flag=True, hidden=True, help="Accepted for Celery's units; no effect.")
@click.option(
    "--without-heartbeat", is_flag=True, hidden=True, help="Accepted for Celery's units; no effect."
)
@click.option(
    "--max-tasks-per-child",
    type=click.IntRange(min=1),
    default=None,
    help="Replace a prefork child after this many tasks (leaky task code).",
)
@click.option(
    "--max-memory-per-child",
    type=click.IntRange(min=1),
    default=None,
    help="KiB: replace a prefork child whose resident memory exceeds this after a task.",
)
@click.option(
    "--prefetch-multiplier",
    type=click.IntRange(min=1),
    default=None,
    help="Messages reserved per pool slot.",
)
@click.option(
    "--autoscale",
    default=None,
    metavar="MAX,MIN",
    help="Prefork: grow the pool up to MAX children while tasks wait, shrink it to MIN when idle.",
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
    async_concurrency: int | None,
    loglevel: str,
    hostname: str | None,
    logfile: str | None,
    pidfile: str | None,
    task_events: bool,
    optimization: str | None,
    without_gossip: bool,
    without_mingle: bool,
    without_heartbeat: bool,
    max_tasks_per_child: int | None,
    max_memory_per_child: int | None,
    prefetch_multiplier: int | None,
    autoscale: str | None,
    beat: bool,
) -> None:
    """Consume tasks until SIGTERM (warm shutdown) or a second signal (cold).

    \b
    conveyor -A proj worker -Q email,default -c 4 --pool threads -l info
    """
    # Import the worker only here: the admin commands must not pay for the pools.
    from conveyor.worker.main import Worker, setup_logging

    app = state.get_app(need_project="worker")
    load_tasks(app)
    if hostname:
        hostname = expand_node_name(hostname)
    setup_logging(loglevel, logfile=expand_node_name(logfile, hostname) if logfile else None)
    if task_events:
        app.conf.worker_send_task_events = True
    if max_memory_per_child:
        app.conf.worker_max_memory_per_child = max_memory_per_child
    if async_concurrency:
        app.conf.worker_async_concurrency = async_concurrency
    elif concurrency and (pool or app.conf.worker_pool) == "asyncio":
        # As -c sizes Celery's gevent and eventlet pools: tasks in flight at once.
        app.conf.worker_async_concurrency = concurrency
    if pidfile:
        claim_pidfile(expand_node_name(pidfile, hostname))
    bounds = parse_autoscale(autoscale) if autoscale else None
    if bounds is not None and (pool or app.conf.worker_pool) != "prefork":
        raise click.BadParameter(
            "needs --pool=prefork (it starts and stops child processes)", param_hint="--autoscale"
        )
    process = Worker(
        app,
        queues=split_names(queue_names) or None,
        concurrency=concurrency,
        pool=pool,
        hostname=hostname,
        prefetch_multiplier=prefetch_multiplier,
        max_tasks_per_child=max_tasks_per_child,
        beat=beat,
        autoscale=bounds,
    )
    ctx.exit(process.start())


def parse_autoscale(value: str) -> tuple[int, int]:
    """Celery's "MAX,MIN" (or "MAX": a minimum of one), as (max, min)."""
    try:
        parts = [int(p) for p in value.split(",")]
    except ValueError:
        parts = []
    if len(parts) == 1:
        parts.append(1)
    if len(parts) != 2 or not 1 <= parts[1] <= parts[0]:
        raise click.BadParameter(
            f"{value!r}: use MAX,MIN with 1 <= MIN <= MAX, as in --autoscale=10,3", param_hint="--autoscale"
        )
    return parts[0], parts[1]


def _refuse_detach() -> None:
    raise click.UsageError(
        "--detach is not supported: conveyor worker runs in the foreground; let systemd "
        "(Type=simple), supervisord or your Procfile keep it running, and drop --detach"
    )


def expand_node_name(template: str, node: str | None = None) -> str:
    """Celery's %-escapes: %h host.domain, %n host (or the node's name before @), %d domain, %p pid.

    ``-n worker1@%h`` names the worker; in ``--logfile``/``--pidfile`` ``%n`` is that
    name's part before ``@``, so two workers on one host write different files.
    """
    fqdn = socket.getfqdn()
    host, _, domain = fqdn.partition(".")
    name = node.split("@", 1)[0] if node else host
    out, i = [], 0
    while i < len(template):
        ch = template[i]
        if ch == "%" and i + 1 < len(template):
            code = template[i + 1]
            value = {"h": fqdn, "n": name, "d": domain, "p": str(os.getpid()), "%": "%"}.get(code)
            if value is not None:
                out.append(value)
                i += 2
                continue
        out.append(ch)
        i += 1
    return "".join(out)


def claim_pidfile(path: str) -> None:
    """Write this process's pid to ``path``; removed at exit. Another live pid there is an error."""
    try:
        with open(path) as fh:
            held = int(fh.read().strip() or 0)
    except (FileNotFoundError, ValueError):
        held = 0
    if held and held != os.getpid() and _alive(held):  # a dead pid: a killed worker's stale file
        raise click.ClickException(f"pidfile {path} holds pid {held}, which is running: stop it first")
    try:
        with open(path, "w") as fh:
            fh.write(f"{os.getpid()}\n")
    except OSError as exc:
        raise click.ClickException(f"cannot write pidfile {path}: {exc.strerror or exc}") from None
    owner = os.getpid()

    def remove() -> None:
        if os.getpid() == owner:  # never from a forked child
            with contextlib.suppress(OSError):
                os.unlink(path)

    atexit.register(remove)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True
