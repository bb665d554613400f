"""JSON on the wire, and the conversions between exceptions and plain data.

Why JSON and not pickle: a message is read by processes that did not write it (other
hosts, other versions, other languages), and unpickling data from a shared broker
runs whatever code the data names. orjson is used because encoding and decoding
sit on the hot path of every enqueue and every task.
"""

from __future__ import annotations

import builtins
import importlib
import traceback as tb_module
from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from conveyor.exceptions import SerializationError

_OPTIONS = orjson.OPT_NON_STR_KEYS


def dumps(value: Any) -> bytes:
    """Encode a value as JSON bytes.

    Raises:
        SerializationError: the value holds something JSON cannot represent.
    """
    try:
        return orjson.dumps(value, option=_OPTIONS)
    except TypeError as exc:
        raise SerializationError(f"cannot encode as JSON: {exc}") from None


def loads(data: bytes | str) -> Any:
    """Decode JSON bytes.

    Raises:
        SerializationError: the data is not valid JSON.
    """
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise SerializationError(f"invalid JSON: {exc}") from None


def check_arguments(args: Sequence[Any], kwargs: Mapping[str, Any], task_name: str) -> None:
    """Find the first argument that cannot travel as JSON and name it in a TypeError.

    Only called after encoding the whole envelope failed, so the common path pays
    for one encode, not one per argument.
    """
    for index, value in enumerate(args):
        _check_one(value, f"positional argument {index}", task_name)
    for key, value in kwargs.items():
        if not isinstance(key, str):
            raise TypeError(f"{task_name}: keyword argument names must be strings, got {key!r}")
        _check_one(value, f"keyword argument {key!r}", task_name)


def _check_one(value: Any, where: str, task_name: str) -> None:
    try:
        orjson.dumps(value, option=_OPTIONS)
    except TypeError as exc:
        raise TypeError(
            f"{task_name}: {where} of type {type(value).__name__} cannot be sent as JSON ({exc}); "
            "pass plain data (str, int, float, bool, None, list, dict) such as an id instead"
        ) from None


def exception_to_dict(exc: BaseException) -> dict[str, Any]:
    """Describe an exception as data so another process can raise the same type again."""
    cls = type(exc)
    try:
        args = orjson.loads(orjson.dumps(list(exc.args), option=_OPTIONS))
    except TypeError:
        args = [str(exc)]
    return {
        "type": cls.__name__,
        "module": cls.__module__,
        "message": str(exc),
        "args": args,
    }


def exception_from_dict(data: Mapping[str, Any]) -> BaseException:
    """Rebuild an exception from exception_to_dict() output.

    The original class is used when it can be imported and is an exception class;
    otherwise a stand-in class with the same name is made, so `except` on the name
    still reads well in logs and the message is never lost.
    """
    name = str(data.get("type") or "Exception")
    module = str(data.get("module") or "builtins")
    message = str(data.get("message") or "")
    args = data.get("args")
    cls = _find_exception_class(module, name)
    if cls is not None:
        try:
            return cls(*args) if isinstance(args, list) else cls(message)
        except Exception:  # a constructor with other required arguments
            try:
                return cls(message)
            except Exception:
                pass
    fallback: type[Exception] = type(name, (Exception,), {"__module__": module})
    return fallback(message)


def _find_exception_class(module: str, name: str) -> type[BaseException] | None:
    try:
        mod = builtins if module == "builtins" else importlib.import_module(module)
    except Exception:
        return None
    cls = getattr(mod, name, None)
    if isinstance(cls, type) and issubclass(cls, BaseException):
        return cls
    return None


def format_traceback(exc: BaseException) -> str:
    return "".join(tb_module.format_exception(type(exc), exc, exc.__traceback__))
