"""The short variant of bench/chaos.py: acks_late tasks and raw garbage on one queue while
real prefork workers are SIGKILLed with their process groups and restarted, and on
Redis the server itself is SIGKILLed and started again (append-only file, fsync
always). Nothing may be lost, every garbage body must reach the dead-letter queue, and
duplicates are bounded by what the killed workers held.
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path
from types import ModuleType

import pytest

from ..redis_server import REDIS_SERVER, redis_server_or_skip

pytestmark = pytest.mark.integration

BENCH = Path(__file__).resolve().parents[2] / "bench"


def _bench() -> ModuleType:
    """bench/chaos.py, which is a script, not a package module."""
    loaded = sys.modules.get("conveyor_bench_chaos")
    if loaded is not None:
        return loaded
    spec = importlib.util.spec_from_file_location("conveyor_bench_chaos", BENCH / "chaos.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    path = list(sys.path)
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path[:] = path  # the script puts bench/ first; no other test should import from it
    return module


@pytest.mark.parametrize("kind", ["sqlite", "redis"])
def test_chaos_loses_nothing_and_dead_letters_all_garbage(kind: str, tmp_path: Path) -> None:
    if kind == "redis" and shutil.which(REDIS_SERVER) is None:
        redis_server_or_skip()  # skips, or fails under CI=true
    chaos = _bench()
    options = chaos.ChaosOptions(
        tasks=300,
        garbage=50,
        kill_every_s=0.5,
        max_kills=3,
        # 300 x 50 ms on 4 processes: at least 3.75 s of work, so the kills land mid-run.
        task_s=0.05,
        # Long enough that a busy machine's lease renewals are never late (a late one
        # would rerun a task that was never lost); the killed workers' leases add it once.
        visibility_s=5.0,
        redis_restarts=1,
        redis_down_s=0.5,
        timeout_s=90.0,  # generous under load; a normal run takes about 10 s
    )
    report = chaos.run_chaos(kind, tmp_path, options)
    print(chaos.chaos_table([report], options))

    assert not report.timed_out, "tasks were still unfinished or messages unsettled after 90 s"
    assert (report.kills, report.unexpected_exits) == (3, 0)
    assert report.redis_restarts == (1 if kind == "redis" else 0)
    assert report.lost == 0, f"{report.lost} tasks never ran or have no SUCCESS result"
    assert report.dead_garbage == report.dead_total == 50, report.dead_by_kind
    assert set(report.dead_by_kind.values()) == {50 // 3, 50 // 3 + 1}  # every kind of garbage
    # A task runs again only when it had finished but its ack had not landed: a killed
    # worker's processes settle every few milliseconds, far below the bound of what
    # they may hold (2 processes x prefetch 4), and a Redis restart, both workers'.
    assert report.ran_twice <= report.bound == 8 * (3 + 2 * report.redis_restarts)
    assert report.max_runs <= 1 + 3 + report.redis_restarts
