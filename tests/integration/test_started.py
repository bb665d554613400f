"""A task that has started is visible and acknowledged before its code runs.

- ``track_started`` (the task option, or the ``task_track_started`` setting): a
  client reads STARTED as soon as the task starts, not only once it has finished.
- Early ack (the default): the message is acknowledged in the broker before the
  task's code runs, so a started task is not run again when the whole worker is
  SIGKILLed (DESIGN.md, "Delivery": at most once from then on). ``acks_late``
  tasks still run again after such a crash (at least once).

Each test runs real ``conveyor worker`` processes on a SQLite file and on a
private Redis.
"""

from __future__ import annotations

import collections
import os
import signal
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conveyor import states
from conveyor.testing import wait_for

from ..redis_server import fresh_url, redis_server_or_skip
from .conftest import Project

pytestmark = pytest.mark.integration

STARTED_WITHIN_S = 0.05

PROJECT = """
import os, time
from conveyor import Conveyor

HERE = os.path.dirname(os.path.abspath(__file__))
app = Conveyor("proj", broker=os.environ.get("TEST_BROKER_URL") or "sqlite:///" + os.path.join(HERE, "broker.sqlite3"))
app.conf.update(
    broker_visibility_timeout=float(os.environ.get("TEST_VISIBILITY", "30")),
    task_track_started=os.environ.get("TEST_TRACK_STARTED") == "1",
)


def record(*parts):
    with open(os.path.join(HERE, "runs.log"), "a") as fh:
        fh.write(" ".join(str(p) for p in parts) + "\\n")


@app.task(name="proj.tracked", track_started=True)
def tracked(key, seconds):
    record("start", key, repr(time.time()))
    time.sleep(seconds)
    return key


@app.task(name="proj.plain")
def plain(key, seconds):
    record("start", key, repr(time.time()))
    time.sleep(seconds)
    return key


@app.task(name="proj.late", acks_late=True)
def late(key, seconds):
    record("start", key, repr(time.time()))
    time.sleep(seconds)
    return key
"""


@pytest.fixture(params=["sqlite", "redis"])
def own(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """(Project, proj module) on the broker named by the parameter."""
    if request.param == "redis":
        monkeypatch.setenv("TEST_BROKER_URL", fresh_url(redis_server_or_skip()))
    else:
        monkeypatch.delenv("TEST_BROKER_URL", raising=False)
    (tmp_path / "proj.py").write_text(textwrap.dedent(PROJECT))
    sys.modules.pop("proj", None)
    sys.path.insert(0, str(tmp_path))
    import proj  # type: ignore[import-not-found]

    proj.app.set_current()
    p = Project(tmp_path)
    try:
        yield p, proj
    finally:
        p.stop_all()
        proj.app.close()
        sys.path.remove(str(tmp_path))
        sys.modules.pop("proj", None)


def _started_at(p: Project, key: str) -> float:
    found = wait_for(
        lambda: [float(r[2]) for r in p.runs if r[0] == "start" and r[1] == key],
        timeout=20,
        message=f"task {key} did not start",
    )
    return float(found[0])


@pytest.mark.parametrize("pool", ["prefork", "solo"])
@pytest.mark.parametrize("spelling", ["task option", "setting"])
def test_client_reads_started_while_the_task_runs(own: Any, pool: str, spelling: str) -> None:
    p, proj = own
    if spelling == "setting":
        p.env["TEST_TRACK_STARTED"] = "1"
    p.start_worker("--pool", pool, "-c", "1")
    task = proj.tracked if spelling == "task option" else proj.plain
    result = task.delay("t", 0.5)
    polls: list[tuple[float, str]] = []  # (when the read was issued, what it returned)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        issued = time.time()
        state = result.state
        polls.append((issued, state))
        if state == states.SUCCESS:
            break
        time.sleep(0.002)
    assert polls[-1][1] == states.SUCCESS, f"task did not finish: {polls[-1]}"
    started = _started_at(p, "t")
    # Measured from the task's own start: a read issued 50 ms after it began must
    # see STARTED, however late the client (on a loaded machine) got to issue it.
    stale = [issued - started for issued, state in polls if state == states.PENDING]
    late = [delay for delay in stale if delay > STARTED_WITHIN_S]
    assert not late, (
        f"read PENDING {max(late):.3f}s after the task started (seen: {sorted({s for _, s in polls})})"
    )
    assert any(state == states.STARTED for _, state in polls), "STARTED never seen"
    assert sum(1 for r in p.runs if r[0] == "start") == 1


def _gone(proj: Any) -> bool:
    """The message is no longer in the broker: neither waiting nor leased."""
    return not [s for s in proj.app.broker.queue_stats() if s.ready or s.in_flight or s.delayed]


@pytest.mark.parametrize("pool", ["prefork", "solo", "threads"])
def test_started_early_ack_task_is_not_run_again_after_sigkill(own: Any, pool: str) -> None:
    p, proj = own
    worker = p.start_worker("--pool", pool, "-c", "1", visibility=1.0)
    result = proj.plain.delay("once", 5.0)
    _started_at(p, "once")
    os.killpg(worker.pid, signal.SIGKILL)  # the whole worker: supervisor and children
    worker.wait(5)
    p.start_worker("--pool", pool, "-c", "1", visibility=1.0)
    # Acked before it started, the message is gone for good; unacked, its lease
    # runs out (1 s) and the new worker takes it and runs it a second time.
    wait_for(
        lambda: _gone(proj) or p.count("start") > 1,
        timeout=30,
        message="the message neither left the broker nor ran again",
    )
    assert p.count("start") == 1, f"an early-ack task ran {p.count('start')} times"
    # The new worker is running (and would have taken the message back by now).
    assert proj.plain.delay("after", 0).get(timeout=20) == "after"
    assert [r[1] for r in p.runs if r[0] == "start"] == ["once", "after"]
    assert result.state in (states.PENDING, states.STARTED)


@pytest.mark.parametrize("own", ["sqlite"], indirect=True)  # Redis: test_redis_faults.py
def test_started_acks_late_task_runs_again_after_sigkill(own: Any) -> None:
    p, proj = own
    worker = p.start_worker("-c", "1", visibility=1.0)
    result = proj.late.delay("again", 0.5)
    _started_at(p, "again")
    os.killpg(worker.pid, signal.SIGKILL)
    worker.wait(5)
    p.start_worker("-c", "1", visibility=1.0)
    assert result.get(timeout=30) == "again"
    assert p.count("start") == 2  # at least once: its lease ran out and it ran again


@pytest.mark.parametrize("own", ["sqlite"], indirect=True)  # broker-neutral: the consumer's logic
def test_messages_taken_behind_a_long_task_run_once_elsewhere(own: Any) -> None:
    p, proj = own
    p.env["CONVEYOR_WORKER_EARLY_ACK_AHEAD"] = "32"  # taking ahead is opt-in
    first = proj.plain.delay("long", 2.0)
    quick = [proj.plain.delay(f"q{i}", 0.0) for i in range(3)]
    # One process fetches all four (a full fetch: a backlog) and acks the quick ones
    # ahead with the long one; given back behind it, they must run, once, elsewhere.
    p.start_worker("--pool", "solo", "--prefetch-multiplier", "4")
    p.start_worker("--pool", "solo")
    assert sorted(r.get(timeout=10) for r in quick) == ["q0", "q1", "q2"]
    assert first.get(timeout=10) == "long"
    runs = [r[1] for r in p.runs if r[0] == "start"]
    assert sorted(runs) == ["long", "q0", "q1", "q2"], runs


@pytest.mark.parametrize("own", ["sqlite"], indirect=True)
def test_by_default_a_sigkilled_worker_loses_no_unstarted_early_ack_message(own: Any) -> None:
    """A backlog of early-ack tasks, the worker SIGKILLed mid-drain: every task that had
    not started runs after the lease; none of those that started runs twice."""
    p, proj = own
    results = proj.plain.map([(f"t{i}", 0.01) for i in range(300)])
    victim = p.start_worker("-c", "2", "--prefetch-multiplier", "8", visibility=1.0)
    wait_for(lambda: p.count("start") >= 40, timeout=30, interval=0.005)
    os.killpg(victim.pid, signal.SIGKILL)
    victim.wait(10)
    survivor = p.start_worker("-c", "2", visibility=1.0)
    wait_for(
        lambda: not [s for s in proj.app.broker.queue_stats() if s.ready or s.in_flight or s.delayed],
        timeout=60,
        message="messages left in the broker",
    )
    # An early-acked message leaves the queue before its task runs: an empty queue
    # does not mean the last tasks have finished. A warm shutdown finishes them and
    # writes their results.
    survivor.send_signal(signal.SIGTERM)
    assert survivor.wait(30) == 0
    runs = collections.Counter(r[1] for r in p.runs if r[0] == "start")
    assert max(runs.values()) == 1, "an early-ack task ran twice"
    assert len(runs) == 300, f"{300 - len(runs)} unstarted task(s) lost"
    done = sum(1 for r in results if r.state == "SUCCESS")
    assert done >= 300 - 2, done  # at most once: the 2 running when it died may never finish
