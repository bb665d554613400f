"""The serializers a message or a result may use: ``json`` (default), ``msgpack``, ``pickle``.

A worker deserializes only what ``accept_content`` lists (default ``["json"]``), and a
client only the results ``result_accept_content`` lists. Pickle is never accepted
unless named there, because unpickling runs whatever code the data names: anyone who
can write to the broker could then run code on every worker. Keep pickle for brokers
only trusted processes can reach, and prefer JSON or msgpack.

On the wire, JSON is the plain envelope (docs/message-format.md); another serializer's
body is ``MAGIC + name + b"\\n" + payload``, so a reader knows the content type before
it decodes anything and can refuse it unread.
"""

from __future__ import annotations

import base64
import pickle
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from conveyor.exceptions import ConfigurationError, SerializationError
from conveyor.serialization import dumps, loads

MAGIC = b"\x00cv:"
# The envelope key marking a result value stored with a non-JSON result_serializer.
RESULT_KEY = "__conveyor_serialized__"


@dataclass(frozen=True)
class Serializer:
    name: str
    dumps: Callable[[Any], bytes]
    loads: Callable[[bytes], Any]


def _msgpack() -> Any:
    try:
        import msgpack  # type: ignore[import-untyped,import-not-found,unused-ignore]
    except ImportError:
        raise ConfigurationError(
            "the msgpack serializer needs its package: pip install 'conveyor-tasks[msgpack]'"
        ) from None
    return msgpack


_json_dumps = dumps
_json_loads = loads


def _msgpack_dumps(value: Any) -> bytes:
    try:
        return bytes(_msgpack().packb(value, use_bin_type=True))
    except (TypeError, ValueError, OverflowError) as exc:
        raise SerializationError(f"cannot encode as msgpack: {exc}") from None


def _msgpack_loads(data: bytes) -> Any:
    try:
        return _msgpack().unpackb(data, raw=False, strict_map_key=False)
    except Exception as exc:  # msgpack raises several unrelated types for bad input
        raise SerializationError(f"invalid msgpack: {exc}") from None


def _pickle_dumps(value: Any) -> bytes:
    try:
        return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    except (pickle.PicklingError, TypeError, AttributeError) as exc:
        raise SerializationError(f"cannot encode as pickle: {exc}") from None


def _pickle_loads(data: bytes) -> Any:
    try:
        return pickle.loads(data)  # noqa: S301 - only reached for content listed in accept_content
    except Exception as exc:
        raise SerializationError(f"invalid pickle: {exc}") from None


SERIALIZERS = {
    s.name: s
    for s in (
        Serializer("json", _json_dumps, _json_loads),
        Serializer("msgpack", _msgpack_dumps, _msgpack_loads),
        Serializer("pickle", _pickle_dumps, _pickle_loads),
    )
}
# What can be read without running code, for tools reading another process's messages.
SAFE = frozenset({"json", "msgpack"})
# Bodies this process made itself (a retry, a chain's next step): every content type.
OWN_BODIES = frozenset(SERIALIZERS)
# Celery's content-type names are accepted in accept_content too.
ALIASES = {
    "application/json": "json",
    "application/x-msgpack": "msgpack",
    "application/x-python-serialize": "pickle",
}


def get(name: str) -> Serializer:
    serializer = SERIALIZERS.get(ALIASES.get(name, name))
    if serializer is None:
        raise ConfigurationError(f"unknown serializer {name!r}: use one of {', '.join(SERIALIZERS)}")
    return serializer


def accepted(names: Iterable[str] | str | None) -> frozenset[str]:
    """``accept_content`` as serializer names (Celery's content types are understood too)."""
    if names is None:
        return frozenset({"json"})
    if isinstance(names, str):
        names = [names]
    return frozenset(get(n).name for n in names)


def encode_body(name: str, envelope: dict[str, Any] | list[Any]) -> bytes:
    """A message body: plain JSON, or the marked form for another serializer."""
    serializer = get(name)
    if serializer.name == "json":
        return serializer.dumps(envelope)
    return MAGIC + serializer.name.encode() + b"\n" + serializer.dumps(envelope)


def decode_body(body: bytes | str, accept: frozenset[str]) -> tuple[str, Any]:
    """The serializer's name and the envelope of a body, if its content type is accepted;
    a body that is not accepted is never deserialized.

    Raises:
        SerializationError: refused (the reason names the type and accept_content) or undecodable.
    """
    name: str = "json"
    payload: bytes | str = body
    if isinstance(body, bytes) and body.startswith(MAGIC):
        head, sep, payload = body[len(MAGIC) :].partition(b"\n")
        name = head.decode("ascii", "replace")
        if not sep or name not in SERIALIZERS:
            raise SerializationError(f"unknown content type {name!r}")
    if name not in accept:
        raise SerializationError(
            f"content type {name!r} refused: not in accept_content {sorted(accept)} (the message was "
            "not deserialized; add it to accept_content only if every producer is trusted)"
        )
    if name == "json":
        return name, _json_loads(payload)
    return name, SERIALIZERS[name].loads(payload)  # type: ignore[arg-type]


def wrap_result(name: str, value: Any) -> Any:
    """A result value as the stores keep it: itself (JSON), or a marked, base64 payload."""
    serializer = get(name)
    if serializer.name == "json":
        return value
    return {RESULT_KEY: serializer.name, "data": base64.b64encode(serializer.dumps(value)).decode()}


def unwrap_result(value: Any, accept: frozenset[str]) -> Any:
    if not (isinstance(value, dict) and RESULT_KEY in value and len(value) == 2):
        return value
    name = value[RESULT_KEY]
    if name not in accept:
        raise SerializationError(
            f"result content type {name!r} refused: not in result_accept_content {sorted(accept)}"
        )
    return get(name).loads(base64.b64decode(value["data"]))
