"""Prefork children do not outlive their supervisor where no parent-death signal
exists (musl, macOS: no ``prctl(PR_SET_PDEATHSIG)``): they notice the supervisor is
gone, give back the messages they prefetched, and exit. Nothing is lost."""

from __future__ import annotations

import collections
import os
import signal
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conveyor import states
from conveyor.testing import wait_for

from .conftest import PROJECT, Project

pytestmark = pytest.mark.integration

# The project's module runs in the worker before it forks its children.
NO_PDEATHSIG = """
from conveyor.worker import prefork
prefork.USE_PDEATHSIG = False  # as where libc's prctl cannot be loaded
"""


@pytest.fixture
def orphanable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    monkeypatch.delenv("TEST_BROKER_URL", raising=False)
    (tmp_path / "proj.py").write_text(textwrap.dedent(PROJECT) + NO_PDEATHSIG)
    sys.modules.pop("proj", None)
    sys.path.insert(0, str(tmp_path))
    import proj  # type: ignore[import-not-found]

    proj.app.set_current()
    p = Project(tmp_path)
    children: list[int] = []
    try:
        yield p, proj, children
    finally:
        p.stop_all()
        for pid in children:  # a failed test must not leave orphans running
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        proj.app.close()
        sys.path.remove(str(tmp_path))
        sys.modules.pop("proj", None)


def _children_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    """Running, and not a zombie waiting for whoever adopted it to reap it."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_children_exit_when_the_supervisor_is_sigkilled(orphanable: Any) -> None:
    p, proj, children = orphanable
    # acks_late, and shorter than the stall guard's wait: each child holds prefetched ones.
    results = proj.mark.map([(n, 0.05) for n in range(40)])
    victim = p.start_worker("-c", "2", "--prefetch-multiplier", "4", visibility=2.0)
    wait_for(lambda: p.count("mark") >= 4, timeout=30, interval=0.005)
    children.extend(_children_of(victim.pid))
    assert len(children) == 2, children
    os.kill(victim.pid, signal.SIGKILL)  # only the supervisor
    victim.wait(5)
    wait_for(
        lambda: not [pid for pid in children if _alive(pid)],
        timeout=2.5,
        interval=0.05,
        message=f"children still running without their supervisor: {[c for c in children if _alive(c)]}",
    )
    ran_before = p.count("mark")
    assert p.log(0).count("Supervisor (pid") == 2, p.log(0)
    p.start_worker("-c", "2", visibility=2.0)
    ids = [r.id for r in results]

    def all_done() -> bool:
        records = proj.app.backend.get_many(ids)
        return len(records) == len(ids) and all(r.state == states.SUCCESS for r in records.values())

    wait_for(all_done, timeout=60, interval=0.1, message="tasks lost after the supervisor died")
    runs = collections.Counter(int(r[1]) for r in p.runs if r[0] == "mark")
    assert set(runs) == set(range(40)), "a task was lost"
    assert max(runs.values()) <= 2
    assert ran_before < 40
    assert not [s for s in proj.app.broker.queue_stats() if s.ready or s.in_flight], "messages left behind"
