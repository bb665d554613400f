"""Tasks for bench/throughput.py; the worker imports this module (-A bench_tasks)."""

from __future__ import annotations

import os

from conveyor import Conveyor

app = Conveyor("bench", broker=os.environ["CONVEYOR_BROKER_URL"])


@app.task(name="bench.noop")
def noop(n: int) -> None:
    return None


@app.task(name="bench.noop_ignored", ignore_result=True)
def noop_ignored(n: int) -> None:
    return None


@app.task(name="bench.add")
def add(x: int, y: int) -> int:
    return x + y
