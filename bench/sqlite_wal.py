"""How big the SQLite WAL grows while a worker drains a backlog, and at what rate.

Enqueues N no-op tasks (``bench.noop``, results stored; ``--ignore-result`` for
``bench.noop_ignored``) with ``Task.map`` in chunks, into a fresh SQLite file in a
temporary directory, then starts

    python -m conveyor.cli.main -A bench_tasks worker -c 2 -l warning

and, until the queue is empty, samples the size of ``<file>-wal`` every
``--interval`` (50 ms) and the queue every 0.25 s (the way a dashboard would).
Prints the enqueue rate, the drain rate (N / first message leased .. queue empty),
the WAL's peak size during the drain, the sizes of the database file and the WAL
once the queue is empty, and the worker's CPU time per task (its processes' user +
system time, start-up included: steadier than the rate on a busy machine). The
worker is stopped with SIGTERM at the end.

Run from the repository root (the script puts the repository on the path):

    python bench/sqlite_wal.py -n 300000
    python bench/sqlite_wal.py -n 20000 --json

Exit status 0, or 1 when the drain did not finish within ``--timeout``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
CHUNK = 10_000  # messages per Task.map call
MIB = 1024 * 1024


def load_tasks(url: str) -> ModuleType:
    os.environ["CONVEYOR_BROKER_URL"] = url
    for path in (str(REPO), str(HERE)):
        if path not in sys.path:
            sys.path.insert(0, path)
    return importlib.import_module("bench_tasks")


def size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return 0


def enqueue(task: Any, n: int) -> float:
    started = time.perf_counter()
    for first in range(0, n, CHUNK):
        task.map([(i,) for i in range(first, min(n, first + CHUNK))])
    return n / (time.perf_counter() - started)


def drain(tasks: ModuleType, tmp: Path, db: str, args: argparse.Namespace) -> dict[str, Any]:
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join(filter(None, [str(HERE), str(REPO), os.environ.get("PYTHONPATH")])),
    )
    log = open(tmp / "worker.log", "wb")  # noqa: SIM115 - closed below
    cmd = [sys.executable, "-m", "conveyor.cli.main", "-A", "bench_tasks", "worker"]
    cmd += ["-c", str(args.concurrency), "-l", "warning"]
    worker = subprocess.Popen(
        cmd, cwd=tmp, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    broker = tasks.app.broker
    cpu_before = _children_cpu_s()
    wal_peak = 0
    first_at = done_at = None
    next_poll = 0.0
    deadline = time.monotonic() + args.timeout
    try:
        while done_at is None:
            now = time.monotonic()
            if now > deadline or worker.poll() is not None:
                raise SystemExit(
                    f"drain did not finish (worker exit code {worker.poll()}); see {tmp}/worker.log"
                )
            wal_peak = max(wal_peak, size(db + "-wal"))
            if now >= next_poll:
                next_poll = now + 0.25
                stats = broker.queue_stats(["default"])[0]
                if first_at is None and (stats.in_flight or stats.ready < args.n):
                    first_at = now
                if stats.ready == 0 and stats.in_flight == 0:
                    done_at = now
            time.sleep(args.interval)
        assert first_at is not None
        result = {
            "drain_per_s": args.n / max(done_at - first_at, 1e-9),
            "wal_peak_mib": wal_peak / MIB,
            "wal_after_mib": size(db + "-wal") / MIB,
            "db_after_mib": size(db) / MIB,
        }
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        try:
            worker.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait()
        log.close()
    # The worker reaped its prefork children, so their CPU is in its own children's total.
    result["worker_cpu_ms_per_task"] = (_children_cpu_s() - cpu_before) * 1000 / args.n
    return result


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-n", type=int, default=300_000, help="tasks to enqueue and drain (300,000)")
    p.add_argument("-c", "--concurrency", type=int, default=2, help="worker processes (2)")
    p.add_argument("--interval", type=float, default=0.05, help="seconds between WAL size samples (0.05)")
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds the drain may take (1800)")
    p.add_argument("--ignore-result", action="store_true", help="drain bench.noop_ignored (no results)")
    p.add_argument("--options", default="", help="sqlite URL options, e.g. wal_limit_mib=32")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory")
    p.add_argument("--json", action="store_true", help="print JSON instead of lines")
    args = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="conveyor-wal-"))
    db = str(tmp / "wal.sqlite3")
    tasks = load_tasks(f"sqlite:///{db}" + (f"?{args.options}" if args.options else ""))
    task = tasks.noop_ignored if args.ignore_result else tasks.noop
    try:
        out: dict[str, Any] = {"n": args.n, "concurrency": args.concurrency}
        out["enqueue_per_s"] = enqueue(task, args.n)
        out["wal_after_enqueue_mib"] = size(db + "-wal") / MIB
        out.update(drain(tasks, tmp, db, args))
    finally:
        tasks.app.close()
        if args.keep:
            print(f"kept {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    if args.json:
        print(json.dumps(out))
    else:
        print(f"tasks {out['n']:,}, worker -c {out['concurrency']}")
        print(f"enqueue (Task.map, {CHUNK:,} a call)  {out['enqueue_per_s']:>10,.0f}/s")
        print(f"WAL after enqueue                 {out['wal_after_enqueue_mib']:>10.1f} MiB")
        print(f"drain (first lease .. empty)      {out['drain_per_s']:>10,.0f}/s")
        print(f"WAL peak during drain             {out['wal_peak_mib']:>10.1f} MiB")
        print(f"WAL when empty                    {out['wal_after_mib']:>10.1f} MiB")
        print(f"database when empty               {out['db_after_mib']:>10.1f} MiB")
        print(f"worker CPU per task (all processes) {out['worker_cpu_ms_per_task']:>8.3f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
