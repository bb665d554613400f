"""The async client against the sync one, per broker, printed as one table.

For each broker (SQLite in a temporary file, a private redis-server, PostgreSQL at
``CONVEYOR_TEST_POSTGRES_URL`` in a fresh schema), with a no-op task:

1. enqueue: N sequential ``delay()`` calls, then N sequential ``await adelay()``,
   then N ``adelay()`` run 50 at a time with ``asyncio.gather`` (tasks/s);
2. loop stall: the longest gap seen by a 1 ms ticker on the same loop while the
   sequential ``adelay()`` loop runs (how long the loop was kept from other work);
3. round trip, one prefork worker (``-c 1``) running: ``--latency-count`` sequential
   ``delay().get()`` and ``await (await adelay()).aget()``, p50 and p99 in ms.

Run from the repository root:

    python bench/async_client.py                  # N=2000, 300 round trips
    python bench/async_client.py -n 500 --brokers sqlite,redis
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

TASKS = """
from conveyor import Conveyor
import os
app = Conveyor("abench", broker=os.environ["ABENCH_BROKER"])

@app.task(name="abench.noop")
def noop(i):
    return i
"""


def _broker_url(kind: str, tmp: Path, cleanup: list[object]) -> str:
    if kind == "sqlite":
        return f"sqlite:///{tmp / 'broker.sqlite3'}"
    if kind == "redis":
        from tests.redis_server import RedisServer

        server = RedisServer(tmp)
        server.start()
        cleanup.append(server.stop)
        return server.url
    from tests.postgres_server import POSTGRES_URL, drop_schema, with_schema

    schema = f"abench_{uuid.uuid4().hex[:10]}"
    cleanup.append(lambda: drop_schema(POSTGRES_URL, schema))
    return with_schema(POSTGRES_URL, schema)


def _rate(n: int, seconds: float) -> str:
    return f"{n / seconds:,.0f}/s"


def _ms(values: list[float], q: float) -> str:
    ordered = sorted(values)
    return f"{ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000:.2f}"


async def _async_enqueue(noop: object, n: int) -> tuple[float, float, float]:
    stall = 0.0
    done = False

    async def ticker() -> None:
        nonlocal stall
        last = time.perf_counter()
        while not done:
            await asyncio.sleep(0.001)
            now = time.perf_counter()
            stall = max(stall, now - last)
            last = now

    await noop.adelay(0)  # type: ignore[attr-defined]  # connect first: not measured
    tick = asyncio.ensure_future(ticker())
    await asyncio.sleep(0.01)  # the ticker runs before the sends start
    started = time.perf_counter()
    for i in range(n):
        await noop.adelay(i)  # type: ignore[attr-defined]
    sequential = time.perf_counter() - started
    done = True
    await tick
    started = time.perf_counter()
    for first in range(0, n, 50):
        await asyncio.gather(*(noop.adelay(i) for i in range(first, min(n, first + 50))))  # type: ignore[attr-defined]
    concurrent = time.perf_counter() - started
    return sequential, concurrent, stall


async def _async_round_trips(noop: object, count: int) -> list[float]:
    times = []
    for i in range(count + 20):
        started = time.perf_counter()
        assert await (await noop.adelay(i)).aget(timeout=10) == i  # type: ignore[attr-defined]
        if i >= 20:
            times.append(time.perf_counter() - started)
    return times


def run(kind: str, n: int, latency_count: int) -> dict[str, str]:
    tmp = Path(tempfile.mkdtemp(prefix="abench-"))
    cleanup: list[object] = []
    worker = None
    try:
        url = _broker_url(kind, tmp, cleanup)
        (tmp / "abench_tasks.py").write_text(TASKS)
        os.environ["ABENCH_BROKER"] = url
        sys.path.insert(0, str(tmp))
        sys.modules.pop("abench_tasks", None)
        import abench_tasks  # type: ignore[import-not-found]

        noop, app = abench_tasks.noop, abench_tasks.app
        noop.delay(0)
        started = time.perf_counter()
        for i in range(n):
            noop.delay(i)
        sync_enqueue = time.perf_counter() - started
        sequential, concurrent, stall = asyncio.run(_async_enqueue(noop, n))
        app.broker.purge()

        env = {**os.environ, "PYTHONPATH": f"{tmp}{os.pathsep}{ROOT}"}
        log = open(tmp / "worker.log", "wb")  # noqa: SIM115
        worker = subprocess.Popen(
            [sys.executable, "-m", "conveyor.cli.main", "-A", "abench_tasks", "worker", "-c", "1", "-l", "warning"],
            cwd=tmp, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        for i in range(20):
            assert noop.delay(i).get(timeout=30) == i
        sync_trips = []
        for i in range(latency_count):
            started = time.perf_counter()
            assert noop.delay(i).get(timeout=10) == i
            sync_trips.append(time.perf_counter() - started)
        async_trips = asyncio.run(_async_round_trips(noop, latency_count))
        app.close()
        return {
            "broker": kind,
            "delay()": _rate(n, sync_enqueue),
            "adelay()": _rate(n, sequential),
            "adelay() x50": _rate(n, concurrent),
            "loop stall ms": f"{stall * 1000:.1f}",
            "get p50/p99 ms": f"{_ms(sync_trips, 0.5)}/{_ms(sync_trips, 0.99)}",
            "aget p50/p99 ms": f"{_ms(async_trips, 0.5)}/{_ms(async_trips, 0.99)}",
        }
    finally:
        if worker is not None:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait(10)
        for step in reversed(cleanup):
            step()  # type: ignore[operator]
        sys.modules.pop("abench_tasks", None)
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=2000)
    parser.add_argument("--latency-count", type=int, default=300)
    parser.add_argument("--brokers", default="sqlite,redis,postgres")
    args = parser.parse_args()
    rows = [run(kind, args.n, args.latency_count) for kind in args.brokers.split(",")]
    columns = list(rows[0])
    widths = [max(len(c), *(len(r[c]) for r in rows)) for c in columns]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)))
    for row in rows:
        print("  ".join(row[c].ljust(w) for c, w in zip(columns, widths, strict=True)))


if __name__ == "__main__":
    main()
