"""Send .. the task's first line on Redis, p50 and p99, for one or more Conveyor trees
run in turn against one private redis-server.

The task (``stamp(i)``) reads CLOCK_MONOTONIC first thing and pushes it to a Redis list
over its own connection; the driver reads the same clock just before ``delay()`` and
BLPOPs the list, so how the client learns of the start is outside the figure. The
worker is ``conveyor worker -c 2 --pool prefork`` with Conveyor's defaults (task events
on), as in bench/peers.py. Each tree is measured in a process of its own (its
``conveyor`` first on the path, the worker's too), ``--alternations`` times, trees in
turn, so load from elsewhere on the machine falls on each alike; the percentiles are
over every sample of a tree.

    python3 bench/round_trip_start.py                                  # this checkout
    python3 bench/round_trip_start.py --trees /tmp/base . -n 300 --alternations 3

``/tmp/base`` can be any checkout, e.g. ``git worktree add --detach /tmp/base <rev>``.
Starts its own redis-server on a free port (never 127.0.0.1:6379); exit status 1 when a
run failed.
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
import textwrap
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
STARTED_KEY = "bench:started"
TASKS = """
import os
import time

import redis

from conveyor import Conveyor

app = Conveyor("rts_tasks", broker=os.environ["RTS_BROKER_URL"])
_stamps = redis.Redis.from_url(os.environ["RTS_STAMP_URL"])


@app.task(name="stamp")
def stamp(i):
    started = time.monotonic()
    _stamps.rpush("STARTED_KEY", f"{i} {started!r}")
    return i
"""


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def one_run(tree: str, port: int, n: int, warmup: int, workdir: Path, run: int) -> list[float]:
    """In a process whose path starts with ``tree``: a worker, then n timed sends."""
    import redis

    import conveyor
    from conveyor import Conveyor

    if not Path(conveyor.__file__).resolve().is_relative_to(tree):
        raise RuntimeError(f"conveyor imported from {conveyor.__file__}, not from {tree}")

    prefix = f"rts{os.getpid()}x{run}"
    broker_url = f"redis://127.0.0.1:{port}/0?prefix={prefix}"
    stamp_url = f"redis://127.0.0.1:{port}/1"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")} | {
        "RTS_BROKER_URL": broker_url,
        "RTS_STAMP_URL": stamp_url,
        "PYTHONPATH": f"{tree}{os.pathsep}{workdir}",
    }
    stamps = redis.Redis.from_url(stamp_url)
    stamps.delete(STARTED_KEY)
    app = Conveyor("rts_tasks", broker=broker_url)
    stamp = app.task(name="stamp")(lambda i: i)  # the worker runs the real one
    log = open(workdir / f"worker-{run}.log", "wb")  # noqa: SIM115 - closed below
    worker = subprocess.Popen(
        [sys.executable, "-m", "conveyor.cli.main", "-A", "rts_tasks", "worker", "-c", "2",
         "--pool", "prefork", "-l", "warning"],
        cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    samples: list[float] = []
    try:
        for k in range(warmup + n):
            started = time.monotonic()
            stamp.delay(k)
            got = stamps.blpop([STARTED_KEY], timeout=60 if k == 0 else 10)
            if got is None:
                raise RuntimeError(f"stamp({k}) did not start; see {workdir}/worker-{run}.log")
            i, at = got[1].split()
            if int(i) != k:
                raise RuntimeError(f"stamp({k}) sent but stamp({int(i)}) started")
            if k >= warmup:
                samples.append((float(at) - started) * 1000)
    finally:
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait(10)
        log.close()
        app.close()
    return samples


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trees", nargs="+", default=[str(REPO)], help="Conveyor source trees to compare")
    p.add_argument("-n", type=int, default=300, help="timed sends per run (default 300)")
    p.add_argument("--warmup", type=int, default=20, help="untimed sends first (default 20)")
    p.add_argument("--alternations", type=int, default=3, help="runs per tree, trees in turn (default 3)")
    p.add_argument("--json", action="store_true", help="print the samples as JSON too")
    p.add_argument("--one", nargs=3, metavar=("TREE", "PORT", "WORKDIR"), help=argparse.SUPPRESS)
    p.add_argument("--run", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        tree, port, workdir = args.one
        print(json.dumps(one_run(tree, int(port), args.n, args.warmup, Path(workdir), args.run)))
        return 0

    sys.path.insert(0, str(REPO))
    from tests.redis_server import RedisServer

    trees = [str(Path(t).resolve()) for t in args.trees]
    with tempfile.TemporaryDirectory(prefix="rts-") as tmp:
        workdir = Path(tmp)
        (workdir / "rts_tasks.py").write_text(textwrap.dedent(TASKS).replace("STARTED_KEY", STARTED_KEY))
        server = RedisServer(workdir)
        server.start()
        samples: dict[str, list[float]] = {t: [] for t in trees}
        try:
            for run in range(args.alternations):
                for tree in trees:
                    env = dict(os.environ, PYTHONPATH=f"{tree}{os.pathsep}{workdir}")
                    done = subprocess.run(
                        [sys.executable, __file__, "--one", tree, str(server.port), str(workdir),
                         "-n", str(args.n), "--warmup", str(args.warmup), "--run", str(run)],
                        env=env, cwd=workdir, capture_output=True, text=True, timeout=600,
                    )  # fmt: skip
                    if done.returncode != 0:
                        print(f"{tree} run {run + 1} failed:\n{done.stderr[-3000:]}", file=sys.stderr)
                        return 1
                    got = json.loads(done.stdout.splitlines()[-1])
                    samples[tree] += got
                    print(
                        f"run {run + 1} {tree}: p50 {percentile(got, 0.5):.3f} ms, "
                        f"p99 {percentile(got, 0.99):.3f} ms",
                        flush=True,
                    )
        finally:
            server.stop()
    print(f"\nsend..task start over {args.alternations} runs x {args.n} sends (ms):")
    for tree, got in samples.items():
        print(
            f"  {tree}: p50 {percentile(got, 0.5):.3f}  p99 {percentile(got, 0.99):.3f}  "
            f"mean {statistics.fmean(got):.3f}  n={len(got)}"
        )
    if args.json:
        print(json.dumps(samples))
    return 0


if __name__ == "__main__":
    sys.exit(main())
