"""Faults on the Redis broker: a SIGKILLed worker, Redis going away mid-batch, a
worker started before Redis, a producer while Redis is down.

Each test gets its own redis-server (``tests/redis_server.py``) on a free port,
durable (append-only file, fsync always) so that a restart keeps every
acknowledged write, as a production Redis with persistence does.
"""

from __future__ import annotations

import collections
import os
import shutil
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conveyor import states
from conveyor.exceptions import BrokerConnectionError, BrokerError
from conveyor.testing import wait_for

from ..redis_server import REDIS_SERVER, RedisServer, redis_server_or_skip

pytestmark = pytest.mark.integration


@pytest.fixture
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[RedisServer]:
    if shutil.which(REDIS_SERVER) is None:
        redis_server_or_skip()  # skips, or fails under CI=true
    directory = tmp_path / "redis"
    directory.mkdir()
    own = RedisServer(directory, durable=True)
    own.start()
    # Read by the project module (tests/integration/conftest.py) and by its workers.
    monkeypatch.setenv("TEST_BROKER_URL", own.url + "?publish_retry=2")
    try:
        yield own
    finally:
        own.stop()


def _all_done(app: Any, ids: list[str]) -> bool:
    try:
        records = app.backend.get_many(ids)
    except BrokerError:  # Redis is away; ask again
        return False
    return len(records) == len(ids) and all(r.state == states.SUCCESS for r in records.values())


def _counts(p: Any) -> collections.Counter[int]:
    return collections.Counter(int(r[1]) for r in p.runs if r[0] == "mark")


def test_sigkill_mid_batch_loses_no_acks_late_task(server: RedisServer, project: Any) -> None:
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
    print(f"Redis, SIGKILL mid-batch: 1000/1000 done, {len(twice)} ran twice")
    assert not [s for s in proj.app.broker.queue_stats() if s.ready or s.in_flight], "messages left behind"


def test_redis_down_for_5s_mid_batch_loses_nothing(server: RedisServer, project: Any) -> None:
    p, proj = project
    results = proj.mark.map([(n, 0.01) for n in range(1000)])
    p.start_worker("-c", "2", "--prefetch-multiplier", "4", visibility=5.0)
    p.start_worker("-c", "2", "--prefetch-multiplier", "4", visibility=5.0)
    wait_for(lambda: p.count("mark") >= 200, timeout=30, interval=0.005)
    server.stop()
    done_while_down = p.count("mark")
    time.sleep(5)
    server.start()

    ids = [r.id for r in results]
    wait_for(
        lambda: _all_done(proj.app, ids), timeout=60, interval=0.1, message="tasks lost across the restart"
    )
    runs = _counts(p)
    assert set(runs) == set(range(1000)), "a task was lost"
    twice = sorted(n for n, c in runs.items() if c > 1)
    print(f"Redis down 5 s after {done_while_down} runs: 1000/1000 done, {len(twice)} ran more than once")
    assert not [s for s in proj.app.broker.queue_stats() if s.ready or s.in_flight], "messages left behind"
    for index in range(2):
        assert p.workers[index].poll() is None, p.log(index)  # the workers rode it out
        assert "cannot reach Redis" in p.log(index)


def test_worker_started_before_redis_waits_then_works(server: RedisServer, project: Any) -> None:
    p, proj = project
    server.stop()
    starter = threading.Timer(3.0, server.start)
    starter.start()
    try:
        p.start_worker("-c", "1")  # waits up to 15 s for "ready."
    finally:
        starter.join()
    retries = [line for line in p.log(0).splitlines() if "Cannot reach the broker" in line]
    assert retries, p.log(0)
    assert all("cannot reach Redis at redis://127.0.0.1:" in line for line in retries)
    assert "Traceback" not in p.log(0)
    assert proj.add.delay(2, 3).get(timeout=20) == 5


def test_delay_while_redis_is_down(server: RedisServer, project: Any) -> None:
    p, proj = project
    assert proj.add.delay(1, 1).id  # connected once
    server.stop()
    started = time.monotonic()
    with pytest.raises(BrokerConnectionError, match="cannot reach Redis"):
        proj.add.delay(1, 2)  # publish_retry=2 in the URL
    assert 1.5 <= time.monotonic() - started < 10

    restarter = threading.Timer(0.5, server.start)
    restarter.start()
    try:
        sent = proj.add.delay(2, 2)  # retried until Redis came back
    finally:
        restarter.join()
    p.start_worker("-c", "1")
    assert sent.get(timeout=20) == 4
