"""``async def`` tasks: how long N coroutine tasks that each ``await asyncio.sleep(S)`` take
on ONE worker process (default: 1,000 tasks of 0.5 s).

For each pool (``--pool asyncio``, and a prefork worker with ``-c 1``: one child) and each
``--async-concurrency`` given, a worker is started and waits, ready; then the N tasks are
sent with one ``map()`` and the clock runs until every result is readable ("wall"). "busy"
is first task started .. last task finished, from the stored results. Default settings
otherwise: results stored, task events on. The lower bound is
ceil(N / concurrency) * S: 5 s for 1,000 x 0.5 s at the default concurrency of 100.

Brokers: ``sqlite`` (a fresh file in a temporary directory), ``redis`` (a private
``redis-server`` on a free port, never the machine's shared one) or a URL.

    python bench/async_tasks.py                                # sqlite and redis, 100 and 1000
    python bench/async_tasks.py --broker sqlite --concurrency 250 --repeat 1
    python bench/async_tasks.py -n 200 --seconds 0.1 --json

Exit status: 0, or 1 when a run failed (worker died, timeout, wrong results).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


class BenchError(Exception):
    pass


@contextlib.contextmanager
def broker_url(kind: str, workdir: Path) -> Iterator[str]:
    if kind == "sqlite":
        yield f"sqlite:///{workdir / 'broker.sqlite3'}"
        return
    if kind != "redis":
        yield kind
        return
    server = shutil.which("redis-server")
    if server is None:
        raise BenchError("redis-server is not installed: pass --broker sqlite or a URL")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen(
        [
            server,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(workdir),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                break
            if time.monotonic() > deadline:
                raise BenchError("redis-server did not start")
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(10)


def run_once(
    url: str, pool: str, concurrency: int, n: int, seconds: float, workdir: Path, timeout: float
) -> dict[str, Any]:
    env = {**os.environ, "CONVEYOR_BROKER_URL": url, "PYTHONPATH": f"{HERE}{os.pathsep}{ROOT}"}
    os.environ["CONVEYOR_BROKER_URL"] = url
    import async_bench_tasks as tasks  # noqa: PLC0415 - needs the URL set first

    queue = f"async-bench-{os.getpid()}-{time.monotonic_ns()}"
    pool_args = ["--pool", "asyncio"] if pool == "asyncio" else ["--pool", "prefork", "-c", "1"]
    log_path = workdir / f"worker-{queue}.log"
    command = [
        sys.executable, "-m", "conveyor.cli.main", "-A", "async_bench_tasks", "worker", "-Q", queue,
        *pool_args, "--async-concurrency", str(concurrency), "-l", "warning", "-n", f"{queue}@bench",
    ]  # fmt: skip
    with log_path.open("wb") as log:
        worker = subprocess.Popen(
            command, cwd=HERE, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            _wait_ready(tasks.app, f"{queue}@bench", worker, timeout)
            started = time.time()
            results = tasks.nap.map([(i, seconds) for i in range(n)], queue=queue)
            values = [r.get(timeout=max(0.1, started + timeout - time.time())) for r in results]
            wall = time.time() - started
            if sorted(values) != list(range(n)):
                raise BenchError("wrong results")
            records = tasks.app.backend.get_many([r.id for r in results])
            busy = max(r.finished_at for r in records.values()) - min(r.started_at for r in records.values())
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(worker.pid, signal.SIGKILL)
            worker.wait(10)
            with contextlib.suppress(Exception):
                tasks.app.broker.purge([queue])
            tasks.app.close()
            sys.modules.pop("async_bench_tasks", None)
    return {"wall_s": wall, "busy_s": busy}


def _wait_ready(app: Any, hostname: str, worker: subprocess.Popen[bytes], timeout: float) -> None:
    """Until the worker answers ping: it fetches from then on."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if worker.poll() is not None:
            raise BenchError(f"worker exited with code {worker.returncode}")
        if app.control.ping(destination=[hostname], timeout=0.5):
            time.sleep(1.0)  # its consumer (a prefork child: forked first) is fetching by then
            return
    raise BenchError("worker did not start")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("-n", type=int, default=1000, help="tasks per run")
    parser.add_argument("--seconds", type=float, default=0.5, help="each task's asyncio.sleep")
    parser.add_argument("--broker", action="append", help="sqlite, redis or a URL (repeatable)")
    parser.add_argument("--pool", action="append", choices=["asyncio", "prefork"], help="(repeatable)")
    parser.add_argument("--concurrency", type=int, action="append", help="--async-concurrency (repeatable)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per case; the median is shown")
    parser.add_argument("--timeout", type=float, default=60.0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    sys.path[:0] = [str(HERE), str(ROOT)]
    rows = []
    try:
        for kind in args.broker or ["sqlite", "redis"]:
            with (
                tempfile.TemporaryDirectory(prefix="conveyor-async-bench-") as tmp,
                broker_url(kind, Path(tmp)) as url,
            ):
                for pool in args.pool or ["asyncio", "prefork"]:
                    for concurrency in args.concurrency or [100, 1000]:
                        runs = [
                            run_once(url, pool, concurrency, args.n, args.seconds, Path(tmp), args.timeout)
                            for _ in range(args.repeat)
                        ]
                        rows.append({
                            "broker": kind if kind in ("sqlite", "redis") else "url", "pool": pool,
                            "async_concurrency": concurrency, "tasks": args.n, "sleep_s": args.seconds,
                            "wall_s": statistics.median(r["wall_s"] for r in runs),
                            "busy_s": statistics.median(r["busy_s"] for r in runs),
                            "floor_s": -(-args.n // concurrency) * args.seconds,
                        })  # fmt: skip
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{args.n} tasks x asyncio.sleep({args.seconds:g}) on one worker process (median of {args.repeat})")
    print(f"{'broker':8} {'pool':8} {'async-concurrency':>17} {'floor':>7} {'wall':>7} {'busy':>7}")
    for r in rows:
        print(
            f"{r['broker']:8} {r['pool']:8} {r['async_concurrency']:>17} {r['floor_s']:>6.2f}s "
            f"{r['wall_s']:>6.2f}s {r['busy_s']:>6.2f}s"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
