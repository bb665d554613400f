"""Celery's worker settings on a real prefork worker: memory recycling and what acks_late does
with a task that failed, timed out or lost its process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conveyor.testing import wait_for

pytestmark = pytest.mark.integration

PROJECT = """
import json, os, signal, time
from conveyor import Conveyor

HERE = os.path.dirname(os.path.abspath(__file__))
app = Conveyor("setproj", broker="sqlite:///" + os.path.join(HERE, "b.sqlite3"))
app.conf.update(**json.loads(os.environ.get("SETPROJ_CONF", "{}")))
HELD = []


def record(*parts):
    with open(os.path.join(HERE, "runs.log"), "a") as fh:
        fh.write(" ".join(str(p) for p in parts) + "\\n")


@app.task(name="setproj.pid")
def pid():
    return os.getpid()


@app.task(name="setproj.hog")
def hog(mib):
    HELD.append(b"x" * (mib << 20))  # resident: every page written
    return os.getpid()


@app.task(name="setproj.crash_kept", acks_late=True, reject_on_worker_lost=True)
def crash_kept(key):
    return crash(key)


@app.task(name="setproj.crash", acks_late=True)
def crash(key):
    record("crash", key)
    marker = os.path.join(HERE, key)
    if not os.path.exists(marker):
        open(marker, "w").close()
        os.kill(os.getpid(), signal.SIGKILL)
    return "survived"


@app.task(name="setproj.fail", acks_late=True)
def fail(key):
    record("fail", key)
    raise ValueError("boom")


@app.task(name="setproj.stuck", acks_late=True, time_limit=0.5)
def stuck(key):
    record("stuck", key)
    time.sleep(30)
"""


class _Worker:
    def __init__(self, root: Path, conf: dict[str, Any], *args: str) -> None:
        self.root = root
        env = {**os.environ, "PYTHONPATH": str(root), "SETPROJ_CONF": json.dumps(conf)}
        env.pop("CONVEYOR_BROKER_URL", None)
        with open(root / "worker.log", "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "conveyor.cli.main", "-A", "setproj", "worker", "-c", "1",
                 "--prefetch-multiplier", "1", *args],
                cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        wait_for(lambda: b"ready." in self.log().encode() or self.proc.poll() is not None, timeout=20)
        assert self.proc.poll() is None, self.log()

    def log(self) -> str:
        return (self.root / "worker.log").read_text(errors="replace")

    def runs(self, kind: str) -> int:
        path = self.root / "runs.log"
        return sum(1 for ln in path.read_text().splitlines() if ln.startswith(kind)) if path.exists() else 0

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)


@pytest.fixture
def setproj(tmp_path: Path) -> Iterator[Any]:
    (tmp_path / "setproj.py").write_text(textwrap.dedent(PROJECT))
    sys.path.insert(0, str(tmp_path))
    sys.modules.pop("setproj", None)
    import setproj  # type: ignore[import-not-found]

    workers: list[_Worker] = []
    setproj.start = lambda conf, *args: workers.append(_Worker(tmp_path, conf, *args)) or workers[-1]
    try:
        yield setproj
    finally:
        for worker in workers:
            print(worker.log()[-5000:])  # shown by pytest only when the test fails
            worker.stop()
        setproj.app.close()
        sys.path.remove(str(tmp_path))
        sys.modules.pop("setproj", None)


@pytest.mark.parametrize("given", ["setting", "option"])
def test_a_child_over_max_memory_per_child_is_replaced_after_its_task(setproj: Any, given: str) -> None:
    if given == "setting":
        worker = setproj.start({"worker_max_memory_per_child": 150_000})  # KiB
    else:
        worker = setproj.start({}, "--max-memory-per-child", "150000")
    first = setproj.pid.delay().get(timeout=20)
    assert setproj.pid.delay().get(timeout=20) == first  # under the limit: kept
    hog = setproj.hog.delay(200)
    assert hog.get(timeout=30) == first
    after = setproj.pid.delay().get(timeout=20)
    assert after != first, worker.log()
    assert setproj.pid.delay().get(timeout=20) == after  # the new child is under it again
    assert worker.log().count("over worker_max_memory_per_child") == 1
    assert "exited with code" not in worker.log()


@pytest.mark.parametrize("reject", [True, False])
def test_reject_on_worker_lost_chooses_requeue_or_failure(setproj: Any, reject: bool) -> None:
    worker = setproj.start({"task_reject_on_worker_lost": reject})
    result = setproj.crash.delay("k")
    if reject:  # back to the queue: runs again, in the replacement child
        assert result.get(timeout=30) == "survived"
        assert worker.runs("crash") == 2
    else:  # Celery's default: FAILURE WorkerLostError, acked, never run again
        wait_for(lambda: result.state == "FAILURE", timeout=30)
        assert type(result.result).__name__ == "WorkerLostError"
        assert setproj.pid.delay().get(timeout=20)  # the worker moved on
        assert worker.runs("crash") == 1
        assert setproj.app.broker.dead_letters() == []
        assert all((q.ready, q.in_flight, q.delayed) == (0, 0, 0) for q in setproj.app.broker.queue_stats())
        # The task's own option (Celery's spelling) wins over the setting.
        assert setproj.crash_kept.delay("kept").get(timeout=30) == "survived"
        assert worker.runs("crash kept") == 2


@pytest.mark.parametrize("ack", [True, False])
def test_acks_on_failure_or_timeout_acks_or_dead_letters(setproj: Any, ack: bool) -> None:
    worker = setproj.start({"task_acks_on_failure_or_timeout": ack})
    failed, stuck = setproj.fail.delay("f"), setproj.stuck.delay("s")
    for result in (failed, stuck):
        wait_for(lambda r=result: r.state == "FAILURE", timeout=30)  # stored either way
    assert setproj.pid.delay().get(timeout=20)  # nothing of theirs is queued ahead of this
    assert (worker.runs("fail"), worker.runs("stuck")) == (1, 1)
    dead = sorted(d.task_id for d in setproj.app.broker.dead_letters())
    assert dead == ([] if ack else sorted([failed.id, stuck.id]))
