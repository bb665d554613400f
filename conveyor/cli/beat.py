"""``conveyor beat``: run the scheduler.

Start as many as you like against one broker (on several hosts, for availability):
one holds the leader lease and sends; the others wait and take over within
``beat_lease_seconds`` (plus up to 2 s) when it dies. SIGTERM or Ctrl+C stops it and
hands the lease over at once.
"""

from __future__ import annotations

import logging
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
@click.option(
    "-S",
    "--scheduler",
    "scheduler_class",
    default=None,
    metavar="CLASS",
    help="Celery's scheduler class; django_celery_beat's DatabaseScheduler maps to Conveyor's "
    "store-backed schedules (the only scheduler).",
)
@shared_options(envvars=False)
@pass_state
def beat(state: CliState, loglevel: str, lease_s: float | None, scheduler_class: str | None) -> None:
    """Send periodic tasks when due: beat_schedule and run-time schedules (`conveyor periodic`).

    \b
    conveyor -A proj beat -l info
    """
    from conveyor.beat import Beat
    from conveyor.worker.main import setup_logging

    app = state.get_app(need_project="beat")
    load_tasks(app)
    setup_logging(loglevel)
    _note_scheduler_class(scheduler_class)
    for name, instead in app.conf.unhonoured().items():
        logging.getLogger("conveyor.beat").warning(
            "setting %s is not honoured by Conveyor: %s", name, instead
        )
    scheduler = Beat(app, lease_s=lease_s)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        scheduler.stop()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    click.echo(f"beat {scheduler.owner} on {mask_url(app.conf.broker_url)} (Ctrl+C to stop)", err=True)
    scheduler.run()


# Celery's scheduler classes and what each becomes here: one scheduler, whose run-time
# schedules already live in the broker's store (what django_celery_beat's tables are for).
KNOWN_SCHEDULERS = {
    "django_celery_beat.schedulers:DatabaseScheduler": "django_celery_beat's DatabaseScheduler",
    "django_celery_beat.schedulers.DatabaseScheduler": "django_celery_beat's DatabaseScheduler",
    "django": "django_celery_beat's DatabaseScheduler",
    "celery.beat:PersistentScheduler": "Celery's PersistentScheduler",
    "celery.beat.PersistentScheduler": "Celery's PersistentScheduler",
}


def _note_scheduler_class(name: str | None) -> None:
    if name is None:
        return
    known = KNOWN_SCHEDULERS.get(name)
    if known is None:
        raise click.BadParameter(
            f"{name!r} is not a scheduler Conveyor knows: leave --scheduler out (Conveyor's scheduler "
            "keeps run-time schedules in the broker) or name django_celery_beat.schedulers:DatabaseScheduler",
            param_hint="--scheduler",
        )
    logging.getLogger("conveyor.beat").info(
        "--scheduler %s: %s maps to Conveyor's scheduler, whose run-time schedules live in the broker's "
        "store (edit them with `conveyor periodic`, the dashboard or the Django admin)",
        name,
        known,
    )
