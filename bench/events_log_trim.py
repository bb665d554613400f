"""How many rows the SQLite events log holds after many tasks on recycled children.

Starts a real ``conveyor worker -P prefork -c 2 --max-tasks-per-child 100`` on a
private SQLite broker with ``events_max_count`` set, sends ``-n`` no-op tasks in one
``map()``, waits for the last result, then counts the "events" log's rows.

    python bench/events_log_trim.py                      # 20,000 tasks, limit 10,000
    python bench/events_log_trim.py -n 5000 --max-count 2000 --max-tasks-per-child 50
"""

from __future__ import annotations

import argparse
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROJECT = """
import os
from conveyor import Conveyor

app = Conveyor("proj", broker="sqlite:///" + os.path.join(os.path.dirname(os.path.abspath(__file__)), "broker.sqlite3"))


@app.task(name="proj.add")
def add(x, y):
    return x + y
"""


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("-n", type=int, default=20_000, help="tasks to run")
    parser.add_argument("--max-count", type=int, default=10_000, help="events_max_count")
    parser.add_argument("--max-tasks-per-child", type=int, default=100)
    opts = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="conveyor-trim-bench-") as tmp:
        root = Path(tmp)
        (root / "proj.py").write_text(PROJECT)
        sys.path.insert(0, tmp)
        env = {
            **os.environ,
            "PYTHONPATH": tmp + os.pathsep + os.environ.get("PYTHONPATH", ""),
            "CONVEYOR_EVENTS_MAX_COUNT": str(opts.max_count),
        }
        env.pop("CONVEYOR_BROKER_URL", None)
        import proj  # type: ignore[import-not-found]

        worker = subprocess.Popen(
            [sys.executable, "-m", "conveyor.cli.main", "-A", "proj", "worker", "-P", "prefork", "-c", "2",
             "--max-tasks-per-child", str(opts.max_tasks_per_child), "-l", "warning"],
            cwd=tmp, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        try:
            started = time.perf_counter()
            results = proj.add.map([(i, 1) for i in range(opts.n)])
            results[-1].get(timeout=600)
            while not all(r.ready() for r in results[:: max(1, opts.n // 100)]):
                time.sleep(0.2)
            time.sleep(1.0)  # the flusher writes a process's last events half a second later
            elapsed = time.perf_counter() - started
            with sqlite3.connect(root / "broker.sqlite3") as db:
                rows = db.execute("SELECT COUNT(*) FROM logs WHERE stream = 'events'").fetchone()[0]
            print(
                f"{opts.n:,} tasks in {elapsed:.1f} s, --max-tasks-per-child {opts.max_tasks_per_child}: "
                f"{rows:,} rows in the events log (events_max_count {opts.max_count:,})"
            )
        finally:
            os.killpg(worker.pid, signal.SIGTERM)
            worker.wait(30)
            proj.app.close()


if __name__ == "__main__":
    main()
