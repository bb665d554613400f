"""``conveyor queues`` and ``conveyor purge``: the backlog per queue, and emptying it.

Both call the broker's admin methods (``queue_stats``, ``purge``), the ones the
dashboard's queue page calls.
"""

from __future__ import annotations

import click

from conveyor.brokers.base import QueueStats, mask_url
from conveyor.cli.context import CliState, pass_state, queues_option, shared_options
from conveyor.cli.output import confirm, echo_json, format_table, split_names

HEADERS = ("QUEUE", "READY", "IN FLIGHT", "DELAYED", "DEAD")


@click.command()
@queues_option("Only these queues, comma-separated or repeated (listed even when empty).")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array, for scripts and monitoring.")
@shared_options(envvars=False)
@pass_state
def queues(state: CliState, queue_names: tuple[str, ...], as_json: bool) -> None:
    """Messages per queue: ready, in flight (leased by a worker), delayed, dead-lettered."""
    app = state.get_app()
    names = split_names(queue_names)
    stats = app.broker.queue_stats(names or None)
    on_broker = bool(stats)
    if not names:
        # Queues the app sends to are listed even when the broker holds nothing for them:
        # an emptied queue is a fact worth showing (zeros), not "nothing sent".
        if state.app_path:
            app.import_includes()
        seen = {s.name for s in stats}
        stats += [QueueStats(q, 0, 0, 0, 0) for q in app.known_queues() if q not in seen]
        stats.sort(key=lambda s: s.name)
    if as_json:
        echo_json(
            [
                {
                    "queue": s.name,
                    "ready": s.ready,
                    "in_flight": s.in_flight,
                    "delayed": s.delayed,
                    "dead": s.dead,
                }
                for s in stats
            ]
        )
        return
    rows = [(s.name, s.ready, s.in_flight, s.delayed, s.dead) for s in stats]
    click.echo(format_table(HEADERS, rows, numeric=(1, 2, 3, 4)))
    if not on_broker:
        # Name the broker: an empty one is most often the wrong broker (a missing -A or -b).
        click.echo(f"(no message waiting or in flight on {mask_url(app.conf.broker_url)})")


@click.command()
@queues_option("Purge only these queues, comma-separated or repeated (default: every queue).")
@click.option("-f", "--force", is_flag=True, help="Do not ask for confirmation.")
@shared_options(envvars=False)
@pass_state
def purge(state: CliState, queue_names: tuple[str, ...], force: bool) -> None:
    """Delete waiting and delayed messages.

    Messages a worker is running (in flight) and dead letters are kept: use
    `conveyor dlq purge` for those.
    """
    app = state.get_app()
    broker = app.broker
    names = split_names(queue_names)
    stats = broker.queue_stats(names or None)
    where = ", ".join(names) if names else "every queue"
    confirm(
        f"Delete {_waiting(stats)} waiting or delayed message(s) from {where} "
        f"on {mask_url(app.conf.broker_url)}?",
        force=force,
    )
    purged = sum(broker.purge(name) for name in names) if names else broker.purge(None)
    click.echo(f"Purged {purged} message(s) from {where}.")


def _waiting(stats: list[QueueStats]) -> int:
    return sum(s.ready + s.delayed for s in stats)
