"""``conveyor call`` and ``conveyor result``: send a task by name, read its outcome.

Both go through the app (``send_task``, the result backend), the same calls a web
process or the dashboard makes, so the CLI cannot drift from what the API does.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable
from typing import Any

import click

from conveyor import states
from conveyor.app import Conveyor
from conveyor.backends.base import ResultRecord
from conveyor.cli.context import CliState, pass_state, shared_options
from conveyor.cli.output import echo_json, format_time, format_value, iso_time
from conveyor.exceptions import SerializationError
from conveyor.message import MAX_PRIORITY, MIN_PRIORITY
from conveyor.serialization import loads

# How often a `result --wait` re-reads the store if a wake-up is lost.
WAIT_INTERVAL_S = 0.5


def _json_of(kind: type, what: str) -> Callable[[click.Context, click.Parameter, str | None], Any]:
    """An option callback parsing JSON that must be a ``kind`` (list or dict).

    A bad value is a usage error (exit 2) naming the option, before any app is
    loaded or anything is sent.
    """

    def parse(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
        if value is None:
            return None
        try:
            parsed = loads(value)
        except SerializationError as exc:
            raise click.BadParameter(f"not valid JSON ({exc}): {value!r}") from None
        if not isinstance(parsed, kind):
            raise click.BadParameter(f"must be a JSON {what}, got {type(parsed).__name__}: {value!r}")
        return parsed

    return parse


@click.command()
@click.argument("task_name")
@click.option(
    "-a",
    "--args",
    "args_",
    callback=_json_of(list, "array, e.g. '[1, \"x\"]'"),
    metavar="JSON",
    help="Positional arguments as a JSON array.",
)
@click.option(
    "-k",
    "--kwargs",
    "kwargs_",
    callback=_json_of(dict, "object, e.g. '{\"x\": 1}'"),
    metavar="JSON",
    help="Keyword arguments as a JSON object.",
)
@click.option("-Q", "--queue", default=None, help="Queue to send to (default: the task's or its route's).")
@click.option(
    "--countdown",
    type=click.FloatRange(min=0),
    default=None,
    metavar="SECONDS",
    help="Run no earlier than this many seconds from now.",
)
@click.option(
    "--expires",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    metavar="SECONDS",
    help="Revoke instead of running if not started within this many seconds.",
)
@click.option(
    "--priority",
    type=click.IntRange(MIN_PRIORITY, MAX_PRIORITY),
    default=None,
    help=f"{MIN_PRIORITY} (lowest) to {MAX_PRIORITY} (highest) within the queue.",
)
@click.option(
    "--force",
    is_flag=True,
    help="Send even when -A's app does not know the task or the arguments do not fit it "
    "(for tasks that only another codebase defines).",
)
@shared_options(envvars=False)
@pass_state
def call(
    state: CliState,
    task_name: str,
    args_: list[Any] | None,
    kwargs_: dict[str, Any] | None,
    queue: str | None,
    countdown: float | None,
    expires: float | None,
    priority: int | None,
    force: bool,
) -> None:
    """Send TASK_NAME and print its task id.

    With -A, the name must be one of the app's tasks and the arguments must fit its
    signature (checked before sending; --force skips both). Without -A nothing is
    checked: a worker that knows the task runs it.

    \b
    conveyor call accounts.tasks.send_activation_email --args '[1, "123"]' -Q email
    """
    app = state.get_app()
    if state.app_path and not force:
        _check_call(app, task_name, args_ or [], kwargs_ or {})
    options: dict[str, Any] = {
        key: value
        for key, value in (
            ("queue", queue),
            ("countdown", countdown),
            ("expires", expires),
            ("priority", priority),
        )
        if value is not None
    }
    sent = app.send_task(task_name, args=args_, kwargs=kwargs_, **options)
    click.echo(sent.id)


def _check_call(app: Conveyor, name: str, args: list[Any], kwargs: dict[str, Any]) -> None:
    """A usage error (exit 2) unless the app knows ``name`` and the arguments bind to it."""
    app.import_includes()
    task = app.tasks.get(name)
    if task is None:
        close = difflib.get_close_matches(name, list(app.tasks), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise click.UsageError(
            f"task {name!r} is not registered in app {app.main!r} ({len(app.tasks)} task(s) known).{hint} "
            "Check the name, or pass --force to send it for another codebase's worker."
        )
    try:
        signature = inspect.signature(task.fn)
    except (TypeError, ValueError):  # a builtin or C function: nothing to check against
        return
    try:
        if task.bind:
            signature.bind(None, *args, **kwargs)
        else:
            signature.bind(*args, **kwargs)
    except TypeError as exc:
        params = list(signature.parameters)[1 if task.bind else 0 :]
        raise click.UsageError(
            f"arguments do not fit {name}({', '.join(params)}): {exc}. "
            "Fix --args/--kwargs, or pass --force to send anyway."
        ) from None


@click.command()
@click.argument("task_id")
@click.option(
    "--wait",
    "wait_s",
    type=click.FloatRange(min=0),
    default=None,
    metavar="SECONDS",
    help="Wait up to this long for the task to finish.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the record as JSON.")
@shared_options(envvars=False)
@pass_state
@click.pass_context
def result(ctx: click.Context, state: CliState, task_id: str, wait_s: float | None, as_json: bool) -> None:
    """Print a task's state and its result, or its exception and traceback.

    Exit code 1 when the task failed or was revoked, or is still unfinished after
    --wait; PENDING without --wait is not an error (the task may be queued, or the
    id unknown: the two cannot be told apart).
    """
    app = state.get_app()
    if wait_s is None:
        record = app.backend.get(task_id)
    else:
        record = app.backend.wait(task_id, timeout_s=wait_s, interval_s=WAIT_INTERVAL_S)
    current = record.state if record is not None else states.PENDING
    if as_json:
        echo_json(_as_dict(task_id, record))
    else:
        _print_record(task_id, record)
    if wait_s is not None and current not in states.READY_STATES:
        raise click.ClickException(
            f"task {task_id} is still {current} after {wait_s:g}s: is a worker consuming its queue?"
        )
    if current in states.PROPAGATE_STATES:
        ctx.exit(1)


def _print_record(task_id: str, record: ResultRecord | None) -> None:
    if record is None:
        click.echo(f"id:        {task_id}\nstate:     {states.PENDING}")
        return
    lines = [
        f"id:        {task_id}",
        f"task:      {record.task or '-'}",
        f"state:     {record.state}",
    ]
    if record.state == states.SUCCESS:
        lines.append(f"result:    {format_value(record.result)}")
    elif record.exception:
        lines.append(f"exception: {_exception_line(record.exception)}")
    lines += [
        f"retries:   {record.retries}",
        f"worker:    {record.worker or '-'}",
        f"started:   {format_time(record.started_at)}",
        f"finished:  {format_time(record.finished_at)}",
    ]
    if record.traceback and record.state != states.SUCCESS:
        lines += ["traceback:", record.traceback.rstrip()]
    click.echo("\n".join(lines))


def _exception_line(exception: Any) -> str:
    name = exception.get("type") or "Exception"
    message = exception.get("message") or ""
    return f"{name}: {message}" if message else str(name)


def _as_dict(task_id: str, record: ResultRecord | None) -> dict[str, Any]:
    if record is None:
        return {"id": task_id, "state": states.PENDING}
    return {
        "id": task_id,
        "task": record.task,
        "state": record.state,
        "result": record.result if record.state == states.SUCCESS else None,
        "exception": dict(record.exception) if record.exception else None,
        "traceback": record.traceback,
        "retries": record.retries,
        "worker": record.worker,
        "queue": record.queue,
        "args": record.args,
        "kwargs": record.kwargs,
        "started_at": iso_time(record.started_at),
        "finished_at": iso_time(record.finished_at),
    }
