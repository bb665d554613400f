"""TaskIndex benchmark: 100,000 task events stored in a SQLite broker, then timed reads.

What it does: writes ``-n`` (100,000) events to log "events" of a fresh SQLite broker
in a temporary directory, in appends of 256 as workers do: tasks of 8 names on 3
queues and 4 workers, each task received -> started -> succeeded (90%), failed (7%)
or retried (3%), so 100,000 events are about 33,000 tasks. Then it times, each the
median of ``--repeat`` (5) runs:

- the first ``refresh()`` of a new TaskIndex (loads the whole retained log);
- an incremental ``refresh()`` after 1,000 more events;
- ``query()`` variants: first page, a deep page, by state, by name, by queue,
  by worker, a search on argument text, a search with no match (a full scan);
- ``get()``, ``series()`` over an hour, ``runtime_stats()``.

Run from the repository root: ``python bench/events_index.py`` (``-n 200000`` for more,
``--json`` for one JSON object). Exit status 1 when a query takes 200 ms or more.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import orjson  # noqa: E402

from conveyor import Conveyor  # noqa: E402
from conveyor.monitor import EVENTS_STREAM  # noqa: E402
from conveyor.monitor.index import TaskIndex  # noqa: E402

NAMES = [f"proj.tasks.job{i}" for i in range(8)]
QUEUES = ["default", "email", "feeds"]
WORKERS = [f"conveyor.{1000 + i}@bench" for i in range(4)]
APPEND = 256
QUERY_LIMIT_MS = 200.0


def make_events(count: int, *, start_ts: float, seed: int = 1) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    events: list[dict[str, Any]] = []
    ts = start_ts
    n = 0
    while len(events) < count:
        n += 1
        task_id = f"{n:08d}-{rng.getrandbits(64):016x}"
        name = rng.choice(NAMES)
        queue = rng.choice(QUEUES)
        worker = rng.choice(WORKERS)
        base = {"id": task_id, "name": name, "queue": queue, "worker": worker}
        ts += 0.01
        events.append(
            {
                "type": "task-received",
                **base,
                "ts": ts,
                "args": repr([n, f"user-{n % 977}@example.com"]),
                "kwargs": "{}",
                "retries": 0,
            }
        )
        events.append({"type": "task-started", **base, "ts": ts})
        runtime = rng.expovariate(1 / 0.05)
        roll = rng.random()
        if roll < 0.90:
            events.append(
                {"type": "task-succeeded", **base, "ts": ts + runtime, "runtime": runtime, "result": "None"}
            )
        elif roll < 0.97:
            events.append(
                {
                    "type": "task-failed",
                    **base,
                    "ts": ts + runtime,
                    "runtime": runtime,
                    "exception": "ValueError: bad input",
                    "traceback": "Traceback (most recent call last):\n  ...\nValueError: bad input\n",
                }
            )
        else:
            events.append(
                {
                    "type": "task-retried",
                    **base,
                    "ts": ts + runtime,
                    "runtime": runtime,
                    "exception": "ConnectionError: upstream down",
                }
            )
    return events[:count]


def store(app: Conveyor, events: list[dict[str, Any]], maxlen: int) -> None:
    bodies = [orjson.dumps(e) for e in events]
    for i in range(0, len(bodies), APPEND):
        app.broker.log_append(EVENTS_STREAM, bodies[i : i + APPEND], maxlen=maxlen)


def timed(fn: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    samples = []
    result = None
    for _ in range(repeat):
        started = time.perf_counter()
        result = fn()
        samples.append((time.perf_counter() - started) * 1000)
    return statistics.median(samples), result


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("-n", type=int, default=100_000, help="events to store (default 100,000)")
    parser.add_argument("--repeat", type=int, default=5, help="runs per timing; the median is shown")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    opts = parser.parse_args()

    rows: list[tuple[str, float, str]] = []
    with tempfile.TemporaryDirectory(prefix="conveyor-index-bench-") as tmp:
        app = Conveyor("bench", broker=f"sqlite:///{tmp}/bench.sqlite3", events_max_count=max(opts.n * 2, 1))
        now = time.time()
        events = make_events(opts.n, start_ts=now - opts.n * 0.004)
        started = time.perf_counter()
        store(app, events, maxlen=opts.n * 2)
        store_s = time.perf_counter() - started

        def first_refresh() -> TaskIndex:
            index = TaskIndex(app, max_tasks=opts.n)
            index.refresh()
            return index

        ms, index = timed(first_refresh, max(1, min(opts.repeat, 3)))
        rows.append(("refresh(): first, whole log", ms, f"{len(events):,} events -> {len(index):,} tasks"))
        more = make_events(1000, start_ts=now + 10, seed=2)
        store(app, more, maxlen=opts.n * 2)
        started = time.perf_counter()
        read = index.refresh()
        rows.append(
            ("refresh(): incremental", (time.perf_counter() - started) * 1000, f"{read:,} new events")
        )
        ms, _ = timed(index.refresh, opts.repeat)
        rows.append(("refresh(): nothing new", ms, ""))

        some_id = events[len(events) // 2]["id"]
        queries: list[tuple[str, Callable[[], Any]]] = [
            ("query(): first page (50)", lambda: index.query()),
            ("query(): page 200 (offset 10,000)", lambda: index.query(offset=10_000)),
            ("query(state=FAILURE)", lambda: index.query(state="FAILURE")),
            ("query(state=SUCCESS, page 100)", lambda: index.query(state="SUCCESS", offset=5000)),
            ("query(name=...)", lambda: index.query(name=NAMES[3])),
            ("query(queue=..., worker=...)", lambda: index.query(queue=QUEUES[1], worker=WORKERS[2])),
            ("query(search=argument text)", lambda: index.query(search="user-42@")),
            ("query(search=id)", lambda: index.query(search=some_id)),
            ("query(search=no match): full scan", lambda: index.query(search="no-such-text")),
            (
                "query(state, name, search) combined",
                lambda: index.query(state="FAILURE", name=NAMES[1], search="example.com"),
            ),
        ]
        worst = 0.0
        for label, fn in queries:
            ms, (total, page) = timed(fn, opts.repeat)
            worst = max(worst, ms)
            rows.append((label, ms, f"{total:,} match, {len(page)} on the page"))
        ms, detail = timed(lambda: index.get(some_id), opts.repeat)
        rows.append(("get(task_id)", ms, f"{len(detail.events) if detail else 0} events"))
        ms, series = timed(lambda: index.series(window_s=3600, bucket_s=60), opts.repeat)
        rows.append(("series(1 h, 60 s buckets)", ms, f"{len(series)} buckets"))
        ms, stats = timed(index.runtime_stats, opts.repeat)
        rows.append(("runtime_stats()", ms, f"mean {stats['mean']:.4f}s p95 {stats['p95']:.4f}s"))
        app.close()

    if opts.json:
        print(
            json.dumps(
                {
                    "events": opts.n,
                    "store_s": store_s,
                    "timings_ms": {label: ms for label, ms, _ in rows},
                    "worst_query_ms": worst,
                }
            )
        )
    else:
        print(f"TaskIndex over {opts.n:,} stored events (SQLite broker), median of {opts.repeat}")
        print(f"  stored in {store_s:.2f}s ({opts.n / store_s:,.0f} events/s, appends of {APPEND})")
        width = max(len(label) for label, _, _ in rows)
        for label, ms, note in rows:
            print(f"  {label:<{width}}  {ms:9.2f} ms  {note}")
        verdict = "ok" if worst < QUERY_LIMIT_MS else "TOO SLOW"
        print(f"  slowest query {worst:.1f} ms (limit {QUERY_LIMIT_MS:.0f} ms): {verdict}")
    return 0 if worst < QUERY_LIMIT_MS else 1


if __name__ == "__main__":
    sys.exit(main())
