"""How fast the dashboard's tasks page answers with 100,000 stored task events.

Writes N task events (received/started/finished, about a third of them per kind, 10%
failures) into a private SQLite broker's "events" log, starts `conveyor dashboard`
as a real uvicorn process on it, and times the tasks page (HTML, its live fragment)
and /api/tasks, unfiltered and with each filter, over keep-alive HTTP.

    python bench/dashboard_tasks.py                # 100,000 events, 30 requests per row
    python bench/dashboard_tasks.py --events-per-task 1   # 100,000 tasks, one event each
    python bench/dashboard_tasks.py --events 200000 --repeat 50

The first request loads the whole log into the dashboard's task index; it is
reported on its own line, and the rows after it are steady state. Target: every
row's p95 under 200 ms.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from conveyor import Conveyor  # noqa: E402

NAMES = ("billing.charge", "email.send", "reports.build", "images.resize", "sync.push")
QUEUES = ("default", "email", "reports")
WORKERS = ("w1@host-a", "w2@host-a", "w3@host-b")


def fill(app: Conveyor, events: int, per_task: int) -> int:
    """Write ``events`` task events in batches; returns the task count.

    ``per_task`` 3 = received, started, finished; 1 = received only, which gives the
    index the most tasks (100,000 rows) for the same number of events.
    """
    tasks = events // per_task
    now = time.time() - tasks * 0.01
    batch: list[bytes] = []
    for i in range(tasks):
        ts = now + i * 0.01
        base = {
            "id": f"{i:08d}-bench-task",
            "name": NAMES[i % len(NAMES)],
            "queue": QUEUES[i % len(QUEUES)],
            "worker": WORKERS[i % len(WORKERS)],
        }
        failed = i % 10 == 0
        end = {
            **base,
            "type": "task-failed" if failed else "task-succeeded",
            "ts": ts + 0.05,
            "runtime": 0.05,
        }
        if failed:
            end.update(exception="ValueError: bad input", traceback="Traceback ...\nValueError: bad input")
        else:
            end["result"] = repr(i)
        received = {
            **base,
            "type": "task-received",
            "ts": ts,
            "args": f"({i}, 'customer-{i % 997}')",
            "kwargs": "{}",
        }
        batch.append(orjson.dumps(received))
        if per_task == 3:
            batch.append(orjson.dumps({**base, "type": "task-started", "ts": ts + 0.001}))
            batch.append(orjson.dumps(end))
        if len(batch) >= 3000:
            app.broker.log_append("events", batch, maxlen=events)
            batch = []
    if batch:
        app.broker.log_append("events", batch, maxlen=events)
    return tasks


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--events-per-task", type=int, choices=(1, 3), default=3)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="conveyor-dash-bench-") as tmp:
        url = f"sqlite:///{Path(tmp) / 'broker.sqlite3'}"
        app = Conveyor("bench", broker=url, events_max_count=args.events)
        t0 = time.perf_counter()
        tasks = fill(app, args.events, args.events_per_task)
        print(
            f"stored {tasks * args.events_per_task:,} events ({tasks:,} tasks) in {time.perf_counter() - t0:.1f} s"
        )
        app.close()

        port = free_port()
        env = {**os.environ, "CONVEYOR_EVENTS_MAX_COUNT": str(args.events)}
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "conveyor.cli.main",
                "-b",
                url,
                "dashboard",
                "--port",
                str(port),
                "-l",
                "warning",
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            base = f"http://127.0.0.1:{port}"
            with httpx.Client(base_url=base, timeout=60) as client:
                deadline = time.monotonic() + 30
                while True:
                    try:
                        client.get("/static/dashboard.css")
                        break
                    except httpx.TransportError:
                        if time.monotonic() > deadline:
                            raise SystemExit("the dashboard did not start") from None
                        time.sleep(0.1)
                t0 = time.perf_counter()
                first = client.get("/api/tasks")
                print(
                    f"first request (loads {first.json()['total']:,} tasks into the index): "
                    f"{(time.perf_counter() - t0) * 1000:.0f} ms"
                )
                rows = [
                    ("GET /tasks (HTML)", "/tasks"),
                    ("GET /tasks?fragment=1 (live refresh)", "/tasks?fragment=1"),
                    ("GET /api/tasks", "/api/tasks"),
                    ("GET /api/tasks?page=500", "/api/tasks?page=500"),
                    ("GET /tasks?state=FAILURE", "/tasks?state=FAILURE"),
                    ("GET /api/tasks?name=email.send", "/api/tasks?name=email.send"),
                    ("GET /api/tasks?search=customer-42", "/api/tasks?search=customer-42"),
                    ("GET /tasks?search=customer-42&page=3", "/tasks?search=customer-42&page=3"),
                    ("GET /api/tasks/<id> (detail)", "/api/tasks/00012345-bench-task"),
                    ("GET / (overview)", "/"),
                ]
                print(f"\n{'request':42} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8}  (n={args.repeat})")
                worst = 0.0
                for label, path in rows:
                    times = []
                    for _ in range(args.repeat):
                        t0 = time.perf_counter()
                        resp = client.get(path)
                        times.append((time.perf_counter() - t0) * 1000)
                        if resp.status_code != 200:
                            raise SystemExit(f"{path}: HTTP {resp.status_code}")
                    times.sort()
                    p95 = times[min(len(times) - 1, int(round(0.95 * len(times))) - 1)]
                    worst = max(worst, p95)
                    print(f"{label:42} {statistics.median(times):8.1f} {p95:8.1f} {times[-1]:8.1f}")
                print(f"\nworst p95: {worst:.1f} ms ({'OK' if worst < 200 else 'OVER'} the 200 ms target)")
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(10)


if __name__ == "__main__":
    main()
