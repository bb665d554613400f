"""Conveyor: a distributed task queue with Celery's API, on SQLite or Redis.

Only light modules are imported here; broker clients, the worker and the
dashboard load when first used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from conveyor.app import Conveyor, current_app, get_current_app, shared_task
from conveyor.canvas import Signature, chain, chord, chunks, group, signature, xmap, xstarmap
from conveyor.exceptions import (
    Reject,
    Retry,
    SoftTimeLimitExceeded,
    TimeLimitExceeded,
)
from conveyor.result import AsyncResult, EagerResult, GroupResult, ResultSet
from conveyor.task import Task

if TYPE_CHECKING:
    from conveyor.schedules import crontab, schedule

__version__ = "0.1.0"

__all__ = [
    "AsyncResult",
    "Conveyor",
    "EagerResult",
    "GroupResult",
    "Reject",
    "ResultSet",
    "Retry",
    "Signature",
    "SoftTimeLimitExceeded",
    "Task",
    "TimeLimitExceeded",
    "__version__",
    "chain",
    "chord",
    "chunks",
    "crontab",
    "current_app",
    "get_current_app",
    "group",
    "schedule",
    "shared_task",
    "signature",
    "xmap",
    "xstarmap",
]


def __getattr__(name: str) -> Any:
    # Schedules load on first use: a worker or a producer that never touches them
    # should not pay for their imports at start-up.
    if name in ("crontab", "schedule"):
        from conveyor import schedules

        return getattr(schedules, name)
    raise AttributeError(f"module 'conveyor' has no attribute {name!r}")
