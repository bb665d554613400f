"""Tasks for bench/throughput.py: the benchmark and its worker (``-A bench_tasks``) import this.

The broker URL comes from ``CONVEYOR_BROKER_URL`` so both processes use the same store.
The tasks set no queue: the benchmark picks a fresh queue per phase (``-Q`` for the
worker, ``task_default_queue`` / ``queue=`` for the producer).
"""

from __future__ import annotations

import os

from conveyor import Conveyor

app = Conveyor("bench", broker=os.environ["CONVEYOR_BROKER_URL"])


@app.task(name="bench.noop")
def noop(n: int) -> None:
    """Does nothing; its (empty) result is stored."""
    return None


@app.task(name="bench.noop_ignored", ignore_result=True)
def noop_ignored(n: int) -> None:
    """Does nothing; no result is stored."""
    return None


@app.task(name="bench.add")
def add(x: int, y: int) -> int:
    return x + y
