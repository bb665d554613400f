"""Unique tasks: a send claims a named lease in the broker, keyed by task name and
idempotency key (or the arguments); a send that finds it held sends nothing.

docs/guarantees.md ("Unique tasks") says how keys meet retries, expiry and the
dead-letter queue. The worker releases a key held "until finished" in the write
that settles the task (worker/settle.py).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from conveyor.serialization import dumps

if TYPE_CHECKING:
    from conveyor.brokers.base import AdminBroker
    from conveyor.config import Settings
    from conveyor.message import Message


def unique_lease(
    conf: Settings,
    name: str,
    args: Sequence[Any] | None,
    kwargs: Mapping[str, Any] | None,
    key: str | None,
    unique_for: float | bool | None,
    default: float | bool | None,
) -> dict[str, Any] | None:
    """The lease a send claims (``headers["unique"]``), or None for a plain send.

    ``unique_for`` (this send's) wins over ``default`` (the task's); an
    ``idempotency_key`` alone means "until the task finishes".
    """
    held = unique_for if unique_for is not None else (True if key is not None else default)
    if not held:
        return None
    if key is None:
        key = hashlib.sha256(dumps([list(args or ()), dict(kwargs or {})])).hexdigest()
    until_done = held is True
    # A ceiling even "until finished": a message purged by hand never finishes.
    ttl = float(conf.result_expires or 86400.0) if until_done else float(held)
    return {"name": f"unique:{name}:{key}", "ttl": ttl, "release": until_done}


def send_unique(broker: AdminBroker, message: Message) -> str:
    """Claim the message's key, then publish it; the holder's id when the key was held."""
    unique = message.headers["unique"]
    holder = broker.claim_lease(unique["name"], message.id, unique["ttl"])
    if holder != message.id:
        return holder
    try:
        broker.publish(message, eta=message.eta)
    except BaseException:
        broker.release_lease(unique["name"], message.id)  # not sent: nothing holds the key
        raise
    return message.id
