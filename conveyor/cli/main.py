"""``conveyor``: the group, its shared options, and the one place errors are translated.

Exit codes (DESIGN.md, "Command line"): 0 ok, 1 failure, 2 usage error. Every
Conveyor error, and the ValueError/TypeError the API raises for bad arguments,
becomes one line on stderr here, once, instead of in each command; a bug anywhere
else still shows its traceback, because hiding it would make it unreportable.
"""

from __future__ import annotations

from typing import Any

import click

from conveyor import __version__
from conveyor.cli.beat import beat
from conveyor.cli.context import CliState, one_line, shared_options
from conveyor.cli.dashboard import dashboard
from conveyor.cli.dlq import dlq
from conveyor.cli.inspect import inspect, revoke, status
from conveyor.cli.periodic import periodic
from conveyor.cli.queues import purge, queues
from conveyor.cli.run import run
from conveyor.cli.tasks import call, result
from conveyor.cli.worker import worker
from conveyor.exceptions import ConveyorError


class ConveyorGroup(click.Group):
    """A click group whose commands' expected errors print as ``Error: <one line>``, exit 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (ConveyorError, ValueError, TypeError) as exc:
            state = ctx.find_object(CliState)
            if state is not None and state.show_traceback:
                raise
            raise click.ClickException(one_line(str(exc)) or type(exc).__name__) from None


@click.group(
    cls=ConveyorGroup,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.version_option(__version__, "--version", prog_name="conveyor", message="%(prog)s %(version)s")
@shared_options(envvars=True)
@click.option(
    "--traceback",
    "show_traceback",
    is_flag=True,
    envvar="CONVEYOR_TRACEBACK",
    show_envvar=True,
    help="Show the full Python traceback instead of a one-line error (for bug reports).",
)
@click.pass_context
def cli(ctx: click.Context, show_traceback: bool) -> None:
    """Conveyor: run workers and inspect and repair queues.

    Commands that read or repair the broker (queues, purge, dlq, call, result) also
    work without -A, on --broker or CONVEYOR_BROKER_URL (default
    sqlite:///conveyor.sqlite3); `worker` needs -A.
    """
    state = ctx.ensure_object(CliState)
    state.show_traceback = show_traceback
    ctx.call_on_close(state.close)


cli.add_command(worker)
cli.add_command(call)
cli.add_command(result)
cli.add_command(queues)
cli.add_command(purge)
cli.add_command(dlq)
cli.add_command(beat)
cli.add_command(periodic)
cli.add_command(run)
cli.add_command(inspect)
cli.add_command(status)
cli.add_command(revoke)
cli.add_command(dashboard)


def main() -> None:
    """The ``conveyor`` console script (pyproject.toml) and ``python -m conveyor.cli.main``."""
    cli(prog_name="conveyor")


if __name__ == "__main__":
    main()
