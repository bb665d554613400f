"""RQ on Redis: two ``rq worker`` processes (RQ has no pool: one job at a time per worker).

They run ``SimpleWorker``, which runs jobs in the worker process: RQ's default ``Worker``
forks a work horse per job, which here drained about 80 tasks/s (13 ms round trip), so
the peer is measured at its fastest setting.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from common import REDIS_URL, Peer, mark_done, mark_started
from redis import Redis
from rq import Queue


def noop(i: int) -> None:
    mark_done()


def echo(i: int) -> int:
    mark_done()
    return i


def add(x: int, y: int) -> int:
    return x + y


def stamp(i: int) -> int:
    mark_started(i)
    return i


class RQPeer(Peer):
    name = "RQ"
    bulk_api = "Queue.enqueue_many()"
    notes = "2 x rq worker -w rq.worker.SimpleWorker (the default forks per job: ~80/s); noop result_ttl=0"

    def __init__(self) -> None:
        self.redis = Redis.from_url(REDIS_URL)
        self.queue = Queue("default", connection=self.redis)

    def enqueue(self, n: int, results: bool = False) -> None:
        enqueue = self.queue.enqueue
        if results:
            for i in range(n):
                enqueue(echo, i)
        else:
            for i in range(n):
                enqueue(noop, i, result_ttl=0)

    def enqueue_bulk(self, n: int, results: bool = False) -> None:
        prepare = Queue.prepare_data
        if results:
            self.queue.enqueue_many([prepare(echo, (i,)) for i in range(n)])
        else:
            self.queue.enqueue_many([prepare(noop, (i,), result_ttl=0) for i in range(n)])

    def queued(self) -> int:
        return int(self.queue.count)

    def worker_commands(self) -> list[list[str]]:
        rq = str(Path(sys.executable).parent / "rq")
        one = [
            rq,
            "worker",
            "-u",
            REDIS_URL,
            "-w",
            "rq.worker.SimpleWorker",
            "--logging_level",
            "WARNING",
            "default",
        ]
        return [one, one]

    def round_trip(self, i: int, timeout: float) -> Any:
        job = self.queue.enqueue(add, i, i)
        result = job.latest_result(timeout=int(max(timeout, 1)))
        if result is None:
            raise TimeoutError(f"rq: no result for add({i}, {i}) within {timeout}s")
        return result.return_value

    def send_add(self, x: int, y: int) -> None:
        self.queue.enqueue(add, x, y)

    def send_stamp(self, i: int) -> None:
        self.queue.enqueue(stamp, i)

    def close(self) -> None:
        self.redis.close()
