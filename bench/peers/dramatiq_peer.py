"""Dramatiq on Redis (broker and Results middleware), 2 processes x 1 thread."""

from __future__ import annotations

import sys
from typing import Any

import dramatiq
from common import REDIS_URL, Peer, mark_done
from dramatiq.brokers.redis import RedisBroker
from dramatiq.results import Results
from dramatiq.results.backends.redis import RedisBackend

broker = RedisBroker(url=REDIS_URL)
broker.add_middleware(Results(backend=RedisBackend(url=REDIS_URL)))
dramatiq.set_broker(broker)


@dramatiq.actor(actor_name="noop", queue_name="default")
def noop(i: int) -> None:
    mark_done()


@dramatiq.actor(actor_name="add", queue_name="default", store_results=True)
def add(x: int, y: int) -> int:
    return x + y


class DramatiqPeer(Peer):
    name = "Dramatiq"
    bulk_api = "group(...).run()"
    notes = "dramatiq --processes 2 --threads 1 (default prefetch)"

    def enqueue(self, n: int) -> None:
        send = noop.send
        for i in range(n):
            send(i)

    def enqueue_bulk(self, n: int) -> None:
        dramatiq.group(noop.message(i) for i in range(n)).run()

    def queued(self) -> int:
        return int(broker.client.llen("dramatiq:default"))

    def worker_commands(self) -> list[list[str]]:
        return [[sys.executable, "-m", "dramatiq", "dramatiq_peer", "--processes", "2", "--threads", "1"]]

    def round_trip(self, i: int, timeout: float) -> Any:
        return add.send(i, i).get_result(block=True, timeout=int(timeout * 1000))

    def close(self) -> None:
        broker.close()
