"""JSON over HTTP with the standard library: the feeds and services these tasks call."""

import json
import urllib.request
from typing import Any


def get_text(url: str, timeout_s: float = 30) -> str:
    with urllib.request.urlopen(url, timeout=timeout_s) as response:
        return str(response.read().decode())


def get_json(url: str, timeout_s: float = 30) -> Any:
    return json.loads(get_text(url, timeout_s))


def post_json(url: str, payload: Any, timeout_s: float = 30) -> int:
    request = urllib.request.Request(
        url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=timeout_s) as response:
        return int(response.status)
