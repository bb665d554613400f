"""``conveyor``: the group, its shared options, and the one place errors are translated.

Exit codes (DESIGN.md, "Command line"): 0 ok, 1 failure, 2 usage error. Every
Conveyor error, and the ValueError/TypeError the API raises for bad arguments,
becomes one line on stderr here, once, instead of in each command; a bug anywhere
else still shows its traceback, because hiding it would make it unreportable.
"""

from __future__ import annotations

import importlib
from typing import Any

import click

from conveyor import __version__
from conveyor.cli.context import CliState, one_line, shared_options
from conveyor.exceptions import ConveyorError

# Command name -> "module:attribute". Only the command being run is imported, so
# `conveyor worker` does not pay start-up time for the scheduler's or the
# dashboard's imports.
COMMANDS = {
    "worker": "conveyor.cli.worker:worker",
    "beat": "conveyor.cli.beat:beat",
    "run": "conveyor.cli.run:run",
    "dashboard": "conveyor.cli.dashboard:dashboard",
    "hash-password": "conveyor.cli.dashboard:hash_password",
    "status": "conveyor.cli.inspect:status",
    "inspect": "conveyor.cli.inspect:inspect",
    "revoke": "conveyor.cli.inspect:revoke",
    "call": "conveyor.cli.tasks:call",
    "result": "conveyor.cli.tasks:result",
    "queues": "conveyor.cli.queues:queues",
    "purge": "conveyor.cli.queues:purge",
    "dlq": "conveyor.cli.dlq:dlq",
    "periodic": "conveyor.cli.periodic:periodic",
    "control": "conveyor.cli.control:control",
    "report": "conveyor.cli.report:report",
    "flower": "conveyor.cli.dashboard:flower",
    "migrate": "conveyor.cli.migrate:migrate",
}


class ConveyorGroup(click.Group):
    """A click group whose commands' expected errors print as ``Error: <one line>``, exit 1,
    and whose commands are imported only when used."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *COMMANDS})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        found = super().get_command(ctx, cmd_name)
        if found is not None or cmd_name not in COMMANDS:
            return found
        module, attribute = COMMANDS[cmd_name].split(":")
        command: click.Command = getattr(importlib.import_module(module), attribute)
        return command

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


def main() -> None:
    """The ``conveyor`` console script (pyproject.toml) and ``python -m conveyor.cli.main``."""
    cli(prog_name="conveyor")


if __name__ == "__main__":
    main()
