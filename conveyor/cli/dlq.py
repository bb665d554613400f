"""``conveyor dlq``: list, show, replay and purge dead letters.

DESIGN.md: a message that exhausted its retries, cannot be decoded, or names a task
no worker knows is dead-lettered with its reason, never dropped, and these commands
are how a person reads it and puts it back once the cause is fixed. Each calls one
broker admin method, as the dashboard's dead-letter page does. Entries are named by
their entry id (the ID column) or by their task id, the id people hold from logs and
``AsyncResult``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import click

from conveyor import dlq as dead_letters
from conveyor.brokers.base import AdminBroker, DeadLetter, mask_url
from conveyor.cli.context import CliState, pass_state, shared_options
from conveyor.cli.output import confirm, echo_json, format_table, format_time, iso_time, shorten
from conveyor.exceptions import SerializationError
from conveyor.message import readable

HEADERS = ("ID", "TASK ID", "TASK", "QUEUE", "FAILED AT", "REASON")
REASON_WIDTH = 60  # the table's reason column; `dlq show` prints it whole


@click.group()
def dlq() -> None:
    """The dead-letter queue: messages that failed for good, with the reason."""


@dlq.command("list")
@click.option("-Q", "--queue", default=None, help="Only dead letters from this queue.")
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True)
@click.option("--offset", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array (bodies as decoded JSON).")
@shared_options(envvars=False)
@pass_state
def list_(state: CliState, queue: str | None, limit: int, offset: int, as_json: bool) -> None:
    """Dead letters, newest first."""
    app = state.get_app()
    entries = app.broker.dead_letters(queue, limit=limit, offset=offset)
    if as_json:
        echo_json([_as_dict(e) for e in entries])
        return
    if not entries:
        where = f"queue {queue!r}" if queue else mask_url(app.conf.broker_url)
        click.echo(f"No dead letters{' past offset ' + str(offset) if offset else ''} on {where}.")
        return
    rows = [
        (
            e.id,
            e.task_id or "?",
            e.task_name or "?",
            e.queue,
            format_time(e.failed_at),
            shorten(e.reason, REASON_WIDTH),
        )
        for e in entries
    ]
    click.echo(format_table(HEADERS, rows))
    if len(entries) == limit:
        click.echo(f"(first {limit}; more with --offset {offset + limit})", err=True)


@dlq.command()
@click.argument("entry_id", metavar="ID")
@click.option("--json", "as_json", is_flag=True, help="Print the entry as JSON.")
@shared_options(envvars=False)
@pass_state
def show(state: CliState, entry_id: str, as_json: bool) -> None:
    """Every field of one dead letter (by entry id or task id), its body pretty-printed."""
    app = state.get_app()
    entry = dead_letters.find(app.broker, entry_id)
    if entry is None:
        raise click.ClickException(f"no dead letter with id or task id {entry_id!r}: see `conveyor dlq list`")
    if as_json:
        echo_json(_as_dict(entry))
        return
    click.echo(
        "\n".join(
            [
                f"id:         {entry.id}",
                f"queue:      {entry.queue}",
                f"task:       {entry.task_name or '?'}",
                f"task id:    {entry.task_id or '?'}",
                f"failed at:  {format_time(entry.failed_at)}",
                f"reason:     {entry.reason}",
                "body:",
                _pretty_body(entry.body),
            ]
        )
    )


@dlq.command()
@click.argument("entry_ids", nargs=-1, metavar="[ID]...")
@click.option("--all", "all_", is_flag=True, help="Replay every dead letter.")
@click.option(
    "--reset-retries",
    is_flag=True,
    help="Run with a fresh retry budget (self.request.retries back to 0), not the one it used up.",
)
@shared_options(envvars=False)
@pass_state
def replay(state: CliState, entry_ids: tuple[str, ...], all_: bool, reset_retries: bool) -> None:
    """Put dead letters (entry ids or task ids) back on their queue, to run again."""
    refs = _selection(entry_ids, all_)
    app = state.get_app()
    ids, missing = _resolve(app.broker, refs)
    replayed = dead_letters.replay(app.broker, ids, reset_retries=reset_retries) if ids is None or ids else 0
    click.echo(f"Replayed {replayed} dead letter(s).")
    _check_all_found(ids, missing, replayed, "replayed")


@dlq.command("purge")
@click.argument("entry_ids", nargs=-1, metavar="[ID]...")
@click.option("--all", "all_", is_flag=True, help="Delete every dead letter.")
@click.option("-f", "--force", is_flag=True, help="Do not ask for confirmation.")
@shared_options(envvars=False)
@pass_state
def purge_(state: CliState, entry_ids: tuple[str, ...], all_: bool, force: bool) -> None:
    """Delete dead letters (entry ids or task ids) for good."""
    refs = _selection(entry_ids, all_)
    app = state.get_app()
    broker = app.broker
    if refs is None:
        total = sum(s.dead for s in broker.queue_stats())
        question = f"Delete all {total} dead letter(s) on {mask_url(app.conf.broker_url)} for good?"
    else:
        question = f"Delete dead letter(s) {', '.join(refs)} for good?"
    confirm(question, force=force)
    ids, missing = _resolve(broker, refs)
    purged = broker.purge_dead_letters(ids) if ids is None or ids else 0
    click.echo(f"Purged {purged} dead letter(s).")
    _check_all_found(ids, missing, purged, "purged")


def _selection(entry_ids: Sequence[str], all_: bool) -> list[str] | None:
    """The ids to act on, or None for all; exactly one of the two must be given."""
    if all_ and entry_ids:
        raise click.UsageError("give dead-letter IDs or --all, not both")
    if not all_ and not entry_ids:
        raise click.UsageError(
            "give the dead-letter or task IDs to act on (see `conveyor dlq list`), or --all"
        )
    return None if all_ else list(dict.fromkeys(entry_ids))


def _resolve(broker: AdminBroker, refs: list[str] | None) -> tuple[list[str] | None, int]:
    """Entry ids for the given entry or task ids (None: all), and how many matched nothing."""
    if refs is None:
        return None, 0
    found = [dead_letters.find(broker, ref) for ref in refs]
    ids = list(dict.fromkeys(e.id for e in found if e is not None))
    return ids, sum(e is None for e in found)


def _check_all_found(ids: list[str] | None, missing: int, done: int, verb: str) -> None:
    # An id that matched nothing is a failure the caller must see (a typo, or already
    # replayed by someone else), not a silent partial success.
    if ids is None:
        return
    wanted = len(ids) + missing
    if done < wanted:
        raise click.ClickException(
            f"{verb} {done} of {wanted}: {wanted - done} not in the dead-letter queue "
            "(wrong id, or already replayed or purged)"
        )


def _pretty_body(body: bytes) -> str:
    """Indented JSON when the body is JSON; otherwise the raw text, or the bytes' repr.

    An undecodable body is a common reason for dead-lettering, so it must still print.
    """
    try:
        return _indent(_dump(readable(body)))
    except SerializationError:
        pass
    try:
        return _indent(body.decode("utf-8"))
    except UnicodeDecodeError:
        return _indent(repr(body))


def _decoded_body(body: bytes) -> Any:
    try:
        return readable(body)
    except SerializationError:
        return body.decode("utf-8", errors="replace")


def _dump(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, default=str)


def _indent(text: str) -> str:
    return "\n".join("  " + line for line in text.splitlines())


def _as_dict(entry: DeadLetter) -> dict[str, Any]:
    return {
        "id": entry.id,
        "queue": entry.queue,
        "task": entry.task_name,
        "task_id": entry.task_id,
        "failed_at": iso_time(entry.failed_at),
        "reason": entry.reason,
        "body": _decoded_body(entry.body),
    }
