"""Huey on Redis, consumer with 2 worker processes; results wait with ``notify_result``
(BLPOP), Huey's own low-latency switch, instead of its default backoff polling."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from common import REDIS_URL, Peer, mark_done, mark_started
from huey import RedisHuey

huey = RedisHuey("peers", url=REDIS_URL, notify_result=True)


@huey.task(name="noop")
def noop(i: int) -> None:
    mark_done()  # returns None: Huey stores no result for it


@huey.task(name="echo")
def echo(i: int) -> int:
    mark_done()
    return i


@huey.task(name="add")
def add(x: int, y: int) -> int:
    return x + y


@huey.task(name="stamp")
def stamp(i: int) -> int:
    mark_started(i)
    return i


class HueyPeer(Peer):
    name = "Huey"
    notes = "huey_consumer -w 2 -k process; results with notify_result=True"

    def enqueue(self, n: int, results: bool = False) -> None:
        task = echo if results else noop
        for i in range(n):
            task(i)

    def queued(self) -> int:
        return int(huey.pending_count())

    def worker_commands(self) -> list[list[str]]:
        consumer = str(Path(sys.executable).parent / "huey_consumer")
        return [[consumer, "huey_peer.huey", "-w", "2", "-k", "process", "-q"]]

    def round_trip(self, i: int, timeout: float) -> Any:
        return add(i, i).get(blocking=True, timeout=timeout)

    def send_add(self, x: int, y: int) -> None:
        add(x, y)

    def send_stamp(self, i: int) -> None:
        stamp(i)

    def close(self) -> None:
        huey.storage.conn.close()
