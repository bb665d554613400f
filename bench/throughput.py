"""Throughput and latency of Conveyor on one broker, printed as a table.

What it measures (N no-op tasks, default 10,000):

- enqueue/s with one ``delay()`` per task, and with ``Task.map`` (one round trip);
- drain/s: N tasks already queued, consumed by ``conveyor worker -c 2`` (prefork),
  timed from the first task started to the last result stored, with results
  stored and with ``ignore_result=True``; wall time including worker start-up too;
- round trip: 300 sequential ``add.delay(i, i).get()``, p50 and p99;
- idle CPU of a running, idle worker (parent and children) over --idle-seconds.

Run:  python bench/throughput.py [--broker URL] [-n 10000] [--repeat 3] [--json]
The default broker is a fresh SQLite file in a temporary directory.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
TARGETS = {
    "enqueue delay()": ("≥ 5,000/s", 5000.0, True),
    "enqueue map()": ("≥ 30,000/s", 30000.0, True),
    "drain, results stored": ("≥ 3,000/s", 3000.0, True),
    "drain, results ignored": ("≥ 3,000/s", 3000.0, True),
    "round trip p50": ("≤ 2 ms", 2.0, False),
    "idle CPU": ("≈ 0 %", 0.5, False),
}


def start_worker(env: dict[str, str], concurrency: int = 2) -> subprocess.Popen[bytes]:
    cmd = [
        sys.executable,
        "-m",
        "conveyor.cli.main",
        "-A",
        "bench_tasks",
        "worker",
        "-c",
        str(concurrency),
        "--pool",
        "prefork",
        "-l",
        "warning",
        "-n",
        "bench@local",
    ]
    return subprocess.Popen(
        cmd, cwd=HERE, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
    )


def stop_worker(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f"benchmark gave up: {what} not done within {timeout:.0f}s")
        time.sleep(0.005)


def queue_empty(app: Any) -> bool:
    return not any(s.ready or s.in_flight or s.delayed for s in app.broker.queue_stats())


def enqueue_rates(bt: Any, n: int) -> tuple[float, float]:
    bt.app.broker.purge()
    started = time.perf_counter()
    for i in range(n):
        bt.noop_ignored.delay(i)
    single = n / (time.perf_counter() - started)
    bt.app.broker.purge()
    started = time.perf_counter()
    bt.noop_ignored.map([(i,) for i in range(n)])
    bulk = n / (time.perf_counter() - started)
    bt.app.broker.purge()
    return single, bulk


def drain_rate(bt: Any, env: dict[str, str], n: int, task: Any) -> tuple[float, float]:
    """(tasks/s from first start to last finish, tasks/s including worker start-up)."""
    bt.app.broker.purge()
    results = task.map([(i,) for i in range(n)])
    wall_start = time.perf_counter()
    proc = start_worker(env)
    try:
        wait_until(lambda: queue_empty(bt.app), 300, "drain")
        wall = time.perf_counter() - wall_start
    finally:
        stop_worker(proc)
    if task.ignore_result:
        return n / wall, n / wall
    records = bt.app.backend.get_many([r.id for r in results]).values()
    assert len(records) == n, f"{n - len(records)} results missing"
    first = min(r.started_at for r in records)
    last = max(r.finished_at for r in records)
    return n / (last - first), n / wall


def round_trips(bt: Any, env: dict[str, str], count: int = 300) -> tuple[float, float]:
    proc = start_worker(env)
    try:
        for i in range(20):  # warm-up, and waits for the worker to be up
            bt.add.delay(i, i).get(timeout=30)
        samples = []
        for i in range(count):
            started = time.perf_counter()
            bt.add.delay(i, i).get(timeout=10)
            samples.append((time.perf_counter() - started) * 1000)
    finally:
        stop_worker(proc)
    samples.sort()
    return statistics.median(samples), samples[int(len(samples) * 0.99) - 1]


def cpu_seconds(pids: list[int]) -> float:
    ticks = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def idle_cpu(bt: Any, env: dict[str, str], seconds: float) -> float:
    proc = start_worker(env)
    try:
        bt.add.delay(1, 1).get(timeout=30)  # up and idle
        time.sleep(1)
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
        pids = [proc.pid, *map(int, children)]
        before = cpu_seconds(pids)
        time.sleep(seconds)
        return (cpu_seconds(pids) - before) / seconds * 100
    finally:
        stop_worker(proc)


def median_of(repeat: int, run: Callable[[], Any]) -> Any:
    runs = [run() for _ in range(repeat)]
    if isinstance(runs[0], tuple):
        return tuple(statistics.median(values) for values in zip(*runs, strict=True))
    return statistics.median(runs)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--broker", help="broker URL (default: a fresh SQLite file)")
    parser.add_argument("-n", type=int, default=10_000, help="tasks per throughput run")
    parser.add_argument("--repeat", type=int, default=3, help="runs per throughput figure (median)")
    parser.add_argument("--idle-seconds", type=float, default=10.0)
    parser.add_argument("--skip-drain", action="store_true")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args()

    tmp = tempfile.mkdtemp(prefix="conveyor-bench-")
    url = args.broker or f"sqlite:///{tmp}/bench.sqlite3"
    os.environ["CONVEYOR_BROKER_URL"] = url
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(HERE), str(HERE.parent), os.environ.get("PYTHONPATH", "")]),
    }
    sys.path[:0] = [str(HERE), str(HERE.parent)]
    import bench_tasks as bt

    rows: dict[str, float] = {}
    single, bulk = median_of(args.repeat, lambda: enqueue_rates(bt, args.n))
    rows["enqueue delay()"], rows["enqueue map()"] = single, bulk
    if not args.skip_drain:
        busy, wall = median_of(args.repeat, lambda: drain_rate(bt, env, args.n, bt.noop))
        rows["drain, results stored"], rows["drain, results stored (incl. start-up)"] = busy, wall
        _, wall = median_of(args.repeat, lambda: drain_rate(bt, env, args.n, bt.noop_ignored))
        rows["drain, results ignored"] = wall
    p50, p99 = round_trips(bt, env)
    rows["round trip p50"], rows["round trip p99"] = p50, p99
    rows["idle CPU"] = idle_cpu(bt, env, args.idle_seconds)
    bt.app.close()

    if args.json:
        print(
            json.dumps(
                {"broker": bt.app.broker.url, "n": args.n, "repeat": args.repeat, "results": rows}, indent=2
            )
        )
        return
    unit = {"round trip p50": "ms", "round trip p99": "ms", "idle CPU": "% of a core"}
    print(f"broker: {url}   N={args.n}   median of {args.repeat}   worker: -c 2 prefork")
    print(f"{'metric':42} {'value':>14}  {'target':12} ")
    for name, value in rows.items():
        target, bound, higher = TARGETS.get(name, ("", None, True))
        ok = "" if bound is None else ("ok" if (value >= bound if higher else value <= bound) else "MISSED")
        shown = f"{value:,.2f} {unit[name]}" if name in unit else f"{value:,.0f}/s"
        print(f"{name:42} {shown:>14}  {target:12} {ok}")


if __name__ == "__main__":
    main()
