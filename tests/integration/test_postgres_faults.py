"""Faults on the PostgreSQL broker: a SIGKILLed worker mid-batch, a schema made by a
newer Conveyor, the server restarted mid-batch (a private cluster, initdb + pg_ctl).

Each test gets its own schema on the test server (``tests/postgres_server.py``),
dropped afterwards; the project module and its workers read it from TEST_BROKER_URL.
"""

from __future__ import annotations

import collections
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conveyor import states
from conveyor.exceptions import BrokerError
from conveyor.testing import wait_for

from ..postgres_server import PostgresServer, drop_schema, fresh_schema, postgres_url_or_skip, with_schema

pytestmark = pytest.mark.integration


@pytest.fixture
def pg_url(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    base = postgres_url_or_skip()
    schema = fresh_schema()
    url = with_schema(base, schema)
    # Read by the project module (tests/integration/conftest.py) and by its workers.
    monkeypatch.setenv("TEST_BROKER_URL", url)
    try:
        yield url
    finally:
        drop_schema(base, schema)


def _all_done(app: Any, ids: list[str]) -> bool:
    try:
        records = app.backend.get_many(ids)
    except BrokerError:
        return False
    return len(records) == len(ids) and all(r.state == states.SUCCESS for r in records.values())


def _counts(p: Any) -> collections.Counter[int]:
    return collections.Counter(int(r[1]) for r in p.runs if r[0] == "mark")


def test_sigkill_mid_batch_loses_no_acks_late_task(pg_url: str, project: Any) -> None:
    p, proj = project
    results = proj.mark.map([(n, 0.003) for n in range(1000)])
    victim = p.start_worker("-c", "2", "--prefetch-multiplier", "4", visibility=2.0)
    p.start_worker("-c", "2", "--prefetch-multiplier", "4", visibility=2.0)
    wait_for(lambda: p.count("mark") >= 300, timeout=30, interval=0.005)
    os.kill(victim.pid, signal.SIGKILL)  # its children die with it (PR_SET_PDEATHSIG)
    victim.wait(5)

    ids = [r.id for r in results]
    wait_for(lambda: _all_done(proj.app, ids), timeout=60, interval=0.1, message="tasks lost after SIGKILL")
    runs = _counts(p)
    assert set(runs) == set(range(1000)), "a task was lost"
    twice = sorted(n for n, c in runs.items() if c > 1)
    assert len(twice) <= 8, f"{len(twice)} tasks ran twice: {twice}"  # 2 slots x prefetch 4
    print(f"PostgreSQL, SIGKILL mid-batch: 1000/1000 done, {len(twice)} ran twice")
    assert not [s for s in proj.app.broker.queue_stats() if s.ready or s.in_flight], "messages left behind"


def test_worker_refuses_a_newer_schema_in_one_line(pg_url: str, project: Any) -> None:
    import psycopg

    from conveyor._postgres import SCHEMA_VERSION, parse_url

    p, proj = project
    proj.app.broker.queue_stats()  # tables made by this version
    spec = parse_url(pg_url)
    with psycopg.connect(spec.conninfo, autocommit=True) as conn:
        conn.execute(f"INSERT INTO {spec.schema}.schema_version (version) VALUES (%s)", (SCHEMA_VERSION + 1,))
    worker = subprocess.run(
        [sys.executable, "-m", "conveyor.cli.main", "-A", "proj", "worker", "-c", "1"],
        cwd=p.root,
        env=p.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert worker.returncode != 0
    lines = [line for line in worker.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, worker.stderr
    assert f"schema version {SCHEMA_VERSION + 1}" in lines[0] and "upgrade Conveyor" in lines[0], lines[0]


@pytest.fixture
def private_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[PostgresServer]:
    if not PostgresServer.available():
        postgres_url_or_skip()  # the shared server still proves the rest
        pytest.skip("initdb/pg_ctl not installed")
    # Not under tmp_path: pytest's directory is private to root, and the cluster may
    # have to run as the postgres user.
    directory = Path(tempfile.mkdtemp(prefix="conveyor-pg-"))
    server = PostgresServer(directory)
    try:
        server.init()
        server.start()
        monkeypatch.setenv("TEST_BROKER_URL", server.url)
        yield server
    finally:
        with contextlib.suppress(Exception):
            server.stop()
        shutil.rmtree(directory, ignore_errors=True)


def test_server_restart_mid_batch_loses_nothing(private_server: PostgresServer, project: Any) -> None:
    p, proj = project
    results = proj.mark.map([(n, 0.01) for n in range(1000)])
    p.start_worker("-c", "2", "--prefetch-multiplier", "4", visibility=5.0)
    p.start_worker("-c", "2", "--prefetch-multiplier", "4", visibility=5.0)
    wait_for(lambda: p.count("mark") >= 200, timeout=30, interval=0.005)
    private_server.stop()
    done_while_down = p.count("mark")
    time.sleep(3)  # down for a while: the workers' fetches and settles fail meanwhile
    private_server.start()

    ids = [r.id for r in results]
    wait_for(
        lambda: _all_done(proj.app, ids), timeout=90, interval=0.1, message="tasks lost across the restart"
    )
    runs = _counts(p)
    assert set(runs) == set(range(1000)), "a task was lost"
    twice = sorted(n for n, c in runs.items() if c > 1)
    print(
        f"PostgreSQL restarted after {done_while_down} runs: 1000/1000 done, {len(twice)} ran more than once"
    )
    assert not [s for s in proj.app.broker.queue_stats() if s.ready or s.in_flight], "messages left behind"
    for index in range(2):
        assert p.workers[index].poll() is None, p.log(index)  # the workers rode it out


def test_a_chord_of_100_runs_its_body_once_on_a_prefork_worker(pg_url: str, project: Any) -> None:
    from conveyor import chord

    p, proj = project
    worker = p.start_worker("-c", "2")
    assert proj.add.delay(2, 3).get(timeout=30) == 5
    result = chord([proj.add.s(i, i) for i in range(100)], proj.tally.s())()
    assert result.get(timeout=60) == sum(2 * i for i in range(100))
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(30) == 0
    assert [run for run in p.runs if run[0] == "tally"] == [["tally", "100"]]
    stats = proj.app.broker.queue_stats(["default"])[0]
    assert (stats.ready, stats.in_flight, stats.delayed) == (0, 0, 0)


def test_tables_stay_bounded_after_thousands_of_tasks(pg_url: str, project: Any) -> None:
    """Vacuum-friendly: acked messages are deleted (no row kept per finished task), and
    the event log is trimmed to its limit even though each recycled child writes under
    a tenth of it; the results stay, one row per task, until ``result_expires``."""
    import psycopg
    from psycopg import sql

    from conveyor._postgres import parse_url

    p, proj = project
    max_count = 2000
    p.env["CONVEYOR_EVENTS_MAX_COUNT"] = str(max_count)
    p.start_worker("-P", "prefork", "-c", "2", "--max-tasks-per-child", "100")
    results = proj.add.map([(i, 1) for i in range(3000)])
    ids = [r.id for r in results]
    wait_for(lambda: _all_done(proj.app, ids), timeout=120, interval=0.2, message="the tasks did not all run")
    assert results[-1].get(timeout=10) == 3000

    spec = parse_url(pg_url)

    def count(table: str, where: str = "TRUE") -> int:
        with psycopg.connect(spec.conninfo, autocommit=True) as conn:
            query = sql.SQL("SELECT COUNT(*) FROM {}.{} WHERE " + where).format(
                sql.Identifier(spec.schema), sql.Identifier(table)
            )
            row = conn.execute(query).fetchone()
            assert row is not None
            return int(row[0])

    # The last settle batch is deleted in the same transaction that stores its results.
    assert count("messages") == 0
    assert count("results") == 3000
    events = count("logs", "stream = 'events'")
    assert 0.9 * max_count <= events <= max_count * 1.05, events


def test_unreachable_server_is_one_clear_line() -> None:
    from conveyor.brokers.postgres import PostgresBroker
    from conveyor.exceptions import BrokerConnectionError
    from conveyor.message import Message, new_id

    from ..redis_server import free_port

    broker = PostgresBroker(f"postgresql://postgres:secret@127.0.0.1:{free_port()}/db")
    started = time.monotonic()
    with pytest.raises(BrokerConnectionError) as caught:
        broker.publish(Message(id=new_id(), task="proj.add", args=[1, 2]))
    text = str(caught.value)
    assert "\n" not in text and "cannot connect to the PostgreSQL broker" in text, text
    assert "secret" not in text and "check the URL and that the server is up" in text
    assert time.monotonic() - started < 30
