"""``conveyor periodic``: list, add, enable, disable and remove periodic tasks.

Run-time schedules are stored in the broker, so a running scheduler picks a change
up within ``beat_max_loop_interval`` seconds (5), with no restart and no redeploy.
Schedules from ``beat_schedule`` are listed too (with -A) and are read-only here.
"""

from __future__ import annotations

import json
import warnings
from typing import Any

import click

from conveyor.cli.context import CliState, pass_state, shared_options
from conveyor.cli.output import echo_json, format_table, format_time, iso_time
from conveyor.periodic import PeriodicEntry, UnknownTaskWarning
from conveyor.schedules import crontab, parse_every

HEADERS = ("NAME", "SOURCE", "TASK", "SCHEDULE", "ENABLED", "LAST RUN", "NEXT RUN", "RUNS")


@click.group()
def periodic() -> None:
    """Periodic tasks: config ones (read-only) and run-time ones stored in the broker."""


@periodic.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
@shared_options(envvars=False)
@pass_state
def list_(state: CliState, as_json: bool) -> None:
    """Every periodic task with its last run, next run and run count."""
    entries = state.get_app().periodic.list()
    if as_json:
        echo_json([as_dict(e) for e in entries])
        return
    if not entries:
        click.echo("No periodic tasks: add one with `conveyor periodic add NAME TASK --every 30s`.")
        return
    rows = [
        (
            e.name,
            e.source,
            e.task,
            e.schedule_text,
            "yes" if e.enabled else "no",
            format_time(e.last_run_at),
            format_time(e.next_run_at),
            e.total_run_count,
        )
        for e in entries
    ]
    click.echo(format_table(HEADERS, rows, numeric=(7,)))


def _json_option(kind: type, what: str) -> Any:
    def parse(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
        if value is None:
            return None
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError as exc:
            raise click.BadParameter(f"not valid JSON ({exc.msg}): {value!r}") from None
        if not isinstance(parsed, kind):
            raise click.BadParameter(f"must be a JSON {what}, got {value!r}")
        return parsed

    return parse


@periodic.command()
@click.argument("name")
@click.argument("task")
@click.option("--every", metavar="INTERVAL", help="An interval: 30s, 5m, 1h, 1d, 1h30m.")
@click.option("--cron", metavar="EXPR", help='A cron expression: "*/15 * * * *" (in the timezone setting).')
@click.option(
    "--args", "args", callback=_json_option(list, "array"), help="Positional arguments, a JSON array."
)
@click.option(
    "--kwargs", "kwargs", callback=_json_option(dict, "object"), help="Keyword arguments, a JSON object."
)
@click.option("-Q", "--queue", default=None, help="Queue to send to (default: the task's route).")
@click.option("--priority", type=click.IntRange(0, 9), default=None, help="Message priority, 0-9.")
@click.option("--expires", type=click.FloatRange(min=0, min_open=True), default=None, metavar="SECONDS")
@click.option("--catch-up", is_flag=True, help="After downtime send every missed run, not just one.")
@click.option("--disabled", is_flag=True, help="Store it disabled.")
@shared_options(envvars=False)
@pass_state
def add(
    state: CliState,
    name: str,
    task: str,
    every: str | None,
    cron: str | None,
    args: list[Any] | None,
    kwargs: dict[str, Any] | None,
    queue: str | None,
    priority: int | None,
    expires: float | None,
    catch_up: bool,
    disabled: bool,
) -> None:
    """Add (or replace) a run-time schedule NAME that sends TASK.

    \b
    conveyor periodic add poll-feeds feeds.tasks.poll --every 5m -Q feeds
    conveyor periodic add nightly accounts.tasks.cleanup --cron "0 2 * * *"
    """
    if (every is None) == (cron is None):
        raise click.UsageError("give exactly one of --every INTERVAL or --cron EXPR")
    try:
        sched = parse_every(every) if every is not None else crontab.from_string(cron or "")
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--every" if every is not None else "--cron") from None
    options = {
        k: v for k, v in (("queue", queue), ("priority", priority), ("expires", expires)) if v is not None
    }
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UnknownTaskWarning)
        entry = state.get_app().periodic.add(
            name,
            task,
            sched,
            args=args or (),
            kwargs=kwargs,
            options=options,
            enabled=not disabled,
            catch_up=catch_up,
        )
    for warning in caught:  # stored all the same: the workers' app may define the task
        click.echo(f"Warning: {warning.message}", err=True)
    click.echo(
        f"Added {entry.name!r}: {entry.task} {entry.schedule_text}; next run {format_time(entry.next_run_at)}"
    )


@periodic.command()
@click.argument("name")
@shared_options(envvars=False)
@pass_state
def enable(state: CliState, name: str) -> None:
    """Enable NAME; runs missed while it was disabled are not sent."""
    entry = state.get_app().periodic.enable(name)
    click.echo(f"Enabled {name!r}; next run {format_time(entry.next_run_at)}")


@periodic.command()
@click.argument("name")
@shared_options(envvars=False)
@pass_state
def disable(state: CliState, name: str) -> None:
    """Disable NAME (kept, not sent) until `periodic enable`."""
    state.get_app().periodic.disable(name)
    click.echo(f"Disabled {name!r}")


@periodic.command()
@click.argument("name")
@shared_options(envvars=False)
@pass_state
def remove(state: CliState, name: str) -> None:
    """Delete the run-time schedule NAME and its run history."""
    state.get_app().periodic.remove(name)
    click.echo(f"Removed {name!r}")


def as_dict(entry: PeriodicEntry) -> dict[str, Any]:
    return {
        "name": entry.name,
        "source": entry.source,
        "task": entry.task,
        "schedule": entry.schedule_text,
        "args": list(entry.args),
        "kwargs": entry.kwargs,
        "options": entry.options,
        "enabled": entry.enabled,
        "catch_up": entry.catch_up,
        "last_run_at": iso_time(entry.last_run_at),
        "next_run_at": iso_time(entry.next_run_at),
        "total_run_count": entry.total_run_count,
    }
