"""The SQLite WAL stays bounded while a worker drains a backlog (docs/brokers.md).

Readers and writers never pause during a drain, so a checkpoint that only copies
what it can without waiting never lets the WAL start over: it grew to gigabytes.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from conveyor.testing import wait_for

pytestmark = pytest.mark.integration

LIMIT_MIB = 2
BOUND_MIB = 16  # the limit, plus what writers append while a checkpoint gets its turn


@pytest.fixture
def wal_limited(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    db = tmp_path / "broker.sqlite3"
    monkeypatch.setenv("TEST_BROKER_URL", f"sqlite:///{db}?wal_limit_mib={LIMIT_MIB}")
    return db


def test_wal_stays_under_the_limit_while_a_worker_drains(wal_limited: Path, project: Any) -> None:
    p, proj = project
    n = 10_000
    for first in range(0, n, 2_000):
        proj.add.map([(i, i) for i in range(first, first + 2_000)])
    wal = f"{wal_limited}-wal"
    peak = 0

    def drained() -> bool:
        nonlocal peak
        peak = max(peak, os.path.getsize(wal) if os.path.exists(wal) else 0)
        stats = proj.app.broker.queue_stats(["default"])[0]
        return stats.ready == 0 and stats.in_flight == 0

    p.start_worker("-c", "2")
    wait_for(drained, timeout=180, interval=0.02, message="the worker did not drain the queue")
    assert peak <= BOUND_MIB * 1024 * 1024, f"WAL peaked at {peak / 2**20:.1f} MiB"
    assert proj.add.delay(1, 2).get(timeout=30) == 3
