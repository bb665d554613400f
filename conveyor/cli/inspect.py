"""``conveyor inspect``, ``conveyor status`` and ``conveyor revoke``: ask running workers.

``inspect`` and ``revoke`` go through ``app.control`` (commands over the broker's
"control" log, replies gathered until the timeout or until every online worker
answered); ``status`` only reads the heartbeats, so it answers even when every
worker is too busy to reply. One line per worker; ``--json`` for scripts.
"""

from __future__ import annotations

import time
from typing import Any

import click

from conveyor.cli.context import CliState, pass_state, shared_options
from conveyor.cli.output import echo_json, format_value, shorten

INSPECT_COMMANDS = ("registered", "active", "reserved", "scheduled", "stats", "ping")


def _timeout_option(fn: Any) -> Any:
    return click.option(
        "-t",
        "--timeout",
        type=click.FloatRange(min=0.0),
        default=1.0,
        show_default=True,
        help="Seconds to wait for replies.",
    )(fn)


def _destination_option(fn: Any) -> Any:
    return click.option(
        "-d",
        "--destination",
        metavar="NAMES",
        default=None,
        help="Only these workers (comma-separated names, as in `conveyor status`).",
    )(fn)


@click.command()
@click.argument("what", type=click.Choice(INSPECT_COMMANDS))
@_timeout_option
@_destination_option
@click.option("--json", "as_json", is_flag=True, help="Print {worker: reply} as JSON.")
@shared_options(envvars=False)
@pass_state
def inspect(state: CliState, what: str, timeout: float, destination: str | None, as_json: bool) -> None:
    """Ask running workers: registered tasks, active (running) tasks, reserved
    (prefetched), scheduled (held for a rate-limit slot), stats, ping.

    \b
    conveyor -A proj inspect active --timeout 2
    """
    app = state.get_app()
    replies = app.control.broadcast(what, destination=destination, reply=True, timeout=timeout)
    if as_json:
        echo_json(replies)
    if not replies:
        raise click.ClickException(f"no worker replied within {timeout:g}s: is a worker running?")
    if as_json:
        return
    for worker in sorted(replies):
        for line in _lines(what, worker, replies[worker]):
            click.echo(line)


def _lines(what: str, worker: str, payload: Any) -> list[str]:
    if isinstance(payload, dict) and set(payload) == {"error"}:
        return [f"{worker}: error: {payload['error']}"]
    if what == "ping":
        return [f"{worker}: {payload}"]
    if what == "stats":
        return [f"{worker}: {_stats_line(payload)}"]
    if what == "registered":
        names = list(payload or [])
        return [f"{worker}: {len(names)} task(s): {', '.join(names)}" if names else f"{worker}: no tasks"]
    tasks = list(payload or [])
    lines = [f"{worker}: {len(tasks)} {what}"]
    now = time.time()
    for task in tasks:
        args = shorten(format_value(task.get("args", [])), 60)
        kwargs = task.get("kwargs") or {}
        text = f"  {task.get('id')}  {task.get('name')}  args={args}"
        if kwargs:
            text += f" kwargs={shorten(format_value(kwargs), 60)}"
        if task.get("time_start"):
            text += f"  running {now - float(task['time_start']):.1f}s (pid {task.get('worker_pid')})"
        lines.append(text)
    return lines


def _stats_line(stats: Any) -> str:
    if not isinstance(stats, dict):
        return str(stats)
    load = ", ".join(f"{x:g}" for x in stats.get("loadavg", []))
    return (
        f"pid {stats.get('pid')}, {stats.get('pool')} x{stats.get('concurrency')}, "
        f"queues {','.join(stats.get('queues', []))}, processed {stats.get('processed')}, "
        f"failed {stats.get('failed')}, active {stats.get('active')}, "
        f"up {_duration(float(stats.get('uptime') or 0))}, load {load}"
    )


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


@click.command()
@click.option("-a", "--all", "show_all", is_flag=True, help="Also list workers seen recently but offline.")
@click.option("--json", "as_json", is_flag=True, help="Print the workers' heartbeats as JSON.")
@shared_options(envvars=False)
@pass_state
def status(state: CliState, show_all: bool, as_json: bool) -> None:
    """Workers online (from their heartbeats), one line each; exit 1 when none is."""
    from conveyor.monitor.workers import list_workers

    app = state.get_app()
    workers = list_workers(app)
    online = [w for w in workers if w.online]
    shown = workers if show_all else online
    if as_json:
        echo_json([w.as_dict() for w in shown])
    else:
        for w in shown:
            load = ", ".join(f"{x:g}" for x in w.loadavg)
            seen = "online" if w.online else f"OFFLINE (last seen {_duration(w.last_seen_s)} ago)"
            click.echo(
                f"{w.name}: {seen}, {w.pool} x{w.concurrency}, queues {','.join(w.queues)}, "
                f"active {w.active}, processed {w.processed}, failed {w.failed}, "
                f"up {_duration(w.uptime)}, load {load}"
            )
        if online:
            click.echo(f"{len(online)} worker(s) online.")
    if not online:
        raise click.ClickException("no worker online (no heartbeat within 3 intervals)")


@click.command()
@click.argument("task_ids", nargs=-1, required=True, metavar="TASK_ID...")
@click.option(
    "--terminate",
    is_flag=True,
    help="Also stop the task if it is running (prefork: its process is interrupted, then killed).",
)
@_timeout_option
@shared_options(envvars=False)
@pass_state
def revoke(state: CliState, task_ids: tuple[str, ...], terminate: bool, timeout: float) -> None:
    """Never run these tasks (their result becomes REVOKED); --terminate stops running ones.

    Workers started later drop them too (revokes are remembered for 3 hours).
    """
    app = state.get_app()
    replies = app.control.revoke(list(task_ids), terminate=terminate, reply=True, timeout=timeout)
    click.echo(f"Revoked {', '.join(task_ids)}.")
    for worker in sorted(replies):
        payload = replies[worker]
        if isinstance(payload, dict) and payload.get("error"):
            click.echo(f"{worker}: error: {payload['error']}")
        elif isinstance(payload, dict) and payload.get("terminated"):
            click.echo(f"{worker}: terminating {', '.join(payload['terminated'])}")
        else:
            click.echo(f"{worker}: ok")
    if not replies:
        click.echo("No worker replied: it is dropped when a worker fetches it.")
