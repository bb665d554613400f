"""The task of bench/async_tasks.py: the benchmark and its worker (``-A async_bench_tasks``) import this.

The broker URL comes from ``CONVEYOR_BROKER_URL`` so both processes use the same store.
Apart from bench_tasks.py on purpose: an ``async def`` task there would give every
throughput worker an event loop and a fetcher thread, and change what that benchmark measures.
"""

from __future__ import annotations

import asyncio
import os

from conveyor import Conveyor

app = Conveyor("async-bench", broker=os.environ["CONVEYOR_BROKER_URL"])


@app.task(name="bench.nap")
async def nap(n: int, seconds: float) -> int:
    """Waits ``seconds`` on the event loop (an I/O call's stand-in); its result is stored."""
    await asyncio.sleep(seconds)
    return n
