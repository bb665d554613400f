"""How long do workers stop when the Redis Cluster master serving their slot dies?

A private six-node cluster (three masters, a replica each; ``tests/redis_cluster.py``)
with ``--node-timeout-ms`` as ``cluster-node-timeout``; one ``conveyor worker -c 2``
on ``redis+cluster://...?prefix=fo``; a producer calling ``delay()`` every 10 ms (with
``publish_retry=60``, so it rides the failover out). After 2 s the master serving
``{fo}`` is SIGKILLed; the run goes on until its replica has long been promoted.

Prints the longest pause between two task runs after the kill, the longest
``delay()`` (the producer's retries back off to 1 s, the worker's fetch to 10 s, so
the producer's wait is closer to the promotion time), how many tasks were sent and
how many distinct ones ran (a difference is tasks lost with writes the
master had not replicated), and whether the worker is still up.

Run from the repository root: ``python bench/cluster_failover.py --node-timeout-ms 1000``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.redis_cluster import RedisCluster  # noqa: E402

PROJECT = """
import os, time
from conveyor import Conveyor

app = Conveyor("proj", broker=os.environ["URL"])


@app.task(name="proj.stamp")
def stamp(n):
    with open(os.environ["RUNS"], "a") as f:
        f.write(f"{n} {time.time()}\\n")
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--node-timeout-ms", type=int, default=1000)
    options = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="conveyor-failover-"))
    (root / "proj.py").write_text(textwrap.dedent(PROJECT))
    cluster = RedisCluster(root, replicas=1, node_timeout_ms=options.node_timeout_ms)
    cluster.start()
    worker: subprocess.Popen[bytes] | None = None
    try:
        runs = root / "runs.txt"
        os.environ.update(URL=f"{cluster.url}?prefix=fo&publish_retry=60", RUNS=str(runs))
        sys.path.insert(0, str(root))
        import proj  # type: ignore[import-not-found]

        master, replicas = cluster.serving("{fo}")
        while not replicas:  # the nodes learn of the replicas by gossip
            time.sleep(0.1)
            master, replicas = cluster.serving("{fo}")
        log = root / "worker.log"
        with open(log, "wb") as out:
            worker = subprocess.Popen(
                [sys.executable, "-m", "conveyor.cli.main", "-A", "proj", "worker", "-c", "2"],
                cwd=root,
                env=os.environ,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        while b"ready." not in log.read_bytes():
            time.sleep(0.05)
        stop = threading.Event()
        sent: list[float] = []  # when each delay() returned

        def produce() -> None:
            while not stop.is_set():
                proj.stamp.delay(len(sent))
                sent.append(time.time())
                time.sleep(0.01)

        producer = threading.Thread(target=produce)
        producer.start()
        time.sleep(2)
        master, _ = cluster.serving("{fo}")  # still the same, unless a node was failed meanwhile
        killed = time.time()
        cluster.kill(master)
        time.sleep(options.node_timeout_ms / 1000 * 3 + 8)
        stop.set()
        producer.join()
        deadline = time.monotonic() + 30
        ran: set[int] = set()
        while time.monotonic() < deadline and len(ran) < len(sent):
            time.sleep(0.2)
            ran = {int(line.split()[0]) for line in runs.read_text().splitlines()}
        stamps = sorted(float(line.split()[1]) for line in runs.read_text().splitlines())
        pause, at = max((b - a, a - killed) for a, b in zip(stamps, stamps[1:], strict=False) if b > killed)
        waited = max(b - a for a, b in zip(sent, sent[1:], strict=False) if b > killed)
        print(
            f"cluster-node-timeout {options.node_timeout_ms} ms: sent {len(sent)}, ran {len(ran)} distinct; "
            f"longest pause between runs {pause:.2f} s, from {at:+.2f} s after the kill; "
            f"longest delay() {waited:.2f} s; worker still up: {worker.poll() is None}"
        )
        print(
            f"killed {master}; the slot's master now: {cluster.serving('{fo}')[0]} (replicas were {replicas})"
        )
    finally:
        if worker is not None:
            worker.terminate()
            worker.wait(20)
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
