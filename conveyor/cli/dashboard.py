"""``conveyor dashboard``: serve the web dashboard for the app's broker.

It needs no task code (it reads the broker's queues, dead letters, events and
heartbeats), so ``-A`` is optional, as for ``conveyor queues``; with ``-A`` it uses
the project's broker and settings (``dashboard_auth`` and friends).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

from conveyor.cli.context import CliState, pass_state, shared_options

F = TypeVar("F", bound=Callable[..., Any])


def allowed_host_option(func: F) -> F:
    """``--allowed-host``, shared by ``dashboard`` and ``run``."""
    return click.option(
        "--allowed-host",
        "allowed_hosts",
        multiple=True,
        metavar="HOST",
        help="Another Host name the dashboard answers to (a proxy's, a LAN name); repeatable, "
        "added to the dashboard_allowed_hosts setting (env CONVEYOR_DASHBOARD_ALLOWED_HOSTS). "
        "Any other name is refused, which stops DNS-rebinding pages.",
    )(func)


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--port", type=click.IntRange(0, 65535), default=5555, show_default=True, help="Port to listen on."
)
@click.option(
    "--auth",
    "admins",
    multiple=True,
    metavar="USER:PASSWORD",
    help="An admin (may act); comma-separated or repeated for several. "
    "Default: the dashboard_auth setting (env CONVEYOR_DASHBOARD_AUTH).",
)
@click.option(
    "--viewer-auth",
    "viewers",
    multiple=True,
    metavar="USER:PASSWORD",
    help="A read-only user; comma-separated or repeated. "
    "Default: the dashboard_viewer_auth setting (env CONVEYOR_DASHBOARD_VIEWER_AUTH).",
)
@click.option(
    "--auth-file",
    type=click.Path(dir_okay=False),
    help="A file of users with hashed passwords, one `user:HASH` (admin) or `user:HASH:viewer` "
    "a line, made with `conveyor hash-password USER`. Default: the dashboard_auth_file setting "
    "(env CONVEYOR_DASHBOARD_AUTH_FILE).",
)
@click.option(
    "-l",
    "--loglevel",
    type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False),
    default="info",
    show_default=True,
    help="Access and server log level.",
)
@allowed_host_option
@shared_options(envvars=False)
@pass_state
def dashboard(
    state: CliState,
    host: str,
    port: int,
    admins: tuple[str, ...],
    viewers: tuple[str, ...],
    auth_file: str | None,
    loglevel: str,
    allowed_hosts: tuple[str, ...],
) -> None:
    """Serve the web dashboard: workers, tasks, queues, dead letters, periodic tasks, /metrics.

    Without users anyone who can reach the port is an admin, so the dashboard
    refuses to listen beyond loopback then: give --auth-file (or CONVEYOR_DASHBOARD_AUTH).
    --auth puts a password where `ps` shows it to every local user: prefer the file.
    It answers only to the names of --host (and localhost's for a loopback bind)
    and --allowed-host ones.
    """
    from conveyor.dashboard import missing_requirements, serve

    missing = missing_requirements()
    if missing:
        raise click.ClickException(
            f"the dashboard needs its extra ({', '.join(missing)} not installed): "
            "pip install 'conveyor-tasks[dashboard]'"
        )
    app = state.get_app()
    click.echo(f"Conveyor dashboard on http://{host}:{port}/ (Ctrl+C to stop)", err=True)
    serve(
        app,
        host=host,
        port=port,
        auth=list(admins) or None,
        viewer_auth=list(viewers) or None,
        auth_file=auth_file,
        allowed_hosts=allowed_hosts,
        log_level=loglevel.lower(),
    )


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--port", type=click.IntRange(0, 65535), default=5555, show_default=True, help="Port (Flower's)."
)
@click.option(
    "--address",
    default="127.0.0.1",
    show_default=True,
    help="Address to listen on (Flower's --address; beyond loopback it needs --basic_auth).",
)
@click.option(
    "--basic_auth",
    "--basic-auth",
    "basic_auth",
    default=None,
    metavar="USER:PASSWORD[,USER:PASSWORD]",
    help="Flower's users; here they are the dashboard's admins.",
)
@allowed_host_option
@shared_options(envvars=False)
@pass_state
@click.pass_context
def flower(
    ctx: click.Context,
    state: CliState,
    port: int,
    address: str,
    basic_auth: str | None,
    allowed_hosts: tuple[str, ...],
) -> None:
    """Celery's `flower` command: serves Conveyor's dashboard with Flower's flags."""
    ctx.invoke(
        dashboard,
        host=address,
        port=port,
        admins=(basic_auth,) if basic_auth else (),
        viewers=(),
        auth_file=None,
        loglevel="info",
        allowed_hosts=allowed_hosts,
    )


@click.command("hash-password")
@click.argument("user")
@click.option("--viewer", is_flag=True, help="Make the line for a read-only user.")
def hash_password(user: str, viewer: bool) -> None:
    """Print a line for --auth-file: USER, a scrypt hash of the password, and the role.

    The password is read from a prompt (asked twice) or, when stdin is not a
    terminal, from its first line; never from the command line, where `ps` and
    the shell history would keep it.
    """
    from conveyor.dashboard.passwords import hash_password as make_hash

    if not user or ":" in user:
        raise click.UsageError("USER must be a non-empty name without ':'")
    stdin = sys.stdin
    if stdin.isatty():
        password = str(click.prompt("Password", hide_input=True, confirmation_prompt=True))
    else:
        password = stdin.readline().rstrip("\r\n")
    if not password:
        raise click.ClickException("empty password")
    click.echo(f"{user}:{make_hash(password)}" + (":viewer" if viewer else ""))
