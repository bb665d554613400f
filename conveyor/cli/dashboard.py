"""``conveyor dashboard``: serve the web dashboard for the app's broker.

It needs no task code (it reads the broker's queues, dead letters, events and
heartbeats), so ``-A`` is optional, as for ``conveyor queues``; with ``-A`` it uses
the project's broker and settings (``dashboard_auth`` and friends).
"""

from __future__ import annotations

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
    loglevel: str,
    allowed_hosts: tuple[str, ...],
) -> None:
    """Serve the web dashboard: workers, tasks, queues, dead letters, periodic tasks, /metrics.

    Without users anyone who can reach the port is an admin, so the dashboard
    refuses to listen beyond loopback then: give --auth (or CONVEYOR_DASHBOARD_AUTH).
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
        loglevel="info",
        allowed_hosts=allowed_hosts,
    )
