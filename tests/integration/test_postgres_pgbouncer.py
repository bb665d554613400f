"""PostgreSQL behind PgBouncer in transaction mode, laid out as docs/brokers.md says:
the web processes (producers, admin commands, result reads that do not wait) go
through PgBouncer, the workers connect to PostgreSQL directly (they LISTEN, which
belongs to a session).

PgBouncer is the Debian package's (1.18 on bookworm: no prepared statements in
transaction mode, so the producer's URL carries ``?prepare_threshold=none``), started
privately on a free port in front of the test server. The database is made for the
test, with the search path set on it, since PgBouncer drops the ``options`` startup
parameter that carries Conveyor's ``search_path``.
"""

from __future__ import annotations

import collections
import concurrent.futures
import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest

from conveyor import states
from conveyor.exceptions import BrokerError
from conveyor.testing import wait_for

from ..pgbouncer import PgBouncer, pgbouncer_or_skip
from ..postgres_server import postgres_url_or_skip
from .conftest import PROJECT, project_from

pytestmark = pytest.mark.integration


def _on_database(url: str, database: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{database}", "", ""))


@pytest.fixture
def bounced(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, str]]:
    """(direct URL for workers, PgBouncer URL for producers), on a database of the test's own."""
    import psycopg
    from psycopg import sql

    pgbouncer_or_skip()
    base = postgres_url_or_skip()
    database = f"conveyor_pgb_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
        conn.execute(sql.SQL("ALTER DATABASE {} SET search_path = conveyor").format(sql.Identifier(database)))
    bouncer = PgBouncer(base, database)
    try:
        bouncer.start()
        producer_url = f"{bouncer.url}?prepare_threshold=none"
        # The test process is the web app: its proj module reads this URL.
        monkeypatch.setenv("TEST_BROKER_URL", producer_url)
        yield _on_database(base, database), producer_url
    finally:
        bouncer.stop()
        with psycopg.connect(base, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(database)))


@pytest.fixture
def project(
    bounced: tuple[str, str], tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[tuple[Any, Any]]:
    direct, _ = bounced
    with project_from(PROJECT, tmp_path, request) as (p, proj):
        p.env["TEST_BROKER_URL"] = direct  # workers: straight to PostgreSQL
        yield p, proj


def _records(app: Any, ids: list[str]) -> dict[str, Any]:
    try:
        return dict(app.backend.get_many(ids))
    except BrokerError:
        return {}


def _cli(p: Any, url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**p.env, "TEST_BROKER_URL": url}
    return subprocess.run(
        [sys.executable, "-m", "conveyor.cli.main", "-A", "proj", *args],
        cwd=p.root, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def test_producers_admin_and_result_reads_through_pgbouncer_transaction_mode(
    bounced: tuple[str, str], project: tuple[Any, Any]
) -> None:
    _, producer_url = bounced
    p, proj = project
    # The schema is made through PgBouncer at first use (an advisory lock per transaction).
    # Sent from four threads, as a threaded web server would: PgBouncer then runs one
    # client connection's transactions on several server connections, where a statement
    # psycopg prepared (its fifth use) would be missing without prepare_threshold=none.
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        one_by_one = list(pool.map(proj.mark.delay, range(150)))
    in_bulk = proj.mark.map([(n,) for n in range(150, 300)])
    later = proj.add.apply_async((2, 3), countdown=1.0)

    listed = _cli(p, producer_url, "queues", "--json")
    assert listed.returncode == 0, listed.stderr
    rows = {row["queue"]: row for row in json.loads(listed.stdout)}
    assert (rows["default"]["ready"], rows["default"]["delayed"]) == (300, 1)

    p.start_worker("-c", "2")
    ids = [r.id for r in [*one_by_one, *in_bulk, later]]
    # Reads that do not wait go through PgBouncer too.
    wait_for(
        lambda: (lambda rs: len(rs) == len(ids) and all(r.state == states.SUCCESS for r in rs.values()))(
            _records(proj.app, ids)
        ),
        timeout=60,
        interval=0.1,
        message="tasks sent through PgBouncer did not all succeed",
    )
    runs = collections.Counter(int(r[1]) for r in p.runs if r[0] == "mark")
    assert runs == collections.Counter(range(300)), "each task runs exactly once"
    assert _records(proj.app, [later.id])[later.id].result == 5
    assert _records(proj.app, [one_by_one[7].id])[one_by_one[7].id].result == 7


def test_a_send_through_pgbouncer_wakes_an_idle_worker(project: tuple[Any, Any]) -> None:
    """NOTIFY sent in a producer's transaction through PgBouncer reaches the worker's
    LISTEN on its direct connection: the task runs at once, not after the worker's
    quiet spell (``QUIET_MAX_S``) without notifications."""
    from conveyor._postgres import QUIET_MAX_S

    p, proj = project
    proj.mark.delay(-1)  # makes the schema, so the worker finds it and settles into its wait
    p.start_worker("-c", "1")
    wait_for(lambda: p.count("mark") == 1, timeout=30, message="first task did not run")
    time.sleep(0.5)  # the worker's next fetch finds nothing and waits
    sent = time.monotonic()
    result = proj.mark.delay(1)
    wait_for(lambda: p.count("mark") == 2, timeout=QUIET_MAX_S, interval=0.01, message="not run")
    waited = time.monotonic() - sent
    assert waited < QUIET_MAX_S / 3, f"ran {waited:.1f} s after the send: woken by a poll, not NOTIFY"
    wait_for(lambda: result.id in _records(proj.app, [result.id]), timeout=10)
