"""Conveyor, on the broker named by ``CONVEYOR_BROKER_URL`` (SQLite file or the private Redis);
results live in the broker's store. Worker: ``conveyor worker -c 2 --pool prefork``, with
Conveyor's defaults, task events included (the dashboard needs them): the driver strips any
``CONVEYOR_*`` setting from the workers' environment but the broker URL."""

from __future__ import annotations

import os
import sys
from typing import Any

from common import Peer, mark_done, mark_started

from conveyor import Conveyor


def build(broker_url: str) -> tuple[Any, Any, Any, Any, Any]:
    """An app with the benchmark tasks; the driver builds one per broker it measures."""
    app = Conveyor("conveyor_peer", broker=broker_url)

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

    return app, noop, echo, add, stamp


app, noop, echo, add, stamp = build(os.environ.get("CONVEYOR_BROKER_URL", "memory://"))


class ConveyorPeer(Peer):
    bulk_api = "Task.map()"

    def __init__(self, name: str, broker_url: str) -> None:
        self.name = name
        self.broker_url = broker_url
        self.uses_redis = broker_url.startswith("redis")
        self.app, self.noop, self.echo, self.add, self.stamp = build(broker_url)
        events = "on" if self.app.conf.worker_send_task_events else "OFF"
        self.notes = f"conveyor worker -c 2 --pool prefork (defaults: prefetch 4, task events {events})"

    def enqueue(self, n: int, results: bool = False) -> None:
        delay = (self.echo if results else self.noop).delay
        for i in range(n):
            delay(i)

    def enqueue_bulk(self, n: int, results: bool = False) -> None:
        (self.echo if results else self.noop).map([(i,) for i in range(n)])

    def queued(self) -> int:
        return int(self.app.broker.queue_stats([self.app.conf.task_default_queue])[0].ready)

    def reset(self) -> None:
        self.app.broker.purge(self.app.conf.task_default_queue)

    def worker_env(self) -> dict[str, str]:
        return {"CONVEYOR_BROKER_URL": self.broker_url}

    def worker_commands(self) -> list[list[str]]:
        return [
            [sys.executable, "-m", "conveyor.cli.main", "-A", "conveyor_peer", "worker"]
            + ["-c", "2", "--pool", "prefork", "-l", "warning"]
        ]

    def round_trip(self, i: int, timeout: float) -> Any:
        return self.add.delay(i, i).get(timeout=timeout)

    def send_add(self, x: int, y: int) -> None:
        self.add.delay(x, y)

    def send_stamp(self, i: int) -> None:
        self.stamp.delay(i)

    def close(self) -> None:
        self.app.close()
