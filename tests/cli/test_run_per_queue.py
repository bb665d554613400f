"""``conveyor run -Q a,b,c --worker-per-queue``: one worker process per queue, one command."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conveyor.testing import wait_for
from tests.cli.conftest import Project

QUEUES = ("default", "slow", "fast")


def _children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as fh:
        return [int(p) for p in fh.read().split()]


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(") ", 1)[1].startswith("Z")  # a zombie has exited
    except FileNotFoundError:
        return True


@pytest.fixture
def run(project: Project) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    log_path = project.root / "run.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            project.command(
                "-A", "proj", "run", "--no-dashboard", "-Q", ",".join(QUEUES),
                "--worker-per-queue", "-P", "threads", "-c", "1",
            ),
            cwd=project.root,
            # A stop that hangs dumps every thread of every process (SIGABRT below).
            env={**project.env, "PYTHONFAULTHANDLER": "1"},
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    try:
        wait_for(
            lambda: log_path.read_bytes().count(b"ready.") >= 3 or proc.poll() is not None,
            timeout=30,
            message="three workers did not start",
        )
        assert proc.poll() is None, log_path.read_text()
        yield proc, log_path
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


def test_each_queue_has_a_worker_of_its_own(
    project: Project, run: tuple[subprocess.Popen[bytes], Path]
) -> None:
    proc, log_path = run
    app = project.app()
    sent = {q: [app.send_task("proj.add", args=[i, 1], queue=q) for i in range(3)] for q in QUEUES}
    workers = {}
    for queue, results in sent.items():
        assert [r.get(timeout=20) for r in results] == [1, 2, 3]
        workers[queue] = {r.worker for r in results}
    # Each queue's tasks ran on one worker, a different one per queue.
    assert all(len(names) == 1 for names in workers.values()), workers
    assert len({next(iter(names)) for names in workers.values()}) == 3, workers
    assert len(_children(proc.pid)) == 2  # the main process is the first queue's worker


@pytest.mark.parametrize("how", ["sigterm-to-run", "ctrl-c-to-all"])
def test_stopping_run_stops_every_queue_worker_warmly(
    run: tuple[subprocess.Popen[bytes], Path], how: str
) -> None:
    proc, log_path = run
    children = _children(proc.pid)
    if how == "sigterm-to-run":
        proc.send_signal(signal.SIGTERM)
    else:  # the terminal sends SIGINT to the whole process group
        os.killpg(proc.pid, signal.SIGINT)
    try:
        code = proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGABRT)
        time.sleep(1)
        raise AssertionError(f"run did not stop: {_children(proc.pid)}\n{log_path.read_text()}") from None
    assert code == 0, log_path.read_text()
    for pid in children:
        wait_for(lambda pid=pid: _gone(pid), timeout=10, message=f"worker {pid} lives on")
    text = log_path.read_text()
    assert text.count(" stopped: ") == 3, text
    assert ": cold shutdown" not in text, text


def test_queue_workers_stop_when_run_is_killed(run: tuple[subprocess.Popen[bytes], Path]) -> None:
    proc, log_path = run
    children = _children(proc.pid)
    proc.kill()
    proc.wait(5)
    for pid in children:
        wait_for(lambda pid=pid: _gone(pid), timeout=20, message=f"worker {pid} outlived run")
