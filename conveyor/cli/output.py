"""Printing for people and for machines, and the confirmation destructive commands ask.

Tables go to stdout and ``--json`` prints one JSON document there, so a script can
pipe either; prompts and notes go to stderr so they never end up in that pipe.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
from collections.abc import Sequence
from typing import Any

import click

from conveyor.schedules import show_time


def echo_json(value: Any) -> None:
    """One JSON document on stdout; ``default=str`` so an odd value never aborts the output."""
    click.echo(json.dumps(value, indent=2, ensure_ascii=False, default=str))


def format_value(value: Any) -> str:
    """A task's argument or result as it travelled: JSON, on one line."""
    return json.dumps(value, ensure_ascii=False, default=str)


def format_table(
    headers: Sequence[str], rows: Sequence[Sequence[Any]], *, numeric: Sequence[int] = ()
) -> str:
    """Columns separated by two spaces; ``numeric`` column indexes are right-aligned."""
    cells = [[str(c) for c in headers], *([str(c) for c in row] for row in rows)]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = []
    for row in cells:
        parts = [
            cell.rjust(widths[i]) if i in numeric else cell.ljust(widths[i]) for i, cell in enumerate(row)
        ]
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines)


def format_time(epoch: float | None) -> str:
    """To the second in the app's ``timezone``, with the zone: what beat's log and the dashboard show."""
    if epoch is None:
        return "-"
    from conveyor.app import get_current_app
    from conveyor.schedules import get_zone

    try:
        zone = get_zone(get_current_app().conf.timezone)
    except ValueError:  # a bad timezone setting is reported where it is used, not here
        zone = dt.timezone.utc
    return show_time(epoch, zone)


def iso_time(epoch: float | None) -> str | None:
    """UTC ISO 8601 for ``--json`` output."""
    if epoch is None:
        return None
    return dt.datetime.fromtimestamp(epoch, tz=dt.timezone.utc).isoformat()


def shorten(text: str, width: int) -> str:
    """One line of at most ``width`` characters (a dead letter's reason in a table row)."""
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def confirm(question: str, *, force: bool) -> None:
    """Ask before deleting; ``-f`` skips the question.

    Reading the answer from stdin (not only a terminal) keeps ``echo y | conveyor
    purge`` working; a closed or empty stdin means nobody can answer, which aborts
    with a line saying how to skip the question rather than click's bare "Aborted!".

    Raises:
        click.ClickException: the answer is no, or there is no one to answer.
    """
    if force:
        return
    try:
        answer = click.confirm(question, default=False, err=True)
    except click.Abort:
        click.echo(err=True)  # end the prompt's line before the error
        raise click.ClickException(
            "no confirmation (stdin is closed or empty): pass -f/--force to skip the question"
        ) from None
    if not sys.stdin.isatty():
        click.echo(err=True)  # a piped answer is not echoed, so end the prompt's line here
    if not answer:
        raise click.ClickException("aborted: nothing was changed")


def split_names(values: Sequence[str]) -> list[str]:
    """``-Q a,b -Q c`` (or CONVEYOR_QUEUES="a,b c") -> ["a", "b", "c"], order kept, duplicates dropped."""
    names: dict[str, None] = {}
    for value in values:
        for part in value.replace(",", " ").split():
            names[part] = None
    return list(names)
