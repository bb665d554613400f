"""Dramatiq on Redis (broker and Results middleware), 2 processes with its default 8 threads each."""

from __future__ import annotations

import sys
from typing import Any

import dramatiq
from common import REDIS_URL, Peer, mark_done, mark_started
from dramatiq.brokers.redis import RedisBroker
from dramatiq.results import Results
from dramatiq.results.backends.redis import RedisBackend

broker = RedisBroker(url=REDIS_URL)
broker.add_middleware(Results(backend=RedisBackend(url=REDIS_URL)))
dramatiq.set_broker(broker)


@dramatiq.actor(actor_name="noop", queue_name="default")
def noop(i: int) -> None:
    mark_done()


@dramatiq.actor(actor_name="echo", queue_name="default", store_results=True)
def echo(i: int) -> int:
    mark_done()
    return i


@dramatiq.actor(actor_name="add", queue_name="default", store_results=True)
def add(x: int, y: int) -> int:
    return x + y


@dramatiq.actor(actor_name="stamp", queue_name="default", store_results=True)
def stamp(i: int) -> int:
    mark_started(i)
    return i


class DramatiqPeer(Peer):
    name = "Dramatiq"
    bulk_api = "group(...).run()"
    notes = "dramatiq --processes 2 (default 8 threads each: with --threads 1 it drained ~535/s here)"

    def enqueue(self, n: int, results: bool = False) -> None:
        send = (echo if results else noop).send
        for i in range(n):
            send(i)

    def enqueue_bulk(self, n: int, results: bool = False) -> None:
        actor = echo if results else noop
        dramatiq.group(actor.message(i) for i in range(n)).run()

    def queued(self) -> int:
        return int(broker.client.llen("dramatiq:default"))

    def worker_commands(self) -> list[list[str]]:
        return [[sys.executable, "-m", "dramatiq", "dramatiq_peer", "--processes", "2"]]

    def round_trip(self, i: int, timeout: float) -> Any:
        return add.send(i, i).get_result(block=True, timeout=int(timeout * 1000))

    def send_add(self, x: int, y: int) -> None:
        add.send(x, y)

    def send_stamp(self, i: int) -> None:
        stamp.send(i)

    def close(self) -> None:
        broker.close()
