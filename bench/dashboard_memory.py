"""The dashboard's memory (RSS) and page times with a full event log of large arguments.

Writes ``--events`` task events (received, started, finished: three per task, 10%
failures with a traceback, each task's args a ``--args-bytes`` repr text, as a worker
writes them) into a private SQLite broker, starts ``conveyor dashboard`` as a real
process on it, waits until its index has loaded the log, and reports its RSS then,
the time of the first and of later requests of each page, and the RSS at the end.

    python bench/dashboard_memory.py                    # 300,000 events, 1 KiB args
    python bench/dashboard_memory.py --events 100000
    python bench/dashboard_memory.py --args-bytes 0     # short args

Target: RSS at most 150 MiB at 300,000 events with 1 KiB arguments.
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
TRACEBACK = "Traceback (most recent call last):\n" + '  File "app/tasks.py", line 42, in charge\n' * 12
TRACEBACK += "ValueError: bad input\n"


def fill(app: Conveyor, events: int, args_bytes: int) -> int:
    tasks = events // 3
    start = time.time() - tasks * 0.01
    batch: list[bytes] = []
    pad = "x" * max(0, args_bytes - 40)
    for i in range(tasks):
        ts = start + i * 0.01
        base = {
            "id": f"{i:08d}-bench-task",
            "name": NAMES[i % 5],
            "queue": QUEUES[i % 3],
            "worker": WORKERS[i % 3],
        }
        args = f"({i}, 'customer-{i % 997}', '{pad}')"[: max(args_bytes, 30)]
        batch.append(
            orjson.dumps(
                {**base, "type": "task-received", "ts": ts, "args": args, "kwargs": "{}", "retries": 0}
            )
        )
        batch.append(orjson.dumps({**base, "type": "task-started", "ts": ts + 0.001}))
        end = {**base, "ts": ts + 0.05, "runtime": 0.049}
        if i % 10 == 0:
            end.update(type="task-failed", exception="ValueError: bad input", traceback=TRACEBACK)
        else:
            end.update(type="task-succeeded", result=repr(i))
        batch.append(orjson.dumps(end))
        if len(batch) >= 3000:
            app.broker.log_append("events", batch, maxlen=events)
            batch = []
    if batch:
        app.broker.log_append("events", batch, maxlen=events)
    return tasks


def rss_mib(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of a process, in MiB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def timed(client: httpx.Client, path: str, repeat: int) -> tuple[float, float]:
    """(first request ms, median of the next ``repeat`` ms)."""
    times = []
    for _ in range(repeat + 1):
        t0 = time.perf_counter()
        resp = client.get(path)
        times.append((time.perf_counter() - t0) * 1000)
        if resp.status_code != 200:
            raise SystemExit(f"{path}: HTTP {resp.status_code}")
    return times[0], statistics.median(times[1:])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=300_000)
    parser.add_argument("--args-bytes", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=10)
    opts = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="conveyor-dash-mem-") as tmp:
        url = f"sqlite:///{Path(tmp) / 'broker.sqlite3'}"
        app = Conveyor("bench", broker=url, events_max_count=opts.events)
        t0 = time.perf_counter()
        tasks = fill(app, opts.events, opts.args_bytes)
        app.close()
        print(
            f"stored {tasks * 3:,} events ({tasks:,} tasks, {opts.args_bytes} B args) in {time.perf_counter() - t0:.1f} s"
        )
        port = free_port()
        env = {**os.environ, "CONVEYOR_EVENTS_MAX_COUNT": str(opts.events), "CONVEYOR_EVENTS_MAX_AGE": "none"}
        cmd = [
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
        ]
        started = time.perf_counter()
        proc = subprocess.Popen(
            cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        try:
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as client:
                while True:
                    try:
                        if client.get("/api/tasks?per_page=1").json()["total"] >= tasks:
                            break
                    except httpx.TransportError:
                        pass
                    if proc.poll() is not None or time.perf_counter() - started > 300:
                        raise SystemExit("the dashboard did not load the log")
                    time.sleep(0.2)
                loaded = time.perf_counter() - started
                rss, _ = rss_mib(proc.pid)
                print(f"index loaded {loaded:.1f} s after start; RSS {rss:.0f} MiB")
                detail = f"/tasks/{tasks // 2 // 10 * 10:08d}-bench-task"  # a failed one: traceback shown
                rows = [
                    ("GET /metrics", "/metrics"),
                    ("GET /tasks (task list)", "/tasks"),
                    ("GET /tasks/<id> (detail)", detail),
                    ("GET / (overview)", "/"),
                    ("GET /tasks?search=customer-42", "/tasks?search=customer-42"),
                ]
                print(f"\n{'request':34} {'first ms':>9} {'median ms':>10}  (then n={opts.repeat})")
                for label, path in rows:
                    first, median = timed(client, path, opts.repeat)
                    print(f"{label:34} {first:9.1f} {median:10.1f}")
                rss, hwm = rss_mib(proc.pid)
                print(f"\nRSS at the end {rss:.0f} MiB (peak {hwm:.0f} MiB)")
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(10)


if __name__ == "__main__":
    main()
