"""``conveyor beat``: run the scheduler.

Start as many as you like against one broker (on several hosts, for availability):
one holds the leader lease and sends; the others wait and take over within
``beat_lease_seconds`` (plus up to 2 s) when it dies. SIGTERM or Ctrl+C stops it and
hands the lease over at once.
"""

from __future__ import annotations

import signal
from types import FrameType

import click

from conveyor.brokers.base import mask_url
from conveyor.cli.context import CliState, load_tasks, pass_state, shared_options
from conveyor.cli.worker import loglevel_option


@click.command()
@loglevel_option
@click.option(
    "--lease",
    "lease_s",
    type=click.FloatRange(min=0.5),
    default=None,
    metavar="SECONDS",
    help="Leader lease (default: beat_lease_seconds, 10): how soon a follower takes over.",
)
@shared_options(envvars=False)
@pass_state
def beat(state: CliState, loglevel: str, lease_s: float | None) -> None:
    """Send periodic tasks when due: beat_schedule and run-time schedules (`conveyor periodic`).

    \b
    conveyor -A proj beat -l info
    """
    from conveyor.beat import Beat
    from conveyor.worker.main import setup_logging

    app = state.get_app(need_project="beat")
    load_tasks(app)
    setup_logging(loglevel)
    scheduler = Beat(app, lease_s=lease_s)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        scheduler.stop()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    click.echo(f"beat {scheduler.owner} on {mask_url(app.conf.broker_url)} (Ctrl+C to stop)", err=True)
    scheduler.run()
