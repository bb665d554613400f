"""CPU per task on the Redis broker, client's and Redis's: figures a loaded machine
does not blur the way it blurs throughput (both are CPU time, not wall time).

Measures, in this process (no worker), against ``--broker`` (a Redis you own: it
runs FLUSHDB on the URL's database between runs):

1. ``publish()`` of one message: this process's CPU per call;
2. a worker-like drain: ``fetch(limit=8)``, then one ``batch()`` with the results,
   three task events per task and the ack: this process's CPU per task, and Redis's
   (``INFO cpu`` before and after);
3. task events alone, appended ``--events-per-append`` at a time: Redis's CPU per task.

Best of ``--repeat`` (3) runs each. ``--tree DIR`` measures the Conveyor in DIR
instead of this repository (e.g. a ``git archive`` of another commit), so two
versions can be run alternately on the same server:

    python bench/redis_cpu.py --broker redis://127.0.0.1:PORT/3
    python bench/redis_cpu.py --broker redis://127.0.0.1:PORT/3 --tree /tmp/base
"""

from __future__ import annotations

import argparse
import sys
import time
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--broker", required=True, help="redis://host:port/db (FLUSHDB is run on it)")
    p.add_argument("--tree", default=str(REPO), help="the Conveyor source tree to measure")
    p.add_argument("-n", type=int, default=3000, help="tasks per run (default 3000)")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--events-per-append", type=int, nargs="+", default=[24, 256])
    args = p.parse_args()
    sys.path.insert(0, args.tree)
    import orjson

    from conveyor.backends.base import ResultRecord
    from conveyor.brokers.redis import RedisBroker
    from conveyor.message import Message, new_id

    def broker() -> Any:
        return RedisBroker(f"{args.broker}?prefix=cpu{uuid.uuid4().hex[:8]}")

    def server_cpu(b: Any) -> float:
        info = b.link.send([("INFO", "cpu")])[0].decode()
        values = dict(line.split(":", 1) for line in info.splitlines() if ":" in line)
        return float(values["used_cpu_user"]) + float(values["used_cpu_sys"])

    n = args.n
    publish = drain = drain_redis = float("inf")
    for _ in range(args.repeat):
        b = broker()
        backend = b.result_backend(result_expires_s=60)
        messages = [
            Message(id=new_id(), task="bench.noop", args=[i], queue="q", created_at=time.time())
            for i in range(n)
        ]
        b.publish(messages[0])  # connects, loads the script
        started = time.process_time()
        for m in messages[1:]:
            b.publish(m)
        publish = min(publish, (time.process_time() - started) / (n - 1) * 1e6)
        done, redis_before, started = 0, server_cpu(b), time.process_time()
        while done < n:
            got = b.fetch(["q"], limit=8, lease_s=30, timeout_s=0)
            with b.batch():
                backend.store([ResultRecord(d.message_id, "SUCCESS", result=1) for d in got])
                events = [
                    orjson.dumps({"type": kind, "id": d.message_id, "ts": time.time()})
                    for d in got
                    for kind in ("task-received", "task-started", "task-succeeded")
                ]
                b.log_append("events", events, maxlen=100_000)
                b.ack(got)
            done += len(got)
        drain = min(drain, (time.process_time() - started) / n * 1e6)
        drain_redis = min(drain_redis, (server_cpu(b) - redis_before) / n * 1e6)
        b.link.send([("FLUSHDB",)])
        b.close()
    print(
        f"{args.tree}: publish {publish:.1f} us/call (client CPU); drain {drain:.1f} us/task client, "
        f"{drain_redis:.1f} us/task Redis"
    )

    event = orjson.dumps(
        {
            "type": "task-succeeded",
            "id": "0" * 36,
            "name": "bench.noop",
            "worker": "w0@host",
            "ts": time.time(),
            "result": "1",
            "runtime": 0.0001,
        }
    )
    for size in args.events_per_append:
        best = float("inf")
        for _ in range(args.repeat):
            b = broker()
            tasks = 30_000
            before = server_cpu(b)
            for _ in range(tasks * 3 // size):
                b.log_append("events", [event] * size, maxlen=100_000)
            best = min(best, (server_cpu(b) - before) / tasks * 1e6)
            b.link.send([("FLUSHDB",)])
            b.close()
        print(f"{args.tree}: task events, {size} per append: {best:.2f} us/task Redis (3 events each)")


if __name__ == "__main__":
    main()
