"""Dead letters by the id people hold, and replay with a fresh retry budget.

Brokers number dead letters by entry id, but people hold a task id (from a log
line, ``AsyncResult.id``, the dashboard), so each lookup takes either. Replay
normally moves the message back unchanged, retries counter included; with
``reset_retries`` it is published again with the counter at 0, so a task whose cause
is fixed gets its whole ``max_retries`` budget again.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence

from conveyor.brokers.base import AdminBroker, DeadLetter
from conveyor.exceptions import SerializationError
from conveyor.message import decode
from conveyor.serializers import SAFE

log = logging.getLogger("conveyor.dlq")
SCAN_PAGE = 500  # dead letters read per round trip while looking for a task id


def find(broker: AdminBroker, ref: str) -> DeadLetter | None:
    """The dead letter with entry id ``ref``, else the newest one for task id ``ref``."""
    if ref.isdigit():
        entry = broker.get_dead_letter(ref)
        if entry is not None:
            return entry
    return next((e for e in every(broker) if e.task_id == ref), None)


def every(broker: AdminBroker) -> Iterator[DeadLetter]:
    """Every dead letter, newest first, a page at a time."""
    offset = 0
    while True:
        page = broker.dead_letters(limit=SCAN_PAGE, offset=offset)
        yield from page
        if len(page) < SCAN_PAGE:
            return
        offset += SCAN_PAGE


def replay(broker: AdminBroker, entry_ids: Sequence[str] | None, *, reset_retries: bool = False) -> int:
    """Put dead letters back on their queue (all when None); returns how many."""
    if not reset_retries:
        return broker.replay_dead_letters(entry_ids)
    if entry_ids is None:
        entries = list(every(broker))
    else:
        found = (broker.get_dead_letter(i) for i in dict.fromkeys(entry_ids))
        entries = [e for e in found if e is not None]
    # Oldest failure first, as the broker's own replay queues them.
    return sum(_replay_fresh(broker, entry) for entry in sorted(entries, key=lambda e: e.failed_at))


def _replay_fresh(broker: AdminBroker, entry: DeadLetter) -> int:
    try:
        message = decode(entry.body, SAFE)  # never unpickle a stored body in an admin command
    except SerializationError:
        # No retries counter to reset in a body that is not a message: back as it was.
        return broker.replay_dead_letters([entry.id])
    # Published before the entry is removed, so a crash in between leaves the dead
    # letter in place (the task may run twice) and never loses it.
    broker.publish(message.with_changes(retries=0, queue=entry.queue))
    if broker.purge_dead_letters([entry.id]) == 0:
        log.warning(
            "dead letter %s (task %s) was replayed or purged by someone else meanwhile: "
            "the task may run twice",
            entry.id,
            entry.task_id,
        )
    return 1
