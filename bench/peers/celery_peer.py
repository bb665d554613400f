"""Celery on Redis (broker and result backend), prefork pool of 2, Celery's defaults otherwise."""

from __future__ import annotations

import sys
from typing import Any

from celery import Celery, group
from common import REDIS_URL, Peer, mark_done, mark_started

app = Celery("celery_peer", broker=REDIS_URL, backend=REDIS_URL)
app.conf.worker_hijack_root_logger = False


@app.task(name="noop", ignore_result=True)
def noop(i: int) -> None:
    mark_done()


@app.task(name="echo")
def echo(i: int) -> int:
    mark_done()
    return i


@app.task(name="add")
def add(x: int, y: int) -> int:
    return x + y


@app.task(name="stamp")
def stamp(i: int) -> int:
    mark_started(i)
    return i


class CeleryPeer(Peer):
    name = "Celery"
    bulk_api = "group(...).apply_async()"
    notes = "celery worker -P prefork -c 2 (defaults: prefetch 4, mingle, gossip, heartbeat)"

    def enqueue(self, n: int, results: bool = False) -> None:
        delay = (echo if results else noop).delay
        for i in range(n):
            delay(i)

    def enqueue_bulk(self, n: int, results: bool = False) -> None:
        task = echo if results else noop
        group(task.s(i) for i in range(n)).apply_async()

    def queued(self) -> int:
        with app.connection_for_write() as conn:
            return int(conn.default_channel.client.llen("celery"))

    def worker_commands(self) -> list[list[str]]:
        return [
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "celery_peer",
                "worker",
                "-P",
                "prefork",
                "-c",
                "2",
                "-l",
                "warning",
            ]
        ]

    def round_trip(self, i: int, timeout: float) -> Any:
        return add.delay(i, i).get(timeout=timeout)

    def send_add(self, x: int, y: int) -> None:
        add.delay(x, y)

    def send_stamp(self, i: int) -> None:
        stamp.delay(i)

    def close(self) -> None:
        app.close()
