"""Reading requests: capped bodies, form and JSON fields, path segments, parameters.

A body is read only after the caller knows who sent it (an anonymous request is
refused before a byte of it is read), and never beyond ``max_bytes``: the declared
Content-Length is checked first, and a chunked body is counted as it streams, so
nobody can make the dashboard hold a large upload in memory.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qs, urlencode

from starlette.requests import Request

# Characters a browser reads as a path or URL boundary ("\" is "/" to it): an id or
# name holding one could turn a link or form built from it into another action.
UNSAFE_IN_SEGMENT = frozenset("/\\?#")


class HTTPError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def check_path_params(request: Request) -> None:
    """Refuse ids and names that carry a path or URL boundary.

    Raises:
        HTTPError: 400, naming which part was refused but not echoing it.
    """
    for key, value in request.path_params.items():
        if isinstance(value, str) and UNSAFE_IN_SEGMENT.intersection(value):
            raise HTTPError(400, f"invalid {key}: ids and names cannot contain / \\ ? or #")


async def read_raw(request: Request, max_bytes: int) -> bytes:
    """The body, up to ``max_bytes``.

    Raises:
        HTTPError: 413 when it is larger (declared or streamed).
    """
    too_big = HTTPError(413, f"the request body is larger than {max_bytes} bytes")
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            if int(declared) > max_bytes:
                raise too_big
        except ValueError:
            raise HTTPError(400, "bad Content-Length") from None
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise too_big
        chunks.append(chunk)
    return b"".join(chunks)


async def read_body(request: Request, max_bytes: int, *, is_form: bool = False) -> dict[str, Any]:
    """A form or JSON object body as a dict (``ids`` keeps every value of a form)."""
    raw = await read_raw(request, max_bytes)
    if not raw:
        return {}
    if is_form or is_form_request(request):
        parsed = parse_qs(raw.decode("utf-8", errors="replace"), keep_blank_values=True)
        return {k: (v if k == "ids" else v[-1]) for k, v in parsed.items()}
    try:
        data = json.loads(raw)
    except ValueError:
        raise HTTPError(400, "the request body is not JSON") from None
    return data if isinstance(data, dict) else {}


def is_form_request(request: Request) -> bool:
    return request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded")


def safe_next(value: Any) -> str:
    """A same-site path to go back to; anything else (``//evil``, a URL) becomes ``/``."""
    if isinstance(value, str) and value.startswith("/") and not value.startswith("//") and "\\" not in value:
        return value
    return "/"


def with_query(path: str, **params: str) -> str:
    base, _, query = path.partition("?")
    kept = {k: v[-1] for k, v in parse_qs(query).items() if k not in ("msg", "err")}
    kept.update(params)
    return f"{base}?{urlencode(kept)}"


def int_param(request: Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query_params.get(name)
    if raw in (None, ""):
        return default
    try:
        return max(low, min(high, int(raw)))
    except ValueError:
        raise HTTPError(400, f"{name} must be a whole number, got {raw!r}") from None


def truthy(value: Any) -> bool:
    return value is True or str(value).lower() in ("1", "true", "yes", "on")


def entry_ids(body: Mapping[str, Any]) -> list[str] | None:
    """The dead-letter ids a body names; None for ``all``."""
    if truthy(body.get("all")):
        return None
    ids = body.get("ids")
    if isinstance(ids, str):
        ids = [ids]
    if not isinstance(ids, list) or not ids or not all(isinstance(i, str) and i for i in ids):
        raise ValueError("give the dead-letter ids to act on, or all=true")
    return list(dict.fromkeys(ids))


def json_field(body: Mapping[str, Any], key: str, default: Any) -> Any:
    value = body.get(key)
    if value in (None, ""):
        return default
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except ValueError:
        raise ValueError(f"{key} is not valid JSON: {value!r}") from None


def parse_schedule(cron: str, every: str) -> Any:
    if bool(cron) == bool(every):
        raise ValueError('give either a cron expression ("*/15 * * * *") or an interval ("30s"), not both')
    from conveyor import schedules

    if cron:
        return schedules.crontab.from_string(cron)
    return schedules.parse_every(every)


def periodic_fields(
    body: Mapping[str, Any],
) -> tuple[str, str, Any, list[Any], dict[str, Any], dict[str, Any] | None]:
    """(name, task, schedule, args, kwargs, options) of the add-a-periodic-task form.

    Raises:
        ValueError: a field is missing or malformed (the message says which).
    """
    name = str(body.get("name") or "").strip()
    task = str(body.get("task") or "").strip()
    if not name or not task:
        raise ValueError("a periodic task needs a name and a task")
    schedule = parse_schedule(str(body.get("cron") or "").strip(), str(body.get("every") or "").strip())
    args = json_field(body, "args", [])
    kwargs = json_field(body, "kwargs", {})
    if not isinstance(args, list):
        raise ValueError("args must be a JSON array, e.g. [1, 2]")
    if not isinstance(kwargs, dict):
        raise ValueError('kwargs must be a JSON object, e.g. {"x": 1}')
    queue = str(body.get("queue") or "").strip()
    return name, task, schedule, args, kwargs, ({"queue": queue} if queue else None)
