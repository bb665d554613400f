"""The wire format: one versioned envelope per task message.

docs/message-format.md documents it field by field so that other languages can
produce messages. Two forms are read:

- version 2, written by Conveyor: a packed array, ``[2, id, task, args, created_at]``
  followed, only when some other field differs from its default, by an object of
  those fields under their version 1 names. A queued ``add(1, 2)`` is about a third
  of its version 1 size, which is what a broker keeps per waiting message;
- version 1, the object of every field by name, written before version 2 and still
  accepted from any producer: messages already queued when a broker's workers are
  upgraded run as before.

A reader refuses a version it does not know rather than guessing, so an old worker
dead-letters a newer message instead of running it wrongly (and a version 1 worker
dead-letters version 2 messages: upgrade workers before producers, docs/message-format.md).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field, replace
from typing import Any

from conveyor.exceptions import SerializationError
from conveyor.serialization import loads
from conveyor.serializers import decode_body, encode_body

JSON_ONLY = frozenset({"json"})

FORMAT_VERSION = 2  # what encode() writes
OBJECT_VERSION = 1  # the object form, still read
DEFAULT_QUEUE = "default"
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
    queue: str = DEFAULT_QUEUE
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
        # Every field left out is one the decoder restores as its default: what a
        # broker stores per queued message is mostly this envelope.
        extra: dict[str, Any] = {}
        if self.kwargs:
            extra["kwargs"] = self.kwargs
        if self.queue != DEFAULT_QUEUE:
            extra["queue"] = self.queue
        if self.priority:
            extra["priority"] = self.priority
        if self.eta is not None:
            extra["eta"] = self.eta
        if self.expires is not None:
            extra["expires"] = self.expires
        if self.retries:
            extra["retries"] = self.retries
        if self.parent_id is not None:
            extra["parent_id"] = self.parent_id
        if self.root_id is not None:
            extra["root_id"] = self.root_id
        if self.headers:
            extra["headers"] = self.headers
        packed: list[Any] = [FORMAT_VERSION, self.id, self.task, self.args, self.created_at]
        if extra:
            packed.append(extra)
        return encode_body(self.serializer, packed)

    def with_changes(self, **changes: Any) -> Message:
        return replace(self, **changes)


def decode(body: bytes | str, accept: frozenset[str] = JSON_ONLY) -> Message:
    """Parse one message, if its content type is in ``accept`` (the worker's accept_content).

    Raises:
        SerializationError: the content type is refused, or the body is not an envelope,
            or of an unknown version. The text says which, and ends up as the dead-letter reason.
    """
    serializer, data = decode_body(body, accept)
    if isinstance(data, (list, tuple)):
        data = _unpack(data)
    elif not isinstance(data, dict):
        raise SerializationError(f"message is a {type(data).__name__}, expected an array or an object")
    elif data.get("v") != OBJECT_VERSION:
        raise SerializationError(_unknown(data.get("v")))
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
            queue=str(data.get("queue") or DEFAULT_QUEUE),
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


def _unknown(version: Any) -> str:
    return (
        f"unknown message format version {version!r} (this worker reads {FORMAT_VERSION} "
        f"as an array and {OBJECT_VERSION} as an object)"
    )


_PACKED = ("v", "id", "task", "args", "created_at")


def _unpack(packed: list[Any] | tuple[Any, ...]) -> dict[str, Any]:
    """A version 2 array as the version 1 object it stands for."""
    version = packed[0] if packed else None
    if version != FORMAT_VERSION:
        raise SerializationError(_unknown(version))
    if not len(_PACKED) <= len(packed) <= len(_PACKED) + 1:
        raise SerializationError(f"a version 2 message has 5 or 6 elements, not {len(packed)}")
    data = dict(zip(_PACKED, packed[: len(_PACKED)], strict=True))
    if len(packed) > len(_PACKED):
        extra = packed[-1]
        if not isinstance(extra, dict):
            raise SerializationError("the 6th element of a version 2 message must be an object")
        # The packed fields win: an extra must not replace the id the broker filed it under.
        data = {**extra, **data}
    return data


def readable(body: bytes) -> Any:
    """A JSON body as people should read it (dead letters in the CLI and the dashboard):
    a message's fields as one object whichever version wrote it, other JSON as it is.

    Raises:
        SerializationError: the body is not JSON.
    """
    data = loads(body)
    if isinstance(data, list) and data and data[0] == FORMAT_VERSION:
        try:
            return _unpack(data)
        except SerializationError:
            return data
    return data


def _opt_float(value: Any) -> float | None:
    return None if value is None else float(value)


def now() -> float:
    return time.time()
