"""Jinja filters: times in the app's zone, durations, JSON text, URL path segments."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from conveyor.schedules import get_zone, show_time

if TYPE_CHECKING:
    from conveyor.app import Conveyor


def app_zone(conveyor_app: Conveyor) -> dt.tzinfo:
    try:
        return get_zone(conveyor_app.conf.timezone)
    except ValueError:  # a bad setting is the scheduler's error to report; show UTC here
        return dt.timezone.utc


def time_filter(zone: dt.tzinfo) -> Callable[[Any], str]:
    """Jinja's ``ts``: times in the app's ``timezone``, each with its zone."""

    def fmt(value: Any) -> str:
        if value in (None, ""):
            return "—"
        try:
            return show_time(float(value), zone)
        except (TypeError, ValueError, OverflowError):
            return str(value)

    return fmt


def fmt_seconds(value: Any) -> str:
    if value in (None, ""):
        return "—"
    seconds = float(value)
    if seconds < 0.001:
        return f"{seconds * 1_000_000:.0f}\u00a0µs"
    if seconds < 1:
        return f"{seconds * 1000:.1f}\u00a0ms"
    if seconds < 120:
        return f"{seconds:.2f}\u00a0s"
    if seconds < 7200:
        return f"{seconds / 60:.1f}\u00a0min"
    return f"{seconds / 3600:.1f}\u00a0h"


def fmt_json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, default=str)


def state_class(state: Any) -> str:
    return "state-" + str(state or "unknown").lower()


# A task id or queue name put raw into an href or a form's action could add path
# segments (a browser reads "\\" as "/"): every segment built from data is encoded.
def segment(value: Any) -> str:
    return quote(str(value), safe="")


def args_text(value: Any) -> str:
    """Arguments as JSON; a string is already text (shortened JSON, or an old event's repr)."""
    if value is None:
        return ""
    return value if isinstance(value, str) else fmt_json(value)
