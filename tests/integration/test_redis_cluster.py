"""The Redis broker on a Redis Cluster (``redis+cluster://``): a worker SIGKILLed
mid-batch loses no ``acks_late`` task, as on a single Redis
(``test_redis_faults.py``).

The cluster is the session's private three-master one (``tests/redis_cluster.py``);
each test takes a fresh prefix, so its own slot, on whichever master serves it.
"""

from __future__ import annotations

import collections
import os
import signal
from collections.abc import Iterator
from typing import Any

import pytest

from conveyor import states
from conveyor.testing import wait_for

from ..redis_cluster import RedisCluster, fresh_cluster_url, redis_cluster_or_skip

pytestmark = pytest.mark.integration


@pytest.fixture
def cluster(monkeypatch: pytest.MonkeyPatch) -> Iterator[RedisCluster]:
    cluster = redis_cluster_or_skip()
    # Read by the project module (tests/integration/conftest.py) and by its workers.
    monkeypatch.setenv("TEST_BROKER_URL", fresh_cluster_url(cluster) + "&publish_retry=2")
    yield cluster


def _all_done(app: Any, ids: list[str]) -> bool:
    records = app.backend.get_many(ids)
    return len(records) == len(ids) and all(r.state == states.SUCCESS for r in records.values())


def test_sigkill_mid_batch_on_a_cluster_loses_no_acks_late_task(cluster: RedisCluster, project: Any) -> None:
    p, proj = project
    assert proj.app.conf.broker_url.startswith("redis+cluster://")
    results = proj.mark.map([(n, 0.003) for n in range(1000)])
    victim = p.start_worker("-c", "2", "--prefetch-multiplier", "4", visibility=2.0)
    p.start_worker("-c", "2", "--prefetch-multiplier", "4", visibility=2.0)
    wait_for(lambda: p.count("mark") >= 300, timeout=30, interval=0.005)
    os.kill(victim.pid, signal.SIGKILL)  # its children die with it (PR_SET_PDEATHSIG)
    victim.wait(5)

    ids = [r.id for r in results]
    wait_for(lambda: _all_done(proj.app, ids), timeout=60, interval=0.1, message="tasks lost after SIGKILL")
    runs = collections.Counter(int(r[1]) for r in p.runs if r[0] == "mark")
    assert set(runs) == set(range(1000)), "a task was lost"
    twice = sorted(n for n, c in runs.items() if c > 1)
    assert len(twice) <= 8, f"{len(twice)} tasks ran twice: {twice}"  # 2 slots x prefetch 4
    print(f"Redis Cluster, SIGKILL mid-batch: 1000/1000 done, {len(twice)} ran twice")
    assert not [s for s in proj.app.broker.queue_stats() if s.ready or s.in_flight], "messages left behind"
    # Every key went to the one master serving the prefix's slot.
    prefix = proj.app.broker.link.prefix
    holders = [port for port in cluster.ports if cluster.cli(port, "KEYS", prefix + "*").strip()]
    assert len(holders) == 1, holders
