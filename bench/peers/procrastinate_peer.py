"""Procrastinate, on the database named by ``PEERS_PROCRASTINATE_DSN`` (its own fresh
database, its schema applied with ``procrastinate schema --apply``). Worker: ``procrastinate
worker`` with its defaults (LISTEN/NOTIFY, 5 s polling), one process per Conveyor pool
process. It keeps finished jobs (its default); the driver deletes them between phases.

Procrastinate stores no task results: its round trip is ``defer`` then ``get_job_status``
read every millisecond until the job succeeded (its own API for a job's outcome).
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

import procrastinate
from common import Peer, mark_done, mark_started

DSN = os.environ.get("PEERS_PROCRASTINATE_DSN", "")
STATUS_POLL_S = 0.001

app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=DSN))


@app.task(name="noop", queue="default")
def noop(i: int) -> None:
    mark_done()


@app.task(name="echo", queue="default")
def echo(i: int) -> int:
    mark_done()
    return i


@app.task(name="add", queue="default")
def add(x: int, y: int) -> int:
    return x + y


@app.task(name="stamp", queue="default")
def stamp(i: int) -> int:
    mark_started(i)
    return i


class ProcrastinatePeer(Peer):
    name = "Procrastinate"
    bulk_api = "Task.batch_defer()"
    notes = "2 x procrastinate worker --concurrency 1 (defaults: LISTEN/NOTIFY, 5 s polling)"

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        app.open()

    def apply_schema(self) -> None:
        app.schema_manager.apply_schema()

    def enqueue(self, n: int, results: bool = False) -> None:
        defer = (echo if results else noop).defer
        for i in range(n):
            defer(i=i)

    def enqueue_bulk(self, n: int, results: bool = False) -> None:
        (echo if results else noop).batch_defer(*({"i": i} for i in range(n)))

    def queued(self) -> int:
        import psycopg

        with psycopg.connect(self.dsn) as conn:
            row = conn.execute("SELECT COUNT(*) FROM procrastinate_jobs WHERE status = 'todo'").fetchone()
        return int(row[0]) if row else 0

    def reset(self) -> None:
        import psycopg

        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute("DELETE FROM procrastinate_jobs")

    def worker_env(self) -> dict[str, str]:
        return {"PEERS_PROCRASTINATE_DSN": self.dsn}

    def worker_commands(self) -> list[list[str]]:
        one = [sys.executable, "-m", "procrastinate", "--app=procrastinate_peer.app", "worker"]
        return [[*one, "--concurrency", "1"] for _ in range(2)]

    def round_trip(self, i: int, timeout: float) -> Any:
        job_id = add.defer(x=i, y=i)
        deadline = time.monotonic() + timeout
        while True:
            status = app.job_manager.get_job_status(job_id)
            if status == procrastinate.jobs.Status.SUCCEEDED:
                return 2 * i  # no result store: success is all it can tell
            if status in (procrastinate.jobs.Status.FAILED, procrastinate.jobs.Status.CANCELLED):
                raise RuntimeError(f"add job {job_id} ended {status.value}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"add job {job_id} still {status.value} after {timeout}s")
            time.sleep(STATUS_POLL_S)

    def send_stamp(self, i: int) -> None:
        stamp.defer(i=i)

    def close(self) -> None:
        app.close()
