"""The wire format: one versioned JSON envelope per task message.

docs/message-format.md documents it field by field so that other languages can
produce messages. Version 1 is the only one; a reader refuses a version it does not
know rather than guessing, so an old worker dead-letters a newer message instead of
running it wrongly.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field, replace
from typing import Any

from conveyor.exceptions import SerializationError
from conveyor.serializers import decode_body, encode_body

JSON_ONLY = frozenset({"json"})

FORMAT_VERSION = 1
MIN_PRIORITY = 0
MAX_PRIORITY = 9


def new_id() -> str:
    """A random (version 4) UUID string, as ``str(uuid.uuid4())`` gives, in a third of
    its time: every ``delay()`` makes one."""
    h = os.urandom(16).hex()
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{_VARIANT[int(h[16], 16) & 3]}{h[17:20]}-{h[20:]}"


_VARIANT = "89ab"  # RFC 4122: the two top bits of byte 8 are 10


@dataclass(frozen=True, slots=True)
class Message:
    """One task invocation as it travels through the broker.

    Times are epoch seconds (floats). ``priority`` runs 0 (lowest) to 9 (highest)
    within a queue, as in RabbitMQ and Celery's AMQP transport.
    """

    id: str
    task: str
    args: list[Any] = field(default_factory=list)
    kwargs: dict[str, Any] = field(default_factory=dict)
    queue: str = "default"
    priority: int = 0
    eta: float | None = None
    expires: float | None = None
    retries: int = 0
    parent_id: str | None = None
    root_id: str | None = None
    created_at: float = 0.0
    headers: dict[str, Any] = field(default_factory=dict)
    serializer: str = "json"  # the body's content type (conveyor/serializers.py)
    # The encoded form, kept after the first encode(): the producer encodes once to
    # check size and argument types, and the broker must not pay for it again.
    _body: bytes | None = field(default=None, init=False, repr=False, compare=False)

    def encode(self) -> bytes:
        body = self._body
        if body is None:
            body = self._encode()
            object.__setattr__(self, "_body", body)
        return body

    def _encode(self) -> bytes:
        return encode_body(
            self.serializer,
            {
                "v": FORMAT_VERSION,
                "id": self.id,
                "task": self.task,
                "args": self.args,
                "kwargs": self.kwargs,
                "queue": self.queue,
                "priority": self.priority,
                "eta": self.eta,
                "expires": self.expires,
                "retries": self.retries,
                "parent_id": self.parent_id,
                "root_id": self.root_id,
                "created_at": self.created_at,
                "headers": self.headers,
            },
        )

    def with_changes(self, **changes: Any) -> Message:
        return replace(self, **changes)


def decode(body: bytes | str, accept: frozenset[str] = JSON_ONLY) -> Message:
    """Parse one message, if its content type is in ``accept`` (the worker's accept_content).

    Raises:
        SerializationError: the content type is refused, or the body is not an envelope,
            or of an unknown version. The text says which, and ends up as the dead-letter reason.
    """
    serializer, data = decode_body(body, accept)
    if not isinstance(data, dict):
        raise SerializationError(f"message is a JSON {type(data).__name__}, expected an object")
    version = data.get("v")
    if version != FORMAT_VERSION:
        raise SerializationError(
            f"unknown message format version {version!r} (this worker reads {FORMAT_VERSION})"
        )
    try:
        args = data.get("args") or []
        kwargs = data.get("kwargs") or {}
        priority = int(data.get("priority") or 0)
        headers = data.get("headers") or {}
        if not isinstance(args, list) or not isinstance(kwargs, dict) or not isinstance(headers, dict):
            raise SerializationError("args must be a list, kwargs and headers objects")
        msg_id, task = data["id"], data["task"]
        if not isinstance(msg_id, str) or not isinstance(task, str) or not task:
            raise SerializationError("id and task must be non-empty strings")
        return Message(
            id=msg_id,
            task=task,
            args=args,
            kwargs=kwargs,
            queue=str(data.get("queue") or "default"),
            priority=min(MAX_PRIORITY, max(MIN_PRIORITY, priority)),
            eta=_opt_float(data.get("eta")),
            expires=_opt_float(data.get("expires")),
            retries=int(data.get("retries") or 0),
            parent_id=data.get("parent_id"),
            root_id=data.get("root_id"),
            created_at=float(data.get("created_at") or 0.0),
            headers=headers,
            serializer=serializer,
        )
    except KeyError as exc:
        raise SerializationError(f"message has no {exc.args[0]!r} field") from None
    except (TypeError, ValueError) as exc:
        raise SerializationError(f"malformed message field: {exc}") from None


def _opt_float(value: Any) -> float | None:
    return None if value is None else float(value)


def now() -> float:
    return time.time()
