"""``conveyor control``: act on running workers, with Celery's command names.

``shutdown``, ``rate_limit`` and ``revoke`` go through ``app.control`` as the
dashboard's buttons do; the reply of each worker that answered is printed, one line
each. ``add_consumer``/``cancel_consumer`` change the queues a live worker consumes,
``pool_grow``/``pool_shrink`` resize a prefork pool.
"""

from __future__ import annotations

from typing import Any

import click

from conveyor.cli.context import CliState, pass_state, shared_options
from conveyor.cli.inspect import _destination_option, _timeout_option


@click.group()
def control() -> None:
    """Send a command to running workers (Celery's `celery control`)."""


def _print(replies: dict[str, Any], what: str) -> None:
    if not replies:
        raise click.ClickException(
            f"no worker replied to {what}: is one running on this broker (conveyor status)?"
        )
    failed = False
    for worker in sorted(replies):
        payload = replies[worker]
        if isinstance(payload, dict) and payload.get("error"):
            failed = True
            click.echo(f"{worker}: error: {payload['error']}")
        else:
            click.echo(f"{worker}: ok{_detail(payload)}")
    if failed:
        raise SystemExit(1)


def _detail(payload: Any) -> str:
    if isinstance(payload, dict) and payload:
        return " (" + ", ".join(f"{k} {v}" for k, v in sorted(payload.items()) if k != "ok") + ")"
    return ""


def _names(destination: str | None) -> list[str] | None:
    return [n.strip() for n in destination.split(",") if n.strip()] if destination else None


@control.command()
@_timeout_option
@_destination_option
@shared_options(envvars=False)
@pass_state
def shutdown(state: CliState, timeout: float, destination: str | None) -> None:
    """Warm shutdown: workers finish their running tasks and exit."""
    app = state.get_app()
    _print(app.control.shutdown(destination=_names(destination), reply=True, timeout=timeout), "shutdown")


@control.command("rate_limit")
@click.argument("task_name")
@click.argument("rate")
@_timeout_option
@_destination_option
@shared_options(envvars=False)
@pass_state
def rate_limit(state: CliState, task_name: str, rate: str, timeout: float, destination: str | None) -> None:
    """Change TASK_NAME's rate limit on running workers ("10/m", "5/s"; 0 or none: no limit)."""
    app = state.get_app()
    value: str | None = None if rate.lower() in ("0", "none", "off") else rate
    try:
        replies = app.control.rate_limit(task_name, value, destination=_names(destination), timeout=timeout)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="RATE") from None
    _print(replies, "rate_limit")


@control.command("revoke")
@click.argument("task_ids", nargs=-1, required=True, metavar="TASK_ID...")
@click.option("--terminate", is_flag=True, help="Also stop the task where it runs now.")
@_timeout_option
@_destination_option
@shared_options(envvars=False)
@pass_state
def revoke(
    state: CliState, task_ids: tuple[str, ...], terminate: bool, timeout: float, destination: str | None
) -> None:
    """Never run these tasks (REVOKED); with --terminate, stop running ones too."""
    app = state.get_app()
    replies = app.control.revoke(
        list(task_ids), terminate=terminate, destination=_names(destination), reply=True, timeout=timeout
    )
    click.echo(f"Revoked {', '.join(task_ids)} (remembered by workers started later too).")
    if replies:
        _print(replies, "revoke")


@control.command("add_consumer")
@click.argument("queue")
@_timeout_option
@_destination_option
@shared_options(envvars=False)
@pass_state
def add_consumer(state: CliState, queue: str, timeout: float, destination: str | None) -> None:
    """Running workers also consume QUEUE (until they restart)."""
    app = state.get_app()
    _print(app.control.add_consumer(queue, destination=_names(destination), timeout=timeout), "add_consumer")


@control.command("cancel_consumer")
@click.argument("queue")
@_timeout_option
@_destination_option
@shared_options(envvars=False)
@pass_state
def cancel_consumer(state: CliState, queue: str, timeout: float, destination: str | None) -> None:
    """Running workers stop consuming QUEUE (what they prefetched from it still runs)."""
    app = state.get_app()
    _print(
        app.control.cancel_consumer(queue, destination=_names(destination), timeout=timeout),
        "cancel_consumer",
    )


@control.command("pool_grow")
@click.argument("n", type=click.IntRange(min=1), default=1)
@_timeout_option
@_destination_option
@shared_options(envvars=False)
@pass_state
def pool_grow(state: CliState, n: int, timeout: float, destination: str | None) -> None:
    """Start N more child processes in running prefork workers."""
    app = state.get_app()
    _print(app.control.pool_grow(n, destination=_names(destination), timeout=timeout), "pool_grow")


@control.command("pool_shrink")
@click.argument("n", type=click.IntRange(min=1), default=1)
@_timeout_option
@_destination_option
@shared_options(envvars=False)
@pass_state
def pool_shrink(state: CliState, n: int, timeout: float, destination: str | None) -> None:
    """Stop N child processes (each finishes its running task; at least one is kept)."""
    app = state.get_app()
    _print(app.control.pool_shrink(n, destination=_names(destination), timeout=timeout), "pool_shrink")
