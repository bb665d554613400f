"""Tasks for bench/chaos.py: its workers (``-A chaos_tasks``) import this module, and the
benchmark builds the same app with ``make_app(url)`` to send them.

Each run appends one line, ``<n> <process group>``, to the file named by
``CHAOS_RUNS``, so the benchmark counts how often each task really ran (a result
record is overwritten by a second run; a line is not) and which worker incarnation
ran it (every worker is started in its own process group).
"""

from __future__ import annotations

import os
import time
from typing import Any

from conveyor import Conveyor

RECORD = "chaos.record"
SOAK = "chaos.soak"
UNKNOWN = "chaos.nobody_knows_me"  # dead-lettered: no worker registers it


def _append(n: int) -> None:
    # O_APPEND: each small write lands whole at the end, whichever process writes.
    fd = os.open(os.environ["CHAOS_RUNS"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, b"%d %d\n" % (n, os.getpgrp()))
    finally:
        os.close(fd)


def make_app(url: str) -> tuple[Conveyor, Any, Any]:
    """The chaos app on ``url`` and its two tasks, ``record`` (acks_late) and ``soak``."""
    app = Conveyor("chaos", broker=url)
    app.conf.update(broker_visibility_timeout=float(os.environ.get("CHAOS_VISIBILITY", "5")))

    @app.task(name=RECORD, acks_late=True)
    def record(n: int, sleep_s: float = 0.0) -> int:
        if sleep_s:
            time.sleep(sleep_s)
        _append(n)
        return n

    @app.task(name=SOAK)
    def soak(n: int) -> int:
        _append(n)
        return n

    return app, record, soak


if "CONVEYOR_BROKER_URL" in os.environ:  # the worker's side
    app, record, soak = make_app(os.environ["CONVEYOR_BROKER_URL"])
